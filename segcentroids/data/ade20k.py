"""ADE20K (SceneParsing / ADEChallengeData2016): 150 classes, stored 0 ("other") is ignored."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from segcentroids.data.base import Crop512DataModule, map_with_table
from segcentroids.data.labels import generated_palette, reduce_zero_table
from segcentroids.data.layouts import PairedFoldersDataModule, SplitScan

ADE20K_TABLE = reduce_zero_table(150)
SPLIT_PROTOCOLS = ("official", "train16k_val4k")
TRAIN_IMAGES, HELD_OUT_IMAGES = 20210, 4000  # ADE20K's training split and the part Specialize-and-Fuse held out


def held_out_count(total: int) -> int:
    """How many of ``total`` training images the 16k/4k protocol holds out: ``round(total * 4000 / 20210)`` (exactly
    4,000 of ADE20K's 20,210), at least 1 and at most ``total - 1`` so that both parts are non-empty."""
    if total < 2:
        raise ValueError(f"split_protocol='train16k_val4k' needs at least 2 training images, found {total}")
    return min(max(round(total * HELD_OUT_IMAGES / TRAIN_IMAGES), 1), total - 1)


def held_out_names(names: list[str], seed: int) -> set[str]:
    """The names the 16k/4k protocol holds out: the ``held_out_count`` names with the smallest
    ``sha256(f"{seed}:{name}")`` (ties, impossible in practice, by name). SHA-256 of the name and the seed gives the
    same split on every machine and Python version, whatever order the files were listed in."""
    if len(set(names)) != len(names):
        raise ValueError("split_protocol='train16k_val4k' needs distinct image names")
    ranked = sorted(names, key=lambda name: (hashlib.sha256(f"{seed}:{name}".encode()).hexdigest(), name))
    return set(ranked[: held_out_count(len(names))])


class ADE20KDataModule(PairedFoldersDataModule, Crop512DataModule):
    """ADE20K in mmsegmentation's layout ``ADEChallengeData2016/{images,annotations}/{training,validation}/``.

    ``root`` is the ``ADEChallengeData2016`` folder (or the folder holding it). Labels are PNGs with 0..150: 0 is
    "other" and is ignored, k -> k-1 (mmsegmentation's ``reduce_zero_label``). "val" and "test" both read
    ``validation``. Defaults are the paper protocol: 512x512 crops of images resized to fit (2048, 512) times a ratio
    in [0.5, 2], test images resized to short side 512 (whole-image inference). ``predict`` writes the server's ids
    (train id + 1) in ``server/``.

    ``split_protocol="train16k_val4k"`` is the ablation split of Specialize and Fuse (Sec. 5.4: "we subsample
    ADE20K's original training split into 16K/4K for training and validation"): ``validation`` is not read; 4,000 of
    the 20,210 training images (``held_out_names`` with ``split_seed``) are "val" and "test", the other 16,210 are
    "train". A training folder of another size holds out ``round(n * 4000 / 20210)`` images.
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

    def __init__(self, root: str | Path, split_protocol: str = "official", split_seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        if split_protocol not in SPLIT_PROTOCOLS:
            raise ValueError(f"split_protocol must be one of {list(SPLIT_PROTOCOLS)}, got {split_protocol!r}")
        self.split_protocol = split_protocol
        self.split_seed = split_seed
        if split_protocol == "train16k_val4k":  # the published sizes the dataset checker expects
            held_out = held_out_count(TRAIN_IMAGES)
            self.SPLIT_SIZES = {"train": TRAIN_IMAGES - held_out, "val": held_out, "test": held_out}

    def scan_split(self, split: str) -> SplitScan:
        """The official folders, or with ``split_protocol="train16k_val4k"`` the training folder's pairs cut in two:
        the held-out names for "val"/"test", the rest for "train" (unpaired training files reported in both)."""
        if self.split_protocol == "official":
            return super().scan_split(split)
        if split not in self.SPLIT_FOLDERS:
            raise ValueError(f"{self.DATASET_NAME} split must be one of {sorted(self.SPLIT_FOLDERS)}, got {split!r}")
        scan = super().scan_split("train")
        held_out = held_out_names([image.stem for image, _ in scan.pairs], self.split_seed) if scan.pairs else set()
        keep = (lambda name: name not in held_out) if split == "train" else (lambda name: name in held_out)
        scan.pairs = [pair for pair in scan.pairs if keep(pair[0].stem)]
        scan.where += f" ({split} part of split_protocol='train16k_val4k', split_seed={self.split_seed})"
        return scan

    @staticmethod
    def map_labels(raw: np.ndarray) -> np.ndarray:
        """0 -> 255, k -> k-1 for k in 1..150, 255 stays ignore, anything else -> -1 (undefined)."""
        return map_with_table(raw, ADE20K_TABLE)
