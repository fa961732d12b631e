"""ADE20K-Full: the 847-class semantic labels of the ADE20K 2021 release, 16-bit, 65535 ignored."""

from __future__ import annotations

import numpy as np

from segcentroids.data.ade20k import ADE20KDataModule
from segcentroids.data.base import Crop512DataModule, map_with_table
from segcentroids.data.labels import LARGE_IGNORE_INDEX, generated_palette, read_class_names, table_from_ids
from segcentroids.data.layouts import PairedFoldersDataModule

ADE20K_FULL_CLASSES = 847
ADE20K_FULL_TABLE = table_from_ids(range(ADE20K_FULL_CLASSES), ignored=(LARGE_IGNORE_INDEX,), size=2**16,
                                   ignore_index=LARGE_IGNORE_INDEX)


class ADE20KFullDataModule(PairedFoldersDataModule, Crop512DataModule):
    """ADE20K-Full (847 classes) in the layout MaskFormer's ``prepare_ade20k_full_sem_seg.py`` writes:
    ``ADE20K_2021_17_01/images_detectron2/{training,validation}/*.jpg`` and
    ``ADE20K_2021_17_01/annotations_detectron2/{training,validation}/*.tif``.

    ``root`` is the ``ADE20K_2021_17_01`` folder (or the folder holding it). Labels are single-channel uint16 TIFFs
    holding the train ids 0..846 and 65535 for unlabelled pixels, which is the package's ignore value for label sets
    over 255 classes, so they load as stored. "val" and "test" both read ``validation``. Defaults are ADE20K's
    protocol (512x512 crops of images resized to fit (2048, 512) times a ratio in [0.5, 2]; test images resized to
    short side 512, ADE20K's arguments). Class names are MaskFormer's list (``class_names/ade20k_full.txt``).
    ADE20K's 16k/4k re-split (``ADE20KDataModule.split_protocol``) is ADE20K's own and is not offered here.
    """

    CLASS_NAMES = read_class_names("ade20k_full.txt")
    PALETTE = generated_palette(ADE20K_FULL_CLASSES + 1)[1:]
    SPLIT_SIZES = {"train": 25574, "val": 2000, "test": 2000}
    SPLIT_FOLDERS = ADE20KDataModule.SPLIT_FOLDERS
    DATASET_NAME, NESTED_DIR = "ADE20K-Full", "ADE20K_2021_17_01"
    IMAGE_DIR, LABEL_DIR, LABEL_SUFFIXES = "images_detectron2", "annotations_detectron2", (".tif", ".tiff")

    @staticmethod
    def map_labels(raw: np.ndarray) -> np.ndarray:
        """Train ids 0..846 and 65535 (ignore) as stored; anything else -> -1 (undefined)."""
        return map_with_table(raw, ADE20K_FULL_TABLE)
