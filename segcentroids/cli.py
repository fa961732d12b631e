"""The `segcentroids` command: LightningCLI with fit / validate / test / predict, plus `check-data`.

Every run writes to one stable folder, `trainer.default_root_dir` (default `runs/default`): TensorBoard events,
`config.yaml`, `checkpoints/{last,best-*}.ckpt` and `metrics/<split>.json`, so a restarted job writes to the same
place and `--ckpt_path last` resumes it.
"""

from __future__ import annotations

import sys

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from segcentroids.callbacks import SegPredictionWriter, ValidationImageLogger
from segcentroids.data import SegDataModule
from segcentroids.methods import Baseline
from segcentroids.models.pretrained import WeightsUnavailableError, causes, encoder_normalization

DEFAULT_RUN_DIR = "runs/default"


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


class SegCLI(LightningCLI):
    """LightningCLI with the DataModule's class facts linked into the model and a stable run folder."""

    def __init__(self, *args, args_list: list[str] | None = None, **kwargs) -> None:
        self._raw_args = list(args_list) if args_list is not None else sys.argv[1:]
        super().__init__(*args, args=args_list, **kwargs)

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

    def _parse_ckpt_path(self) -> None:
        """Checkpoint hyper-parameters as defaults; the config files and command line given now win.

        Lightning merges the checkpoint's hyper-parameters over the parsed command line, which would silently undo
        test-time settings such as `--model.init_args.inference.mode=slide` when testing a checkpoint. We let it
        merge, then parse the command line again on top of the result.
        """
        super()._parse_ckpt_path()
        subcommand = self.config.get("subcommand")
        if subcommand and self.config[subcommand].get("ckpt_path"):
            self.config = self.parser.parse_args(self._raw_args, namespace=self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        follow_encoder_normalization(config)
        trainer = config.trainer
        if trainer.default_root_dir is None:
            trainer.default_root_dir = DEFAULT_RUN_DIR
        if trainer.logger is None or trainer.logger is True:
            trainer.logger = {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": trainer.default_root_dir, "name": "", "version": ""},
            }


def main(args: list[str] | None = None) -> None:
    """Entry point of the `segcentroids` console script (`args` defaults to `sys.argv[1:]`)."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "check-data":
        from segcentroids.data.check import main as check_main

        raise SystemExit(check_main(argv[1:]))
    torch.set_float32_matmul_precision("high")
    try:
        SegCLI(
            Baseline,
            SegDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
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
