"""COCO+LVIS: 1284 classes on COCO 2017 images, LVIS v1 instances over COCO-Stuff stuff (ESSNet, Jain et al. 2021;
MLSeg's largest image benchmark). Labels are built once by ``segcentroids convert-coco-lvis``."""

from __future__ import annotations

import numpy as np

from segcentroids.data.base import Crop512DataModule, map_with_table
from segcentroids.data.labels import LARGE_IGNORE_INDEX, generated_palette, read_class_names, table_from_ids
from segcentroids.data.layouts import PairedFoldersDataModule

COCO_LVIS_CLASSES = 1284
LVIS_CLASSES = 1203
# COCO-Stuff stuff ids (92..182) whose class LVIS v1 already has, by name (banner, blanket, cabinet, cupboard,
# curtain, napkin, pillow, salad, table, towel); the other 81 get the new ids 1204..1284 in COCO id order, and 183
# ("other") is unlabelled. The same mapping as ESSNet's coco2lvis.pkl.
STUFF_IN_LVIS = {92: 50, 93: 110, 98: 181, 108: 346, 109: 350, 137: 713, 141: 804, 153: 904, 165: 1050, 168: 1108}
COCO_STUFF_IDS = range(92, 183)
COCO_STUFF_OTHER = 183


def stuff_to_coco_lvis() -> dict[int, int]:
    """COCO-Stuff stuff id -> stored COCO+LVIS id (1..1284; 0 = unlabelled for "other")."""
    new = [stuff for stuff in COCO_STUFF_IDS if stuff not in STUFF_IN_LVIS]
    mapping = {stuff: LVIS_CLASSES + 1 + index for index, stuff in enumerate(new)}
    return {**mapping, **STUFF_IN_LVIS, COCO_STUFF_OTHER: 0}


# stored 0 (unlabelled) -> ignore 65535, k -> k - 1 for k in 1..1284
COCO_LVIS_TABLE = table_from_ids(range(1, COCO_LVIS_CLASSES + 1), ignored=(0,), size=2**16,
                                 ignore_index=LARGE_IGNORE_INDEX)


class COCOLVISDataModule(PairedFoldersDataModule, Crop512DataModule):
    """COCO+LVIS (1284 classes) in the layout ``segcentroids convert-coco-lvis`` writes:
    ``images/{train,val}/<name>.jpg`` (links to the COCO 2017 images) and ``annotations/{train,val}/<name>.png``
    (uint16: 0 unlabelled, 1..1203 LVIS v1 category ids, 1204..1284 the COCO-Stuff stuff classes LVIS lacks).

    Loaded as train ids 0..1283 with 0 -> 65535, the package's ignore value for large label sets. "val" and "test"
    both read ``val`` (the paper's 20K test images are LVIS v1 val, COCO val2017). Defaults follow the paper's
    Segmenter setting for COCO-Stuff (512x512 crops, images resized to fit (2048, 512) x [0.5, 2]).
    """

    CLASS_NAMES = read_class_names("coco_lvis.txt")
    PALETTE = generated_palette(COCO_LVIS_CLASSES + 1)[1:]
    SPLIT_FOLDERS = {"train": "train", "val": "val", "test": "val"}
    DATASET_NAME = "COCO+LVIS"

    @staticmethod
    def map_labels(raw: np.ndarray) -> np.ndarray:
        """0 -> 65535 (ignore), k -> k - 1 for k in 1..1284, anything else -> -1 (undefined)."""
        return map_with_table(raw, COCO_LVIS_TABLE)
