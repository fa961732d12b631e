"""Label sets over 255 classes: 16-bit labels, the ignore value 65535, and every method and the CLI at K > 255."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segcentroids.callbacks.images import colorize
from segcentroids.cli import main
from segcentroids.data import ADE20KFullDataModule, SyntheticDataModule
from segcentroids.data.check import check_dataset
from segcentroids.data.labels import IGNORE_INDEX, LARGE_IGNORE_INDEX, ignore_index_for
from segcentroids.methods import MCIBI, MVSC, PNE, Baseline, MLSeg, SpecializeFuse
from segcentroids.metrics import SegmentationMetrics
from tests.conftest import CONFIGS, tiny_overrides, tiny_segmodel

IGNORE = LARGE_IGNORE_INDEX


def test_the_ignore_value_is_never_a_class_id() -> None:
    assert ignore_index_for(1) == ignore_index_for(255) == IGNORE_INDEX == 255
    assert ignore_index_for(256) == ignore_index_for(1284) == ignore_index_for(65535) == IGNORE == 65535
    with pytest.raises(ValueError, match="num_classes"):
        ignore_index_for(65536)


# ------------------------------------------------------------------------------------------------- ADE20K-Full
def ade20k_full_tree(root: Path, shape: tuple[int, int] = (12, 16)) -> dict[tuple[str, str], np.ndarray]:
    """``ADE20K_2021_17_01/{images,annotations}_detectron2/{training,validation}``: uint16 TIFF labels 0..846,
    65535 unlabelled (as MaskFormer's ``prepare_ade20k_full_sem_seg.py`` writes them)."""
    base = root / "ADE20K_2021_17_01"
    stored = {}
    for split, folder, count in (("train", "training", 2), ("val", "validation", 2)):
        for index in range(count):
            name = f"ADE_{folder[:5]}_{index:08d}"
            rng = np.random.default_rng(index)
            label = rng.choice([0, 1, 300, 846, IGNORE], size=shape).astype(np.uint16)
            label[0, :5] = [0, 1, 300, 846, IGNORE]
            (base / "images_detectron2" / folder).mkdir(parents=True, exist_ok=True)
            (base / "annotations_detectron2" / folder).mkdir(parents=True, exist_ok=True)
            image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
            assert cv2.imwrite(str(base / "images_detectron2" / folder / f"{name}.jpg"), image)
            assert cv2.imwrite(str(base / "annotations_detectron2" / folder / f"{name}.tif"), label)
            stored[(split, name)] = label
    return stored


def test_ade20k_full_loads_16_bit_labels_as_stored(tmp_path: Path) -> None:
    stored = ade20k_full_tree(tmp_path)
    data = ADE20KFullDataModule(root=tmp_path, num_workers=0, check_files=True)
    assert data.num_classes == 847 and data.ignore_index == IGNORE and len(data.palette) == 847
    assert data.class_names[0] == "wall" and data.class_names[-1] == "adding machine, totalizer, totaliser"
    data.setup("validate")
    dataset = data.datasets["val"]
    for index, (_, label_path) in enumerate(dataset.pairs):
        item = dataset[index]
        assert item["mask"].dtype == torch.int64
        np.testing.assert_array_equal(item["mask"].numpy(), stored[("val", label_path.stem)].astype(np.int64))


def test_ade20k_full_names_a_value_that_is_neither_a_class_nor_ignore(tmp_path: Path) -> None:
    ade20k_full_tree(tmp_path)
    bad = tmp_path / "ADE20K_2021_17_01" / "annotations_detectron2" / "validation" / "ADE_valid_00000001.tif"
    assert cv2.imwrite(str(bad), np.full((12, 16), 847, dtype=np.uint16))
    with pytest.raises(ValueError, match="ADE_valid_00000001.tif.*847"):
        ADE20KFullDataModule(root=tmp_path, num_workers=0, check_files=True).setup("validate")
    report = check_dataset(ADE20KFullDataModule(root=tmp_path, num_workers=0), ["val"])
    assert "847" in json.dumps(report.to_dict())


# --------------------------------------------------------------------------------------- models at K > 255
METHODS = {
    "Baseline": (Baseline, {}),
    "MCIBI": (MCIBI, {"memory_channels": 16, "transform_channels": 8, "rcl_start_step": 0}),
    "SpecializeFuse": (SpecializeFuse, {"semantic_channels": 16, "unity_channels": 8}),
    "PNE": (PNE, {"samples_per_set": 4}),
    "MLSeg": (MLSeg, {"kappa": 100, "classifier": "linear", "rank_temperature": "per_rank"}),
    "MVSC": (MVSC, {}),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_and_evaluates_with_the_large_ignore_value(name: str) -> None:
    """K = 300 with ignore 65535: ignored pixels add nothing to the loss (an all-ignore image changes no term) and
    the metrics leave them out."""
    method, kwargs = METHODS[name]
    num_classes = 300
    model = method(segmodel=tiny_segmodel(), num_classes=num_classes, ignore_index=IGNORE, dropout=0.0, **kwargs)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    labels = torch.randint(0, num_classes, (2, 32, 32), generator=generator)
    labels[:, :4] = IGNORE
    _, losses = model.training_outputs(images, labels)
    assert losses and all(torch.isfinite(value) for value in losses.values()), losses
    model.total_loss(losses).backward()
    model.eval()
    with torch.no_grad():
        logits, _ = model.evaluation_outputs(images, labels, "val")
    assert logits.shape == (2, num_classes, 32, 32)
    metrics = SegmentationMetrics(num_classes, IGNORE)
    metrics.update(logits.argmax(1), labels)
    assert int(metrics.confmat.sum()) == int((labels != IGNORE).sum())


def test_colorize_blackens_the_large_ignore_value() -> None:
    labels = np.array([[0, 846, IGNORE]], dtype=np.uint16)
    rgb = colorize(labels, [(10, 20, 30)] * 847, IGNORE)
    assert rgb[0, 0].tolist() == [10, 20, 30] and rgb[0, 1].tolist() == [10, 20, 30] and rgb[0, 2].tolist() == [0, 0, 0]


def test_synthetic_scenes_with_1284_classes_are_16_bit() -> None:
    data = SyntheticDataModule(num_classes=1284, image_size=(32, 32), num_workers=0)
    image, label, _ = data.generator.scene("train", 0)
    assert data.ignore_index == IGNORE and label.dtype == np.uint16 and image.dtype == np.uint8
    assert label.max() < 1284 and len(np.unique(label)) <= 8  # few classes in each image, from a large set


# ------------------------------------------------------------------------------------------- the CLI at K = 1284
def test_mlseg_at_k_1284_trains_evaluates_and_predicts_through_the_cli(tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = [*tiny_overrides(run), "--data.init_args.num_classes=1284",
              "--model.class_path=segcentroids.methods.MLSeg", "--model.init_args.kappa=100",
              "--model.init_args.classifier=linear", "--model.init_args.rank_temperature=per_rank"]
    main(["fit", "--config", str(CONFIGS / "quickstart.yaml"), *common, "--trainer.max_steps=2",
          "--trainer.limit_val_batches=1"])
    record = json.loads((run / "metrics" / "val.json").read_text())
    assert len(record["IoU"]) == 1284
    main(["test", "--config", str(CONFIGS / "quickstart.yaml"), *common, "--ckpt_path=last",
          "--trainer.limit_test_batches=1"])
    (evaluation,) = (run / "eval").glob("test-last-*")
    assert len(json.loads((evaluation / "metrics" / "test.json").read_text())["IoU"]) == 1284
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    assert cv2.imwrite(str(images / "a.png"), np.zeros((20, 24, 3), np.uint8))
    main(["predict", "--config", str(CONFIGS / "quickstart.yaml"), *common, "--ckpt_path=last",
          f"--data.init_args.predict_dir={images}", f"--prediction_writer.output_dir={out}"])
    written = cv2.imread(str(out / "labels" / "a.png"), cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint16 and written.shape == (20, 24) and written.max() < 1284
