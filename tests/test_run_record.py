"""A run never loses its record: each case as the user types the command, and what they must see after it."""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from segcentroids.cli import main
from tests.conftest import CONFIGS, tiny_overrides
from tests.test_data import camvid_tree

SCRIPT = str(Path(sys.executable).parent / "segcentroids")
QUICKSTART = str(CONFIGS / "quickstart.yaml")
RECORDER = "--trainer.callbacks+=segcentroids.callbacks.RunRecorder"


def fit(run: Path, *extra: str) -> None:
    main(["fit", "--config", QUICKSTART, *tiny_overrides(run, "--trainer.max_epochs=1"), *extra])


def script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=300)


def digest(folder: Path) -> dict[str, str]:
    """Every file of a folder (outside eval/ and resumes/) with its content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).parts[0] not in ("eval", "resumes")}


def only_record(run: Path, command: str) -> Path:
    records = sorted((run / "eval").glob(f"{command}-*"))
    assert len(records) == 1, records
    return records[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained")
    fit(run, "--trainer.max_epochs=2")
    return run


# ------------------------------------------------------------------------------------------- evaluation records
def test_evaluation_without_checkpoint_is_refused(trained: Path) -> None:
    before = digest(trained)
    result = script("validate", "--config", str(trained / "config.yaml"))
    first = result.stderr.strip().splitlines()[0]
    assert result.returncode == 1
    assert first.startswith("segcentroids: error: validate without --ckpt_path") and "last.ckpt" in first
    assert digest(trained) == before and not (trained / "eval").exists()


@pytest.mark.parametrize("which", ["last", "best"])
def test_test_writes_its_own_record(trained: Path, which: str) -> None:
    before = digest(trained)
    main(["test", "--config", str(trained / "config.yaml"), f"--ckpt_path={which}", RECORDER])
    record = sorted((trained / "eval").glob(f"test-{which}*"))[-1]
    scored = json.loads((record / "metrics" / "test.json").read_text())
    checkpoint = Path(scored["checkpoint"])
    expected = torch.load(checkpoint, map_location="cpu", weights_only=True)  # the oracle: the file itself
    assert checkpoint.parent == (trained / "checkpoints").resolve() and checkpoint.name.startswith(which)
    assert (scored["epoch"], scored["step"]) == (expected["epoch"], expected["global_step"]) and scored["step"] > 0
    assert (record / "metrics" / "test_all.json").is_file() and list(record.glob("events.out.tfevents.*"))
    saved = yaml.safe_load((record / "config.yaml").read_text())
    assert saved["ckpt_path"] == str(checkpoint) and saved["trainer"]["default_root_dir"] == str(trained)
    callbacks = [c["class_path"] for c in saved["trainer"]["callbacks"]]
    assert callbacks.count("segcentroids.callbacks.RunRecorder") == 1  # `+=` applied once
    assert digest(trained) == before  # the training record is untouched: config, metrics, events


def test_untrained_on_purpose(trained: Path) -> None:
    main(["validate", "--config", str(trained / "config.yaml"), "--ckpt_path=untrained"])
    scored = json.loads((only_record(trained, "validate") / "metrics" / "val.json").read_text())
    assert scored["checkpoint"] is None and scored["step"] == 0


def test_checkpoint_of_another_method_and_class_count(trained: Path, tmp_path: Path) -> None:
    last = str(trained / "checkpoints" / "last.ckpt")
    other = script("test", "--config", QUICKSTART, *tiny_overrides(tmp_path), f"--ckpt_path={last}",
                   "--model.class_path=segcentroids.methods.MLSeg")
    assert other.returncode == 1
    assert other.stderr.splitlines()[0] == (f"segcentroids: error: checkpoint {last} was written by "
                                            "segcentroids.methods.Baseline, but the config builds "
                                            "segcentroids.methods.MLSeg (use the run's config.yaml, or --model "
                                            "segcentroids.methods.Baseline)")
    classes = script("test", "--config", QUICKSTART, *tiny_overrides(tmp_path), f"--ckpt_path={last}",
                     "--data.init_args.num_classes=6")
    assert classes.returncode == 1 and "Traceback" not in classes.stderr
    assert classes.stderr.splitlines()[-1] == (f"segcentroids: error: checkpoint {last} was trained for 8 classes, "
                                              "but the data (SyntheticDataModule) has 6")


def test_broken_checkpoints_are_named(trained: Path, tmp_path: Path) -> None:
    data = (trained / "checkpoints" / "last.ckpt").read_bytes()
    truncated, text = tmp_path / "truncated.ckpt", tmp_path / "notes.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    text.write_text("not a checkpoint\n")
    for path, what in ((truncated, "is truncated or damaged"), (text, "is not a PyTorch checkpoint")):
        result = script("test", "--config", str(trained / "config.yaml"), f"--ckpt_path={path}")
        assert result.returncode == 1
        assert result.stderr.splitlines()[0].startswith(f"segcentroids: error: checkpoint {path} {what}")
        assert "weights_only=False" not in result.stderr


def test_best_without_a_best_checkpoint(tmp_path: Path) -> None:
    result = script("test", "--config", QUICKSTART, *tiny_overrides(tmp_path), "--ckpt_path=best")
    assert result.returncode == 1
    expected = f"segcentroids: error: --ckpt_path best: no best-*.ckpt in {tmp_path}/checkpoints"
    assert result.stderr.splitlines()[0] == expected


# ------------------------------------------------------------------------------------- training and resuming
def test_fresh_fit_into_a_run_is_refused(trained: Path) -> None:
    before = digest(trained)
    with pytest.raises(SystemExit) as exit_info:
        fit(trained)
    assert exit_info.value.code == 1 and digest(trained) == before


@pytest.mark.parametrize("logger", ["tensorboard", "csv", "mlflow"])
def test_resume_keeps_the_run_folder_with_every_logger(tmp_path: Path, logger: str) -> None:
    choice = {"tensorboard": [], "csv": ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger"],
              "mlflow": ["--trainer.logger", "lightning.pytorch.loggers.MLFlowLogger"]}[logger]
    fit(tmp_path, *choice, "--trainer.log_every_n_steps=1")
    config = (tmp_path / "config.yaml").read_text()
    first = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    main(["fit", "--config", str(tmp_path / "config.yaml"), "--ckpt_path=last", "--trainer.max_epochs=2"])
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert resumed == 2 * first  # continued, not restarted
    assert (tmp_path / "config.yaml").read_text() == config  # as fit wrote it
    (resume,) = (tmp_path / "resumes").iterdir()
    assert yaml.safe_load((resume / "config.yaml").read_text())["trainer"]["max_epochs"] == 2
    assert not (tmp_path / "lightning_logs").exists() and not Path("mlruns").exists()
    if logger == "csv":  # the first curve is kept; the resumed one is in the resume's record
        with (tmp_path / "metrics.csv").open() as file:
            steps = {int(row["step"]) for row in csv.DictReader(file)}
        with (resume / "metrics.csv").open() as file:
            resumed_steps = {int(row["step"]) for row in csv.DictReader(file)}
        assert max(steps) < first <= min(resumed_steps) + 1 and max(resumed_steps) >= first
    if logger == "mlflow":
        with sqlite3.connect(tmp_path / "mlflow.db") as db:
            (runs,) = db.execute("select count(*) from runs").fetchone()
            keys = {key for (key,) in db.execute("select distinct key from metrics")}
        assert runs == 2 and {"val/mIoU", "train/loss"} <= keys
    if logger == "tensorboard":
        assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2


def test_learning_rates_by_part_and_no_hp_metric(tmp_path: Path) -> None:
    fit(tmp_path, "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.log_every_n_steps=1")
    with (tmp_path / "metrics.csv").open() as file:
        columns = set(csv.DictReader(file).fieldnames)
    parts = {c.removeprefix("lr-AdamW/") for c in columns if c.startswith("lr-")}
    assert parts == {"encoder", "encoder-no_decay", "decoder", "decoder-no_decay", "head", "head-no_decay"}
    assert "hp_metric" not in columns
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tensorboard = tmp_path / "tb"
    fit(tensorboard, "--trainer.log_every_n_steps=1")
    events = EventAccumulator(str(tensorboard)).Reload()
    assert "hp_metric" not in events.Tags()["scalars"] and "lr-AdamW/encoder" in events.Tags()["scalars"]


class FailAtStep(L.Callback):
    """Raises in the training step `step` (a crash after some training)."""

    def __init__(self, step: int = 2) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_a_crash_saves_what_was_trained(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path, "--trainer.max_epochs=3", "--trainer.callbacks+=tests.test_run_record.FailAtStep",
            "--checkpoint.save_last=false")
    saved = torch.load(tmp_path / "checkpoints" / "on_exception.ckpt", weights_only=True)
    assert saved["global_step"] == 2
    main(["fit", "--config", str(tmp_path / "config.yaml"), "--ckpt_path=last",
          "--trainer.callbacks=[]", "--trainer.max_epochs=3"])
    (resume,) = (tmp_path / "resumes").iterdir()
    assert resume.name.endswith("-on_exception")


# ------------------------------------------------------------------------------------------------------ data
def camvid_args(root: Path, run: Path, *extra: str) -> list[str]:
    return ["fit", "--config", QUICKSTART, "--data=segcentroids.data.CamVidDataModule",
            f"--data.init_args.root={root}", "--data.init_args.num_workers=0", "--data.init_args.crop_size=[8,8]",
            "--data.init_args.batch_size=2", "--trainer.accelerator=cpu", "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={run}", *extra]


@pytest.mark.parametrize("check_files", [False, True])
def test_a_bad_validation_file_stops_the_fit_before_training(tmp_path: Path, check_files: bool) -> None:
    camvid_tree(tmp_path / "camvid")
    bad = tmp_path / "camvid" / "valannot" / "0001TP_000001.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    result = script(*camvid_args(tmp_path / "camvid", tmp_path / "run", f"--data.init_args.check_files={check_files}"))
    assert result.returncode != 0
    assert f"val split: 1 bad file(s): cannot read label file {bad}" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed in setup: nothing was trained


def test_check_files_covers_the_test_split(tmp_path: Path) -> None:
    camvid_tree(tmp_path / "camvid")
    bad = tmp_path / "camvid" / "test" / "0001TP_000000.png"
    bad.write_bytes(bad.read_bytes()[:60])
    args = camvid_args(tmp_path / "camvid", tmp_path / "run", "--data.init_args.check_files=true")
    result = script("test", *args[1:], "--ckpt_path=untrained")
    assert result.returncode != 0 and f"test split: 1 bad file(s): cannot read image file {bad}" in result.stderr


# ------------------------------------------------------------------------------------------- config mistakes
def test_nested_yaml_typo_names_key_file_and_closest(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    segmodel:\n      init_args:\n        encder_name: resnet18\n")
    result = script("fit", "--config", QUICKSTART, "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        f"segcentroids: error: model.init_args.segmodel.init_args.encder_name (in {bad}) is not an option of "
        "segcentroids.models.SegModel; did you mean encoder_name?")
    assert "usage:" not in result.stderr and "Given value" not in result.stderr


def test_no_prefix_matching(tmp_path: Path) -> None:
    result = script("fit", "--config", QUICKSTART, *tiny_overrides(tmp_path), "--trainer.max_epoch=1")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == ("segcentroids: error: trainer.max_epoch (in the command line) is not an "
                                             "option; did you mean trainer.max_epochs?")


def test_check_data_is_listed_in_help() -> None:
    result = script("--help")
    assert "check-data" in result.stdout.rsplit("Available subcommands:", 1)[1]
