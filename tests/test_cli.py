"""End to end: the `segcentroids` console script for fit, validate, test and predict on synthetic data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from segcentroids.cli import main
from segcentroids.methods import Baseline
from tests.conftest import CONFIGS, tiny_overrides

SCRIPT = str(Path(sys.executable).parent / "segcentroids")
QUICKSTART = str(CONFIGS / "quickstart.yaml")


def run_script(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=600)
    tail = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"segcentroids {' '.join(args)} failed:\n{tail}"
    return result


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    result = run_script("fit", "--config", QUICKSTART, *tiny_overrides(run_dir, "--trainer.max_epochs=2"))
    assert "mIoU" in result.stdout and "| class" in result.stdout  # per-class table printed
    return run_dir


def test_fit_writes_the_stable_run_folder(fitted_run: Path) -> None:
    assert (fitted_run / "config.yaml").is_file()
    assert (fitted_run / "checkpoints" / "last.ckpt").is_file()
    assert list((fitted_run / "checkpoints").glob("best-*.ckpt")), "best val/mIoU checkpoint missing"
    assert list(fitted_run.glob("events.out.tfevents.*")), "TensorBoard events missing"
    record = json.loads((fitted_run / "metrics" / "val.json").read_text())
    assert record["split"] == "val" and 0.0 <= record["mIoU"] <= 100.0 and len(record["IoU"]) == 8
    saved = yaml.safe_load((fitted_run / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "segcentroids.methods.Baseline"


def test_validate_and_test_a_checkpoint(fitted_run: Path) -> None:
    ckpt = str(fitted_run / "checkpoints" / "last.ckpt")
    run_script("validate", "--config", QUICKSTART, *tiny_overrides(fitted_run), "--ckpt_path", ckpt)
    result = run_script("test", "--config", QUICKSTART, *tiny_overrides(fitted_run), "--ckpt_path", ckpt)
    assert "[test]" in result.stdout
    (evaluation,) = (fitted_run / "eval").glob("test-last-*")
    record = json.loads((evaluation / "metrics" / "test.json").read_text())
    assert record["split"] == "test" and set(record) >= {"mIoU", "mAcc", "aAcc", "IoU", "Acc"}
    confusion = cv2.imread(str(evaluation / "metrics" / "confusion_test.png"))  # the test split's confusion matrix
    assert confusion is not None and min(confusion.shape[:2]) >= 400
    assert f"confusion matrix: {evaluation / 'metrics' / 'confusion_test.png'}" in result.stdout


def test_predict_writes_label_and_colour_pngs(fitted_run: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a": (40, 56), "b": (64, 48)}
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(images / f"{name}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    out = tmp_path / "out"
    result = run_script("predict", "--config", QUICKSTART, *tiny_overrides(fitted_run),
                        "--ckpt_path", str(fitted_run / "checkpoints" / "last.ckpt"),
                        f"--data.init_args.predict_dir={images}", f"--prediction_writer.output_dir={out}",
                        "--prediction_writer.overlay_alpha=0.25")
    for name, size in sizes.items():
        labels = cv2.imread(str(out / "labels" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        color = cv2.imread(str(out / "color" / f"{name}.png"))
        assert labels.shape == size and labels.max() < 8  # original size, valid train ids
        assert color.shape == (*size, 3)
        # the overlay: a quarter colour map, three quarters input image
        image = cv2.imread(str(images / f"{name}.png"))
        expected = np.clip((0.25 * color.astype(np.float64) + 0.75 * image).round(), 0, 255)
        overlay = cv2.imread(str(out / "overlay" / f"{name}.png"))
        assert np.abs(overlay.astype(np.float64) - expected).max() <= 1
    assert f"[predict] wrote 2 in {out / 'labels'}, 2 in {out / 'color'}, 2 in {out / 'overlay'}" in result.stdout
    assert not (out / "server").exists()  # synthetic labels are stored as train ids: nothing to convert


def test_prediction_writer_writes_the_servers_ids(tmp_path: Path) -> None:
    """ADE20K's server reads 1..150: the writer adds the `server/` folder with train id + 1 (0 stays "other"-free)."""
    from types import SimpleNamespace

    import torch

    from segcentroids.callbacks import SegPredictionWriter
    from segcentroids.data import ADE20KDataModule

    preds = torch.tensor([[0, 5], [149, 7]])
    trainer = SimpleNamespace(datamodule=ADE20KDataModule(root=tmp_path), default_root_dir=str(tmp_path))
    writer = SegPredictionWriter(output_dir=str(tmp_path / "out"))
    writer.write_on_batch_end(trainer, SimpleNamespace(num_classes=150), {"preds": [preds], "name": ["a.jpg"]},
                              None, None, 0)
    labels = cv2.imread(str(tmp_path / "out" / "labels" / "a.png"), cv2.IMREAD_UNCHANGED)
    server = cv2.imread(str(tmp_path / "out" / "server" / "a.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(labels, [[0, 5], [149, 7]])
    np.testing.assert_array_equal(server, [[1, 6], [150, 8]])


def test_command_line_wins_over_checkpoint_hyperparameters(fitted_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings given now (config + command line) take effect when testing a checkpoint."""
    seen: dict[str, object] = {}

    def record(self: Baseline) -> None:
        seen["lr"] = self.optim.lr
        seen["warmup"] = self.optim.warmup_steps
        seen["mode"] = (self.inference.mode, self.inference.crop_size, self.inference.stride)

    monkeypatch.setattr(Baseline, "on_test_start", record)
    ckpt = str(fitted_run / "checkpoints" / "last.ckpt")
    main(["test", "--config", QUICKSTART, *tiny_overrides(fitted_run), "--ckpt_path", ckpt,
          "--model.init_args.optim.lr=0.123", "--model.init_args.inference.mode=slide",
          "--model.init_args.inference.crop_size=[32,32]", "--model.init_args.inference.stride=[16,16]"])
    # given now: lr and the test-time protocol; from the checkpoint/config: warm-up
    assert seen == {"lr": 0.123, "warmup": 20, "mode": ("slide", (32, 32), (16, 16))}


def test_bad_config_key_is_named(tmp_path: Path) -> None:
    result = subprocess.run([SCRIPT, "fit", "--config", QUICKSTART, *tiny_overrides(tmp_path),
                             "--model.init_args.optim.no_such_key=1"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "no_such_key" in result.stderr
