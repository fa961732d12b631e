"""Label lookup tables, the ignore values and palettes shared by the datasets' DataModules.

The ignore value: 255 for label sets of at most 255 classes (uint8 label maps, the convention of every dataset with
<= 255 classes), 65535 for larger ones (uint16 label maps, up to 65535 classes: ADE20K-Full's 847, COCO+LVIS's 1284).
Either is at least K, so it is never a class id; ``ignore_index_for(K)`` chooses it, the DataModule reports it, the
CLI links it into the model, and each dataset maps its own stored convention to it on load.

A table is indexed by the stored label value (256 entries for 8-bit labels); entries are train ids ``0..K-1``, the
ignore value, or -1 for stored values the dataset does not define (reported as errors by the loaders and by
``segcentroids.data.check``).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources

import numpy as np

IGNORE_INDEX = 255  # the ignore value of label sets of at most 255 classes (uint8 label maps)
LARGE_IGNORE_INDEX = 65535  # the ignore value of larger label sets (uint16 label maps)
UNDEFINED = -1


def ignore_index_for(num_classes: int) -> int:
    """The package's ignore value for K classes: 255 up to 255 classes, else 65535 (up to 65535 classes)."""
    if not 0 < num_classes <= LARGE_IGNORE_INDEX:
        raise ValueError(f"num_classes must be in 1..{LARGE_IGNORE_INDEX}, got {num_classes}")
    return IGNORE_INDEX if num_classes <= IGNORE_INDEX else LARGE_IGNORE_INDEX


def label_dtype(ignore_index: int) -> type[np.unsignedinteger]:
    """The dtype of train-id label maps: uint8 with ignore 255, uint16 with ignore 65535."""
    return np.uint8 if ignore_index <= IGNORE_INDEX else np.uint16


def table_from_ids(class_ids: Iterable[int], ignored: Iterable[int] = (IGNORE_INDEX,), size: int = 256,
                   ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Table mapping the i-th stored value of ``class_ids`` to train id i, ``ignored`` values to ``ignore_index``,
    others to -1."""
    table = np.full(size, UNDEFINED, dtype=np.int32)
    for value in ignored:
        table[value] = ignore_index
    for train_id, value in enumerate(class_ids):
        table[value] = train_id
    return table


def reduce_zero_table(num_classes: int) -> np.ndarray:
    """mmsegmentation's ``reduce_zero_label``: 0 -> 255, k -> k-1 for k in 1..K, stored 255 stays ignore."""
    return table_from_ids(range(1, num_classes + 1), ignored=(0, IGNORE_INDEX))


def generated_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct RGB colours by the PASCAL VOC bit-interleaving rule (class 0 is black)."""
    colours = []
    for index in range(num_classes):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= ((value >> 0) & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((red, green, blue))
    return tuple(colours)


def read_class_names(file_name: str) -> tuple[str, ...]:
    """Class names, one per line in train-id order, from ``segcentroids/data/class_names/<file_name>`` (lines
    starting with ``#`` are comments)."""
    text = resources.files("segcentroids.data").joinpath("class_names", file_name).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line and not line.startswith("#"))
