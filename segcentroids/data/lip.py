"""LIP (Look Into Person): 20 human-part classes, background included; a flip that swaps left and right parts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np

from segcentroids.data.base import SegDataModule, map_with_table
from segcentroids.data.labels import generated_palette, table_from_ids
from segcentroids.data.layouts import SplitScan, scan_folders

LIP_TABLE = table_from_ids(range(20))
# left/right class pairs: arms, legs, shoes
LIP_FLIP_PAIRS = ((14, 15), (16, 17), (18, 19))


def swap_table(pairs: Sequence[Sequence[int]]) -> np.ndarray:
    """uint8 lookup table of 256 entries exchanging the two ids of every pair (identity elsewhere)."""
    table = np.arange(256, dtype=np.uint8)
    for left, right in pairs:
        table[left], table[right] = right, left
    return table


def scan_lip(root: Path, folder: str) -> SplitScan:
    """LIP's pairs ``<root>/<folder>_images/<name>.jpg`` + ``<root>/<folder>_segmentations/<name>.png``."""
    images, labels = root / f"{folder}_images", root / f"{folder}_segmentations"
    return scan_folders(images, labels, (".jpg", ".jpeg", ".png"), (".png",))


class LeftRightFlip(A.HorizontalFlip):
    """Horizontal flip that also exchanges the class ids of each ``(left, right)`` pair in the mask.

    A mirrored left arm is a right arm: albumentations' ``HorizontalFlip`` moves the pixels but keeps their ids.
    """

    def __init__(self, pairs: Sequence[Sequence[int]] = LIP_FLIP_PAIRS, p: float = 0.5) -> None:
        super().__init__(p=p)
        ids = [int(i) for pair in pairs for i in pair]
        if any(len(pair) != 2 for pair in pairs) or len(set(ids)) != len(ids) or not all(0 <= i < 256 for i in ids):
            raise ValueError(f"pairs must be (left, right) ids in 0..255, each id once, got {pairs}")
        self.pairs = tuple((int(a), int(b)) for a, b in pairs)
        self.table = swap_table(self.pairs)

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        flipped = np.ascontiguousarray(mask[:, ::-1])
        if flipped.dtype == np.uint8:
            return self.table[flipped]
        swapped = flipped.copy()
        for left, right in self.pairs:
            swapped[flipped == left], swapped[flipped == right] = right, left
        return swapped

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("pairs",)


class LIPDataModule(SegDataModule):
    """LIP in the layout ``{train,val}_images/*.jpg`` + ``{train,val}_segmentations/*.png`` (30,462 / 10,000).

    ``root`` holds the four folders. Labels are stored as train ids 0..19 (background is class 0 and counts), 255
    ignore. The training flip swaps left/right parts (``LeftRightFlip``); the test protocol's flip does the same on
    logits (``inference.flip_pairs`` in ``configs/data/lip.yaml``). "test" reads val. Defaults are the paper protocol:
    473x473 crops of images resized to fit (473, 473) times a ratio in [0.5, 2], test images resized to fit
    (473, 473), whole-image inference.
    """

    CLASS_NAMES = (
        "background", "hat", "hair", "glove", "sunglasses", "upper-clothes", "dress", "coat", "socks", "pants",
        "jumpsuits", "scarf", "skirt", "face", "left-arm", "right-arm", "left-leg", "right-leg", "left-shoe",
        "right-shoe",
    )  # fmt: skip
    PALETTE = generated_palette(20)
    SPLIT_SIZES = {"train": 30462, "val": 10000, "test": 10000}
    SPLIT_FOLDERS = {"train": "train", "val": "val", "test": "val"}

    def __init__(
        self,
        root: str | Path,
        crop_size: int | tuple[int, int] = (473, 473),
        scale: tuple[int, int] | None = (473, 473),
        test_scale: tuple[int, int] | None = (473, 473),
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, crop_size=crop_size, scale=scale, test_scale=test_scale, **kwargs)

    def scan_split(self, split: str) -> SplitScan:
        """Pairs ``<folder>_images/<name>.jpg`` with ``<folder>_segmentations/<name>.png``."""
        if split not in self.SPLIT_FOLDERS:
            raise ValueError(f"LIP split must be one of {sorted(self.SPLIT_FOLDERS)}, got {split!r}")
        return scan_lip(self.root, self.SPLIT_FOLDERS[split])


    @staticmethod
    def map_labels(raw: np.ndarray) -> np.ndarray:
        """As stored: 0..19 and 255; anything else -> -1 (undefined)."""
        return map_with_table(raw, LIP_TABLE)

    def flip_transform(self) -> A.BasicTransform | None:
        """``LeftRightFlip`` (left/right parts swapped) in place of the plain horizontal flip."""
        return LeftRightFlip(LIP_FLIP_PAIRS, p=self.flip_prob) if self.flip_prob > 0 else None
