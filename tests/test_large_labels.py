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
from segcentroids.data import ADE20KFullDataModule, COCOLVISDataModule, SyntheticDataModule
from segcentroids.data.base import label_reader, load_pair
from segcentroids.data.check import check_dataset
from segcentroids.data.coco_lvis import stuff_to_coco_lvis
from segcentroids.data.coco_stuff import COCO_STUFF_CLASS_NAMES, COCO_USED_IDS
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
        preds, _ = model.evaluation_outputs(images, labels, "val")
    assert preds.shape == (2, 32, 32) and int(preds.max()) < num_classes
    metrics = SegmentationMetrics(num_classes, IGNORE)
    metrics.update(preds, labels)
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


# ------------------------------------------------------------------------------------------------------ COCO+LVIS
def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as coco_mask

    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(encoded["size"]), "counts": encoded["counts"].decode("ascii")}


def _box(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def coco_lvis_sources(root: Path, shape: tuple[int, int] = (8, 10)) -> tuple[Path, Path, np.ndarray]:
    """COCO 2017 + LVIS v1 annotation files for one train image (two overlapping instances, three stuff regions)
    and one image LVIS lists but COCO-Stuff does not; returns (coco root, lvis root, the expected stored label)."""
    coco, lvis = root / "coco", root / "lvis"
    (coco / "annotations").mkdir(parents=True)
    lvis.mkdir()
    for image_id in (1, 2):
        (coco / "train2017").mkdir(exist_ok=True)
        assert cv2.imwrite(str(coco / "train2017" / f"{image_id:012d}.jpg"), np.zeros((*shape, 3), np.uint8))
    first, second = _box(shape, slice(0, 4), slice(0, 4)), _box(shape, slice(2, 6), slice(2, 6))
    stuff = [(92, _box(shape, slice(4, 8), slice(0, 10))), (94, _box(shape, slice(0, 4), slice(6, 10))),
             (183, _box(shape, slice(0, 4), slice(4, 6)))]
    images = [{"id": i, "height": shape[0], "width": shape[1], "file_name": f"{i:012d}.jpg",
               "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg"} for i in (1, 2)]
    lvis_json = {"images": images, "categories": [{"id": 5, "name": "a"}, {"id": 7, "name": "b"}],
                 "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "segmentation": _rle(first)},
                                 {"id": 2, "image_id": 1, "category_id": 7, "segmentation": _rle(second)},
                                 {"id": 3, "image_id": 2, "category_id": 5, "segmentation": _rle(first)}]}
    stuff_json = {"images": images[:1], "categories": [{"id": c, "name": str(c)} for c, _ in stuff],
                  "annotations": [{"id": 10 + i, "image_id": 1, "category_id": c, "segmentation": _rle(m)}
                                  for i, (c, m) in enumerate(stuff)]}
    (lvis / "lvis_v1_train.json").write_text(json.dumps(lvis_json))
    (coco / "annotations" / "stuff_train2017.json").write_text(json.dumps(stuff_json))
    # by hand: instance 5 where it is, 7 where 5 is not; then banner (92 -> LVIS 50) below, 94 -> the first new id
    # 1204 top right, "other" (183) unlabelled, nothing else
    expected = np.zeros(shape, dtype=np.uint16)
    expected[4:8, :] = 50
    expected[0:4, 6:10] = 1204
    expected[2:6, 2:6] = 7
    expected[0:4, 0:4] = 5
    return coco, lvis, expected


def test_convert_coco_lvis_and_load(tmp_path: Path) -> None:
    coco, lvis, expected = coco_lvis_sources(tmp_path)
    out = tmp_path / "coco_lvis"
    with pytest.raises(SystemExit) as done:
        main(["convert-coco-lvis", "--coco-root", str(coco), "--lvis-root", str(lvis), "--out", str(out),
              "--splits", "train"])
    assert done.value.code == 0
    written = cv2.imread(str(out / "annotations" / "train" / "000000000001.png"), cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint16
    np.testing.assert_array_equal(written, expected)
    assert not (out / "annotations" / "train" / "000000000002.png").exists()  # not in COCO-Stuff: left out
    data = COCOLVISDataModule(root=out, num_workers=0, check_files=True)
    assert data.num_classes == 1284 and data.ignore_index == IGNORE
    (pair,) = data.list_split("train")
    loaded = load_pair(*pair, label_reader(data.map_labels), 1284, IGNORE).label
    np.testing.assert_array_equal(loaded, np.where(expected == 0, IGNORE, expected.astype(np.int64) - 1))
    with pytest.raises(SystemExit, match="not empty"):  # nothing is overwritten
        main(["convert-coco-lvis", "--coco-root", str(coco), "--lvis-root", str(lvis), "--out", str(out),
              "--splits", "train"])


def test_coco_lvis_classes_and_stuff_mapping() -> None:
    """The stuff classes LVIS has by name keep the LVIS id, the others follow 1203 in COCO id order (the names
    file, built from LVIS v1 and COCO-Stuff, is the oracle of the merge)."""
    names = COCOLVISDataModule.CLASS_NAMES
    assert len(names) == 1284 and names[0] == "aerosol_can" and names[1202] == "zucchini"
    mapping = stuff_to_coco_lvis()
    assert mapping[183] == 0 and sorted(v for k, v in mapping.items() if v > 1203) == list(range(1204, 1285))
    coco_names = dict(zip((i + 1 for i in COCO_USED_IDS), COCO_STUFF_CLASS_NAMES))
    for stuff, stored in mapping.items():
        if stuff != 183:
            assert names[stored - 1] == coco_names[stuff], (stuff, stored)
