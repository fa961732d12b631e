"""The `segcentroids` command: LightningCLI with fit / validate / test / predict, plus `check-data`,
`convert-coco-lvis` and `export`.

A training run owns one folder, `trainer.default_root_dir` (default `runs/default`), whatever the logger; each
command writes its own record in it and never over another's (the layout: `segcentroids.runs`).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

from segcentroids.callbacks import SaveOnException, SegPredictionWriter, ValidationImageLogger
from segcentroids.config_errors import load_class, summarize
from segcentroids.data import SegDataModule
from segcentroids.export import EXPORT_HELP
from segcentroids.methods import Baseline
from segcentroids.models.pretrained import WeightsUnavailableError, causes, encoder_normalization
from segcentroids.runs import (
    CHECKPOINTS,
    EVAL_COMMANDS,
    RunFolderError,
    check_fresh_run,
    read_checkpoint,
    record_name,
    resolve_checkpoint,
)

DEFAULT_RUN_DIR = "runs/default"
DESCRIPTION = ("Train, evaluate and compare the segmentation methods (segcentroids <command> --help); each run's "
               "records live in its trainer.default_root_dir")
CHECK_DATA_HELP = "Check a dataset's files and labels before training (segcentroids check-data --help)."
CONVERT_COCO_LVIS_HELP = ("Build the COCO+LVIS labels (1284 classes) from COCO 2017 and LVIS v1 "
                          "(segcentroids convert-coco-lvis --help).")
LOGGER_NAME_DEFAULTS = {"name": ("lightning_logs", "default"), "version": (None,)}


def follow_encoder_normalization(config) -> None:
    """Set the DataModule's ``mean`` / ``std`` left at None to the normalisation of the model's encoder."""
    data_args = config.get("data.init_args")
    encoder_name = config.get("model.init_args.segmodel.init_args.encoder_name")
    if data_args is None or encoder_name is None or "mean" not in data_args:
        return
    mean, std = encoder_normalization(encoder_name)
    if data_args.mean is None:
        data_args.mean = mean
    if data_args.std is None:
        data_args.std = std


def with_logger_folders(args: list[str]) -> list[str]:
    """`--trainer.logger <Class>` without a save_dir gets an empty one, which `place_loggers` fills with the
    record folder (Lightning's file loggers require the argument)."""
    if any(a.startswith(("--trainer.logger.save_dir", "--trainer.logger.init_args.save_dir")) for a in args):
        return list(args)
    result, index = [], 0
    while index < len(args):
        arg = args[index]
        if arg == "--trainer.logger" and index + 1 < len(args):
            arg, index = f"{arg}={args[index + 1]}", index + 1
        result.append(arg)
        index += 1
        value = arg.split("=", 1)[1] if arg.startswith("--trainer.logger=") else ""
        cls = load_class(value) if "." in value else None
        if cls is not None and "save_dir" in inspect.signature(cls).parameters:
            result.append("--trainer.logger.save_dir=")
    return result


def place_loggers(loggers: Any, record: Path, run: Path, resume: str | None = None) -> None:
    """Point loggers left at their default folders into the record folder, MLflow to `<run>/mlflow.db`.

    A resumed fit's CSV log goes to its `resumes/<name>/` record: Lightning's CSV writer deletes a `metrics.csv`
    it finds in its folder, which would lose the curve logged before the resume.
    """
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        if init_args is None:
            continue
        class_name = str(logger.get("class_path", "")).rpartition(".")[2]
        if class_name == "MLFlowLogger":  # MLflow 3 keeps local runs in a database file; the run folder holds it
            if init_args.get("tracking_uri") is None and init_args.get("save_dir") in (None, "", "./mlruns"):
                init_args["tracking_uri"] = f"sqlite:///{run.resolve() / 'mlflow.db'}"
                if init_args.get("artifact_location") is None:
                    init_args["artifact_location"] = str(run.resolve() / "mlartifacts")
            continue
        if "save_dir" in init_args and init_args["save_dir"] in (None, ""):
            init_args["save_dir"] = str(record)
        if class_name not in ("TensorBoardLogger", "CSVLogger"):
            continue
        for key, defaults in LOGGER_NAME_DEFAULTS.items():
            if key in init_args and init_args[key] in defaults:
                init_args[key] = ""
        if class_name == "CSVLogger" and resume is not None and init_args.get("version") == "":
            init_args["version"] = f"resumes/{resume}"
        if init_args.get("default_hp_metric") is True:
            init_args["default_hp_metric"] = False


class SegArgumentParser(LightningArgumentParser):
    """No abbreviated options; an error is one line naming the key, its file and the closest valid key."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        options = [s.lstrip("-") for s in parser._option_string_actions]
        raw_args = getattr(self, "raw_args", sys.argv[1:])
        print(f"segcentroids: error: {summarize(message, raw_args, options)}", file=sys.stderr)
        print(f"  ({parser.prog.replace(' [options]', '')} --help lists the options)", file=sys.stderr)
        raise SystemExit(2)


class RecordConfig(SaveConfigCallback):
    """Writes the command's configuration to `<trainer.default_root_dir>/<config_filename>`, never over a file."""

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / self.config_filename
            if path.exists():
                raise RunFolderError(f"{path} exists: a run's record is never written over")
            path.parent.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(path), skip_none=False, overwrite=False, multifile=self.multifile)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


