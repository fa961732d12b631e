"""ADE20K (SceneParsing / ADEChallengeData2016): 150 classes, stored 0 ("other") is ignored."""

from __future__ import annotations

import numpy as np

from segcentroids.data.base import Crop512DataModule, map_with_table
from segcentroids.data.labels import generated_palette, reduce_zero_table
from segcentroids.data.layouts import PairedFoldersDataModule

ADE20K_TABLE = reduce_zero_table(150)


class ADE20KDataModule(PairedFoldersDataModule, Crop512DataModule):
    """ADE20K in mmsegmentation's layout ``ADEChallengeData2016/{images,annotations}/{training,validation}/``.

    ``root`` is the ``ADEChallengeData2016`` folder (or the folder holding it). Labels are PNGs with 0..150: 0 is
    "other" and is ignored, k -> k-1 (mmsegmentation's ``reduce_zero_label``). "val" and "test" both read
    ``validation``. Defaults are the paper protocol: 512x512 crops of images resized to fit (2048, 512) times a ratio
    in [0.5, 2], test images resized to short side 512 (whole-image inference). ``predict`` writes the server's ids
    (train id + 1) in ``server/``.
    """

    CLASS_NAMES = (
        "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
        "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
        "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
        "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
        "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
        "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
        "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
        "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
        "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
        "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
        "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
        "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
        "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
        "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
        "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
        "bulletin board", "shower", "radiator", "glass", "clock", "flag",
    )  # fmt: skip
    PALETTE = generated_palette(151)[1:]
    SPLIT_SIZES = {"train": 20210, "val": 2000, "test": 2000}
    SERVER_IDS = tuple(range(1, 151))  # the SceneParsing server reads 1..150 (0 = other)
    SPLIT_FOLDERS = {"train": "training", "val": "validation", "test": "validation"}
    DATASET_NAME, NESTED_DIR = "ADE20K", "ADEChallengeData2016"

    @staticmethod
    def map_labels(raw: np.ndarray) -> np.ndarray:
        """0 -> 255, k -> k-1 for k in 1..150, 255 stays ignore, anything else -> -1 (undefined)."""
        return map_with_table(raw, ADE20K_TABLE)
