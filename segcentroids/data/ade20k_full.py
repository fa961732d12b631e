"""ADE20K-Full: the 847-class semantic labels of the ADE20K 2021 release, 16-bit, 65535 ignored."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from segcentroids.data.base import SegDataModule, map_with_table
from segcentroids.data.labels import LARGE_IGNORE_INDEX, generated_palette, table_from_ids
from segcentroids.data.layouts import SplitScan, scan_folders

ADE20K_FULL_CLASSES = 847
ADE20K_FULL_TABLE = table_from_ids(range(ADE20K_FULL_CLASSES), ignored=(LARGE_IGNORE_INDEX,), size=2**16,
                                   ignore_index=LARGE_IGNORE_INDEX)


def read_class_names(file_name: str) -> tuple[str, ...]:
    """Class names, one per line in train-id order, from ``segcentroids/data/class_names/<file_name>`` (lines
    starting with ``#`` are comments)."""
    text = resources.files("segcentroids.data").joinpath("class_names", file_name).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line and not line.startswith("#"))


class ADE20KFullDataModule(SegDataModule):
    """ADE20K-Full (847 classes) in the layout MaskFormer's ``prepare_ade20k_full_sem_seg.py`` writes:
    ``ADE20K_2021_17_01/images_detectron2/{training,validation}/*.jpg`` and
    ``ADE20K_2021_17_01/annotations_detectron2/{training,validation}/*.tif``.

    ``root`` is the ``ADE20K_2021_17_01`` folder (or the folder holding it). Labels are single-channel uint16 TIFFs
    holding the train ids 0..846 and 65535 for unlabelled pixels, which is the package's ignore value for label sets
    over 255 classes, so they load as stored. "val" and "test" both read ``validation``. Defaults are ADE20K's
    protocol (512x512 crops of images resized to fit (2048, 512) times a ratio in [0.5, 2]; test images resized to
    short side 512). Class names are MaskFormer's list (``class_names/ade20k_full.txt``).
    """

    CLASS_NAMES = read_class_names("ade20k_full.txt")
    PALETTE = generated_palette(ADE20K_FULL_CLASSES + 1)[1:]
    SPLIT_SIZES = {"train": 25574, "val": 2000, "test": 2000}
    SPLIT_FOLDERS = {"train": "training", "val": "validation", "test": "validation"}

    def __init__(
        self,
        root: str | Path,
        crop_size: int | tuple[int, int] = (512, 512),
        scale: tuple[int, int] | None = (2048, 512),
        test_scale: tuple[int, int] | None = (2048, 512),
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, crop_size=crop_size, scale=scale, test_scale=test_scale, **kwargs)

    @property
    def dataset_dir(self) -> Path:
        """The ``ADE20K_2021_17_01`` folder."""
        nested = self.root / "ADE20K_2021_17_01"
        return nested if nested.is_dir() else self.root

    def scan_split(self, split: str) -> SplitScan:
        """Pairs ``images_detectron2/<folder>/*.jpg`` with ``annotations_detectron2/<folder>/*.tif``."""
        if split not in self.SPLIT_FOLDERS:
            raise ValueError(f"ADE20K-Full split must be one of {sorted(self.SPLIT_FOLDERS)}, got {split!r}")
        folder = self.SPLIT_FOLDERS[split]
        base = self.dataset_dir
        return scan_folders(base / "images_detectron2" / folder, base / "annotations_detectron2" / folder,
                            (".jpg", ".jpeg"), (".tif", ".tiff"))

    @staticmethod
    def map_labels(raw: np.ndarray) -> np.ndarray:
        """Train ids 0..846 and 65535 (ignore) as stored; anything else -> -1 (undefined)."""
        return map_with_table(raw, ADE20K_FULL_TABLE)