class SegCLI(LightningCLI):
    """LightningCLI with the DataModule's class facts linked into the model and one run folder per run."""

    def __init__(self, *args, args_list: list[str] | None = None, **kwargs) -> None:
        self._raw_args = with_logger_folders(list(args_list) if args_list is not None else sys.argv[1:])
        self._checkpoint: Path | None = None
        self._checkpoint_data: dict | None = None
        self._record: Path | None = None
        self._requested_checkpoint: str | None = None
        super().__init__(*args, args=args_list, parser_class=SegArgumentParser, save_config_callback=RecordConfig,
                         **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        parser.raw_args = self._raw_args  # for the error line: which file a key came from
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self.config = parser.parse_args(self._raw_args)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")
        parser.link_arguments("data.ignore_index", "model.init_args.ignore_index", apply_on="instantiate")
        # OCR's soft object regions are one per class
        parser.link_arguments("data.num_classes", "model.init_args.segmodel.init_args.num_classes",
                              apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/mIoU",
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-epoch{epoch:03d}-step{step:06d}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(ValidationImageLogger, "image_logger")
        parser.add_lightning_class_args(SegPredictionWriter, "prediction_writer")

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        # `check-data`, `convert-coco-lvis` and `export` are dispatched by `main` before the parser; listed so
        # `--help` shows them
        for name, text in (("check-data", CHECK_DATA_HELP), ("convert-coco-lvis", CONVERT_COCO_LVIS_HELP),
                           ("export", EXPORT_HELP)):
            parser._subcommands_action.add_subcommand(name, self.parser_class(description=text), help=text)

    # ------------------------------------------------------------------------------------------- the run folder
    def _run_folder(self, config) -> Path:
        """`trainer.default_root_dir`; unset, the run that holds the checkpoint given, else `runs/default`."""
        if config.trainer.default_root_dir is not None:
            return Path(config.trainer.default_root_dir)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and Path(ckpt_path).parent.name == CHECKPOINTS:
            return Path(ckpt_path).parent.parent
        return Path(DEFAULT_RUN_DIR)

    def _parse_ckpt_path(self) -> None:
        """Resolve `--ckpt_path` (last, best, untrained, a file), check the file, then take its hyper-parameters
        as defaults under the config files and command line given now.

        Lightning merges the checkpoint's hyper-parameters over the parsed command line, which would silently undo
        test-time settings such as `--model.init_args.inference.mode=slide`; the command line is parsed again on
        top for the model only, so that list appends (`--trainer.callbacks+=...`) are not applied twice.
        """
        command = self.config.get("subcommand")
        if not command:
            return
        config = self.config[command]
        run = self._run_folder(config)
        config.trainer.default_root_dir = str(run)
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(run / CHECKPOINTS)
        self._requested_checkpoint = config.get("ckpt_path")
        try:
            checkpoint = resolve_checkpoint(command, self._requested_checkpoint, Path(config.checkpoint.dirpath))
            self._checkpoint_data = read_checkpoint(checkpoint) if checkpoint is not None else None
        except RunFolderError as error:
            self._exit(error)
        self._checkpoint = checkpoint
        config.ckpt_path = None if checkpoint is None else str(checkpoint)
        if checkpoint is None:
            return
        self._check_method(checkpoint, config.model.class_path)
        self._merge_checkpoint_hyperparameters(command)

    def _merge_checkpoint_hyperparameters(self, command: str) -> None:
        """Lightning's merge of the checkpoint's model hyper-parameters, then the command line again on top; only
        the model section is taken from the result."""
        before = self.config.clone()
        super()._parse_ckpt_path()
        reparsed = self.parser.parse_args(self._raw_args, namespace=self.config)
        before[command].model = reparsed[command].model
        self.config = before

    def _check_method(self, checkpoint: Path, class_path: str) -> None:
        written = (self._checkpoint_data.get("hyper_parameters") or {}).get("_class_path")
        if written and load_class(written) is not load_class(class_path):
            self._exit(RunFolderError(f"checkpoint {checkpoint} was written by {written}, but the config builds "
                                      f"{class_path} (use the run's config.yaml, or --model {written})"))

    @staticmethod
    def _exit(error: Exception) -> NoReturn:
        print(f"segcentroids: error: {error}", file=sys.stderr)
        raise SystemExit(1)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        follow_encoder_normalization(config)
        if not self.subcommand:
            return
        run = Path(config.trainer.default_root_dir)
        # a restart: from a checkpoint, from SLURM's hpc checkpoint, or `last` asked again before there was one
        resumed = (self._checkpoint is not None or any(run.glob("hpc_ckpt_*.ckpt"))
                   or (self._requested_checkpoint == "last" and (run / "config.yaml").exists()))
        resume = None
        if self.subcommand in EVAL_COMMANDS:
            self._record = run / "eval" / record_name(self.subcommand, self._checkpoint, run / "eval")
            self.save_config_kwargs["config_filename"] = "config.yaml"
        elif resumed:
            self._record = run
            resume = record_name("fit", self._checkpoint or Path("hpc"), run / "resumes")
            self.save_config_kwargs["config_filename"] = f"resumes/{resume}/config.yaml"
        else:
            try:
                check_fresh_run(run)
            except RunFolderError as error:
                self._exit(error)
            self._record = run
        if config.trainer.logger not in (None, True, False):
            place_loggers(config.trainer.logger, self._record, run, resume)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if self._checkpoint_data is None:
            return
        trained = (self._checkpoint_data.get("hyper_parameters") or {}).get("num_classes")
        data_classes = getattr(self.datamodule, "num_classes", None)
        if trained is not None and data_classes is not None and trained != data_classes:
            self._exit(RunFolderError(f"checkpoint {self._checkpoint} was trained for {trained} classes, but the data "
                                      f"({type(self.datamodule).__name__}) has {data_classes}"))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        if self._record is None:  # no subcommand: a Trainer for the caller, as LightningCLI builds it
            return super().instantiate_trainer(**kwargs)
        kwargs["default_root_dir"] = str(self._record)
        if self._get(self.config_init, "trainer").get("logger") in (None, True):
            kwargs["logger"] = TensorBoardLogger(self._record, name="", version="", default_hp_metric=False)
        trainer = super().instantiate_trainer(**kwargs)
        # metrics the data asks for (VSPW: video consistency), unless the config lists them already
        for callback in getattr(self.datamodule, "evaluation_callbacks", list)():
            if not any(type(other) is type(callback) for other in trainer.callbacks):
                trainer.callbacks.append(callback)
        if self.subcommand == "fit":
            trainer.callbacks.append(SaveOnException(Path(self.config.fit.checkpoint.dirpath)))
            if trainer.loggers and not any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks):
                trainer.callbacks.append(LearningRateMonitor(logging_interval="step"))
        return trainer


def main(args: list[str] | None = None) -> None:
    """Entry point of the `segcentroids` console script (`args` defaults to `sys.argv[1:]`)."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "check-data":
        from segcentroids.data.check import main as check_main

        raise SystemExit(check_main(argv[1:]))
    if argv and argv[0] == "convert-coco-lvis":
        from segcentroids.data.convert_coco_lvis import main as convert_main

        raise SystemExit(convert_main(argv[1:]))
    if argv and argv[0] == "export":
        from segcentroids.export import main as export_main

        raise SystemExit(export_main(argv[1:]))
    torch.set_float32_matmul_precision("high")
    try:
        SegCLI(
            Baseline,
            SegDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": False},
            parser_kwargs={"description": DESCRIPTION},
            args_list=args,
        )
    except Exception as error:  # weights that cannot be had: their one line, not the parser's dump of the model
        unavailable = next((c for c in causes(error) if isinstance(c, WeightsUnavailableError)), None)
        if unavailable is None:
            raise
        print(f"segcentroids: error: {unavailable}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
