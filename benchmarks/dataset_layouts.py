"""Write a small training split of each paper dataset in its exact on-disk layout, at the dataset's usual image size.

Used by ``data_loading.py --layouts`` to time each DataModule's training pipeline on files like the real ones (JPEG
or PNG images, PNG or ``.mat`` labels of piecewise-constant regions, which compress like real annotations).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from segcentroids.data import (
    ADE20KDataModule,
    CityscapesDataModule,
    COCOStuff10kDataModule,
    COCOStuff164kDataModule,
    LIPDataModule,
    PascalContext59DataModule,
)
from segcentroids.data.base import SegDataModule


def scene(shape: tuple[int, int], values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 label of blocky regions drawn from ``values`` and a smooth RGB image whose colours follow it."""
    grid = rng.choice(values, size=(8, 12)).astype(np.uint8)
    label = cv2.resize(grid, shape[::-1], interpolation=cv2.INTER_NEAREST)
    colours = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(colours[label], (0, 0), 3)
    noise = rng.normal(0, 8, (*shape, 3))
    return np.clip(image + noise, 0, 255).astype(np.uint8), label


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), array, params):
        raise OSError(f"cannot write {path}")


def _ade20k(root: Path, counts: dict[str, int], rng: np.random.Generator) -> SegDataModule:
    base = root / "ADEChallengeData2016"
    for split, folder in (("train", "training"), ("val", "validation")):
        for i in range(counts[split]):
            image, label = scene((512, 683), np.arange(151), rng)
            _write(base / "images" / folder / f"ADE_{split}_{i:08d}.jpg", image)
            _write(base / "annotations" / folder / f"ADE_{split}_{i:08d}.png", label)
    return ADE20KDataModule(root, num_workers=0)


def _cityscapes(root: Path, counts: dict[str, int], rng: np.random.Generator) -> SegDataModule:
    for split in ("train", "val"):
        for i in range(counts[split]):
            image, label = scene((1024, 2048), np.arange(34), rng)
            name = f"aachen_{i:06d}_000019"
            _write(root / "leftImg8bit" / split / "aachen" / f"{name}_leftImg8bit.png", image)
            _write(root / "gtFine" / split / "aachen" / f"{name}_gtFine_labelIds.png", label)
    return CityscapesDataModule(root, num_workers=0)


def _coco_stuff10k(root: Path, counts: dict[str, int], rng: np.random.Generator) -> SegDataModule:
    (root / "imageLists").mkdir(parents=True, exist_ok=True)
    for split, folder, list_name in (("train", "train2014", "train"), ("val", "test2014", "test")):
        names = [f"COCO_{folder}_{i:012d}" for i in range(counts[split])]
        for name in names:
            image, label = scene((480, 640), np.arange(183), rng)
            _write(root / "images" / folder / f"{name}.jpg", image)
            (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(root / "annotations" / folder / f"{name}.mat", {"S": label}, do_compression=True)
        (root / "imageLists" / f"{list_name}.txt").write_text("\n".join(names) + "\n")
    return COCOStuff10kDataModule(root, num_workers=0)


def _coco_stuff164k(root: Path, counts: dict[str, int], rng: np.random.Generator) -> SegDataModule:
    for split, folder in (("train", "train2017"), ("val", "val2017")):
        for i in range(counts[split]):
            image, label = scene((480, 640), np.array([*range(182), 255]), rng)
            _write(root / "images" / folder / f"{i:012d}.jpg", image)
            _write(root / "annotations" / folder / f"{i:012d}.png", label)
    return COCOStuff164kDataModule(root, num_workers=0)


def _pascal_context59(root: Path, counts: dict[str, int], rng: np.random.Generator) -> SegDataModule:
    base = root / "VOC2010"
    (base / "ImageSets" / "SegmentationContext").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        names = [f"{split}_{i:06d}" for i in range(counts[split])]
        for name in names:
            image, label = scene((375, 500), np.arange(60), rng)
            _write(base / "JPEGImages" / f"{name}.jpg", image)
            _write(base / "SegmentationClassContext" / f"{name}.png", label)
        (base / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return PascalContext59DataModule(root, num_workers=0)


def _lip(root: Path, counts: dict[str, int], rng: np.random.Generator) -> SegDataModule:
    for split in ("train", "val"):
        for i in range(counts[split]):
            image, label = scene((320, 240), np.arange(20), rng)
            _write(root / f"{split}_images" / f"{i}_{split}.jpg", image)
            _write(root / f"{split}_segmentations" / f"{i}_{split}.png", label)
    return LIPDataModule(root, num_workers=0)


# name -> (writer, the files it writes)
LAYOUTS: dict[str, tuple[Callable[[Path, dict[str, int], np.random.Generator], SegDataModule], str]] = {
    "ade20k": (_ade20k, "512x683 jpg + png"),
    "cityscapes": (_cityscapes, "1024x2048 png + labelIds png"),
    "coco_stuff10k": (_coco_stuff10k, "480x640 jpg + .mat (S)"),
    "coco_stuff164k": (_coco_stuff164k, "480x640 jpg + stuffthingmaps png"),
    "pascal_context59": (_pascal_context59, "375x500 jpg + png"),
    "lip": (_lip, "320x240 jpg + png"),
}


def write_layout(name: str, root: Path, count: int, seed: int = 0) -> SegDataModule:
    """Write ``count`` training pairs (and one validation pair) of dataset ``name`` under ``root``; returns its
    DataModule with the paper defaults."""
    writer, _ = LAYOUTS[name]
    return writer(root, {"train": count, "val": 1}, np.random.default_rng(seed))
