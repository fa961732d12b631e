"""CIHP (Crowd Instance-level Human Parsing, Gong et al., ECCV 2018): LIP's 20 classes on multi-person images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segcentroids.data.layouts import SplitScan, scan_folders
from segcentroids.data.lip import LIPDataModule, scan_lip

CIHP_FOLDER = "instance-level_human_parsing"


class CIHPDataModule(LIPDataModule):
    """CIHP in its release layout ``instance-level_human_parsing/{Training,Validation}/{Images/*.jpg,
    Category_ids/*.png}`` (28,280 / 5,000); ``root`` holds ``instance-level_human_parsing``.

    Labels are LIP's class ids 0..19 (background 0 counts), 255 ignore; the flip swaps the same left/right parts as
    LIP's (``LIP_FLIP_PAIRS``); crop and test sizes default to LIP's protocol. "test" reads Validation (the test
    labels are not public). ``train_root``: read the train split from a LIP tree there instead (``{train_images,
    train_segmentations}``): train on LIP, validate and test on CIHP, as MCIBI Table 4 does.
    """

    SPLIT_SIZES = {"train": 28280, "val": 5000, "test": 5000}
    SPLIT_FOLDERS = {"train": "Training", "val": "Validation", "test": "Validation"}

    def __init__(self, root: str | Path, train_root: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        self.train_root = None if train_root is None else Path(train_root)

    def scan_split(self, split: str) -> SplitScan:
        """``Images/<name>.jpg`` paired with ``Category_ids/<name>.png`` (the train split from LIP at
        ``train_root`` when set)."""
        if split not in self.SPLIT_FOLDERS:
            raise ValueError(f"CIHP split must be one of {sorted(self.SPLIT_FOLDERS)}, got {split!r}")
        if split == "train" and self.train_root is not None:
            return scan_lip(self.train_root, "train")
        base = self.root / CIHP_FOLDER / self.SPLIT_FOLDERS[split]
        return scan_folders(base / "Images", base / "Category_ids", (".jpg", ".jpeg", ".png"), (".png",))
