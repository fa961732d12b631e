"""Cityscapes (fine annotations): 19 classes, official labelId -> trainId table applied on load."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from segcentroids.data.base import FilePair, SegDataModule, map_with_table, read_label
from segcentroids.data.labels import table_from_ids
from segcentroids.data.layouts import SplitScan, scan_folders

# labelIds of the 19 evaluated classes, in trainId order (cityscapesScripts' labels.py); every other id (0-6, 9, 10,
# 14-16, 18, 29, 30, and license plate -1, stored as 255) is ignored.
CITYSCAPES_EVAL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_IGNORED_IDS = (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 255)
CITYSCAPES_LABEL_ID_TABLE = table_from_ids(CITYSCAPES_EVAL_IDS, ignored=CITYSCAPES_IGNORED_IDS)
CITYSCAPES_TRAIN_ID_TABLE = table_from_ids(range(19))
IMAGE_SUFFIX = "_leftImg8bit.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_SPLITS = {"train": ("train",), "train+val": ("train", "val")}
"""What ``train_split`` trains on: the 2,975 train images, or train and val together (2,975 + 500; MCIBI Table 8,
the test-server entries)."""


class CityscapesDataModule(SegDataModule):
    """Cityscapes ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``gtFine/<split>/<city>/*_gtFine_*.png``.

    ``root`` holds ``leftImg8bit`` and ``gtFine``. A label is ``*_gtFine_labelTrainIds.png`` when that file exists
    (0..18, 255; made by cityscapesScripts' ``createTrainIdLabelImgs``), else ``*_gtFine_labelIds.png`` mapped by the
    official table. Defaults are the paper protocol: 512x1024 crops of images resized to fit (2048, 1024) times a
    ratio in [0.5, 2]; test at the stored 1024x2048 with slide inference (see ``configs/data/cityscapes.yaml``).

    ``train_split``: ``"train"`` or ``"train+val"`` (the fine train and val images together, for test-server runs such
    as MCIBI Table 8); validation still reads val.
    """

    CLASS_NAMES = (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
        "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    )  # fmt: skip
    PALETTE = (
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
        (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
        (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    )  # fmt: skip
    SPLIT_SIZES = {"train": 2975, "val": 500, "test": 1525}
    SERVER_IDS = CITYSCAPES_EVAL_IDS  # the benchmark server reads labelIds

    def __init__(
        self,
        root: str | Path,
        crop_size: int | tuple[int, int] = (512, 1024),
        scale: tuple[int, int] | None = (2048, 1024),
        test_scale: tuple[int, int] | None = (2048, 1024),
        train_split: Literal["train", "train+val"] = "train",
        **kwargs: Any,
    ) -> None:
        if train_split not in TRAIN_SPLITS:
            raise ValueError(f"CityscapesDataModule: train_split must be one of {list(TRAIN_SPLITS)}, got "
                             f"{train_split!r}")
        super().__init__(root=root, crop_size=crop_size, scale=scale, test_scale=test_scale, **kwargs)
        self.train_split = train_split

    def list_split(self, split: str) -> list[FilePair]:
        """The pairs of ``split``; "train" with ``train_split="train+val"`` is the train pairs then the val pairs."""
        if split != "train":
            return super().list_split(split)
        pairs: list[FilePair] = []
        for folder in TRAIN_SPLITS[self.train_split]:  # one or two folders
            pairs += super().list_split(folder)
        return pairs

    def scan_split(self, split: str) -> SplitScan:
        """Pairs over the city subfolders of ``split``, preferring ``_labelTrainIds.png`` over ``_labelIds.png``."""
        if split not in self.SPLIT_SIZES:
            raise ValueError(f"Cityscapes split must be one of {sorted(self.SPLIT_SIZES)}, got {split!r}")
        return scan_folders(
            self.root / "leftImg8bit" / split,
            self.root / "gtFine" / split,
            (IMAGE_SUFFIX,),
            (TRAIN_IDS_SUFFIX, LABEL_IDS_SUFFIX),
            recursive=True,
        )


    @staticmethod
    def map_labels(raw: np.ndarray) -> np.ndarray:
        """labelIds -> trainIds by the official table (ignored ids and 255 -> 255; ids above 33 -> -1)."""
        return map_with_table(raw, CITYSCAPES_LABEL_ID_TABLE)

    @staticmethod
    def map_train_ids(raw: np.ndarray) -> np.ndarray:
        """``_labelTrainIds.png`` as stored: 0..18 and 255; anything else -> -1."""
        return map_with_table(raw, CITYSCAPES_TRAIN_ID_TABLE)

    @staticmethod
    def load_label(path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(stored label, train ids) of a ``_labelTrainIds.png`` or ``_labelIds.png`` file."""
        raw = read_label(path)
        if path.name.endswith(TRAIN_IDS_SUFFIX):
            return raw, CityscapesDataModule.map_train_ids(raw)
        return raw, CityscapesDataModule.map_labels(raw)
