"""Label lookup tables and palettes shared by the datasets' DataModules.

A table has 256 entries indexed by the stored label value; entries are train ids ``0..K-1``, ``IGNORE_INDEX`` (255)
for ignored pixels, or -1 for stored values the dataset does not define (reported as errors by the loaders and by
``segcentroids.data.check``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

IGNORE_INDEX = 255  # the one ignore value of the package's uint8 label maps
UNDEFINED = -1


def table_from_ids(class_ids: Iterable[int], ignored: Iterable[int] = (IGNORE_INDEX,), size: int = 256) -> np.ndarray:
    """Table mapping the i-th stored value of ``class_ids`` to train id i, ``ignored`` values to 255, others to -1."""
    table = np.full(size, UNDEFINED, dtype=np.int16)
    for value in ignored:
        table[value] = IGNORE_INDEX
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
