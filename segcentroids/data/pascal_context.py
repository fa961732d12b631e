"""Pascal-Context with 59 classes (labels from mmsegmentation's converter, 0 = background is ignored) or 60
(background kept as class 0)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segcentroids.data.base import SegDataModule, map_with_table
from segcentroids.data.labels import generated_palette, reduce_zero_table, table_from_ids
from segcentroids.data.layouts import SplitScan, scan_list

PASCAL_CONTEXT59_TABLE = reduce_zero_table(59)
PASCAL_CONTEXT60_TABLE = table_from_ids(range(60))


class PascalContext59DataModule(SegDataModule):
    """Pascal-Context 59 in the ``VOCdevkit/VOC2010`` layout mmsegmentation's converter writes.

    ``root`` is the ``VOC2010`` folder (or a folder holding ``VOC2010`` or ``VOCdevkit/VOC2010``): images
    ``JPEGImages/<name>.jpg``, labels ``SegmentationClassContext/<name>.png`` (0 = background, 1..59), splits
    ``ImageSets/SegmentationContext/{train,val}.txt``; "test" reads the val list. Labels: 0 -> 255, k -> k-1.
    Defaults are the paper protocol: 480x480 crops of images resized to fit (520, 520) times a ratio in [0.5, 2];
    test images resized to fit (520, 520), slide inference with 480x480 windows and stride 320.
    """

    CLASS_NAMES = (
        "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
        "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup",
        "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard",
        "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock",
        "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree",
        "truck", "tvmonitor", "wall", "water", "window", "wood",
    )  # fmt: skip
    PALETTE = generated_palette(60)[1:]
    SPLIT_SIZES = {"train": 4998, "val": 5105, "test": 5105}
    SPLIT_LISTS = {"train": "train", "val": "val", "test": "val"}
    SERVER_IDS = tuple(range(1, 60))  # the converter's 1..59 (0 = background)

    def __init__(
        self,
        root: str | Path,
        crop_size: int | tuple[int, int] = (480, 480),
        scale: tuple[int, int] | None = (520, 520),
        test_scale: tuple[int, int] | None = (520, 520),
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, crop_size=crop_size, scale=scale, test_scale=test_scale, **kwargs)

    @property
    def dataset_dir(self) -> Path:
        """The ``VOC2010`` folder."""
        for nested in (self.root / "VOC2010", self.root / "VOCdevkit" / "VOC2010"):
            if nested.is_dir():
                return nested
        return self.root

    def scan_split(self, split: str) -> SplitScan:
        """Pairs from ``ImageSets/SegmentationContext/<split>.txt``, with the names that could not be paired."""
        if split not in self.SPLIT_LISTS:
            raise ValueError(f"Pascal-Context split must be one of {sorted(self.SPLIT_LISTS)}, got {split!r}")
        base = self.dataset_dir
        return scan_list(
            base / "ImageSets" / "SegmentationContext" / f"{self.SPLIT_LISTS[split]}.txt",
            lambda name: [base / "JPEGImages" / f"{name}.jpg"],
            lambda name: [base / "SegmentationClassContext" / f"{name}.png"],
        )


    @staticmethod
    def map_labels(raw: np.ndarray) -> np.ndarray:
        """0 -> 255, k -> k-1 for k in 1..59, 255 stays ignore, anything else -> -1 (undefined)."""
        return map_with_table(raw, PASCAL_CONTEXT59_TABLE)


class PascalContext60DataModule(PascalContext59DataModule):
    """Pascal-Context 60: the 59 classes and background as class 0 (mmsegmentation's ``PascalContextDataset``,
    Segmenter's and MLSeg's protocol); the same files as ``PascalContext59DataModule``, labels 0..59 as stored, 255
    ignored. MLSeg's authors resize to short side 520 (``configs/data/pascal_context60.yaml``)."""

    CLASS_NAMES = ("background", *PascalContext59DataModule.CLASS_NAMES)
    PALETTE = generated_palette(60)
    SERVER_IDS = ()  # the stored ids are the train ids

    @staticmethod
    def map_labels(raw: np.ndarray) -> np.ndarray:
        """0..59 stay, 255 stays ignore, anything else -> -1 (undefined)."""
        return map_with_table(raw, PASCAL_CONTEXT60_TABLE)
