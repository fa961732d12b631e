"""COCO-Stuff 10k and 164k with 171 contiguous classes (the 11 unused COCO thing ids removed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from segcentroids.data.base import Crop512DataModule, map_with_table, read_label
from segcentroids.data.labels import generated_palette, table_from_ids
from segcentroids.data.layouts import SplitScan, scan_folders, scan_list

# 0-based ids of the stuffthingmaps (0..181): the 11 thing ids COCO never used.
COCO_UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_USED_IDS = tuple(i for i in range(182) if i not in COCO_UNUSED_IDS)
# stuffthingmaps (164k): used ids -> 0..170; unused ids and 255 (unlabelled) -> 255; 182..254 -> -1.
COCO_STUFF164K_TABLE = table_from_ids(COCO_USED_IDS, ignored=(*COCO_UNUSED_IDS, 255))
# COCO-Stuff-10k ``.mat`` field S: 0 unlabelled, 1..182 the 1-based COCO ids (the unused ones ignored).
COCO_STUFF10K_MAT_TABLE = table_from_ids(
    [i + 1 for i in COCO_USED_IDS], ignored=(0, *(i + 1 for i in COCO_UNUSED_IDS))
)
# converted 10k ``*_labelTrainIds.png`` (mmsegmentation's converter): 0 unlabelled, 1..171; 255 ignore.
COCO_STUFF10K_PNG_TABLE = table_from_ids(range(1, 172), ignored=(0, 255))
# converted 164k ``*_labelTrainIds.png``: 0..170, 255 ignore.
COCO_STUFF164K_TRAIN_ID_TABLE = table_from_ids(range(171))
TRAIN_IDS_SUFFIX = "_labelTrainIds.png"

COCO_STUFF_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge", "building-other",
    "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes",
    "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat",
    "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow",
    "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock",
    "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other",
    "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree",
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip
COCO_STUFF_PALETTE = generated_palette(172)[1:]


def read_mat_label(path: Path) -> np.ndarray:
    """Field ``S`` of a COCO-Stuff-10k ``.mat`` annotation; raises ``OSError`` naming the file."""
    try:
        data = scipy.io.loadmat(str(path), variable_names=["S"])
    except Exception as error:  # scipy raises MatReadError, ValueError, IndexError... on a corrupt file
        raise OSError(f"cannot read label file {path} as a MATLAB file: {error}") from error
    if "S" not in data:
        raise OSError(f"label file {path} has no field 'S'")
    label = np.asarray(data["S"])
    if label.ndim != 2:
        raise ValueError(f"label file {path} field S has shape {label.shape}; expected [H, W]")
    return label


class COCOStuff10kDataModule(Crop512DataModule):
    """COCO-Stuff-10k (9,000 train / 1,000 test): ``.mat`` annotations read directly, or converted PNGs.

    ``root`` holds ``images/``, ``annotations/`` and ``imageLists/{train,test}.txt``. Images are
    ``images/{train2014,test2014}/<name>.jpg`` (mmsegmentation's converted layout) or ``images/<name>.jpg`` (the
    original release); a label is, in this order, ``annotations/<folder>/<name>_labelTrainIds.png``,
    ``annotations/<folder>/<name>.mat`` or ``annotations/<name>.mat``. "val" and "test" read the test list. Without
    ``imageLists``, the pairs are those of ``images/<folder>`` and ``annotations/<folder>``.
    Defaults are the paper protocol: 512x512 crops of images resized to fit (2048, 512) times a ratio in [0.5, 2],
    test images resized to fit (2048, 512), whole-image inference.
    """

    CLASS_NAMES = COCO_STUFF_CLASS_NAMES
    PALETTE = COCO_STUFF_PALETTE
    SPLIT_SIZES = {"train": 9000, "val": 1000, "test": 1000}
    SERVER_IDS = tuple(i + 1 for i in COCO_USED_IDS)  # the 1-based COCO ids of the ``.mat`` field S
    SPLITS = {"train": ("train", "train2014"), "val": ("test", "test2014"), "test": ("test", "test2014")}

    def scan_split(self, split: str) -> SplitScan:
        """Pairs for the names of ``imageLists/<list>.txt``."""
        if split not in self.SPLITS:
            raise ValueError(f"COCO-Stuff-10k split must be one of {sorted(self.SPLITS)}, got {split!r}")
        list_name, folder = self.SPLITS[split]
        images, annotations = self.root / "images", self.root / "annotations"
        list_file = self.root / "imageLists" / f"{list_name}.txt"
        if not list_file.is_file() and (images / folder).is_dir():
            return scan_folders(images / folder, annotations / folder, (".jpg", ".jpeg"), (TRAIN_IDS_SUFFIX, ".mat"))
        return scan_list(
            list_file,
            lambda name: [images / folder / f"{name}.jpg", images / f"{name}.jpg"],
            lambda name: [
                annotations / folder / f"{name}{TRAIN_IDS_SUFFIX}",
                annotations / folder / f"{name}.mat",
                annotations / f"{name}.mat",
            ],
        )


    @staticmethod
    def map_labels(raw: np.ndarray) -> np.ndarray:
        """``.mat`` field S -> train ids: 0 -> 255, the 171 used COCO ids (1-based) -> 0..170, the 11 unused -> 255,
        anything above 182 -> -1."""
        return map_with_table(raw, COCO_STUFF10K_MAT_TABLE)

    @staticmethod
    def map_converted(raw: np.ndarray) -> np.ndarray:
        """Converted ``_labelTrainIds.png`` (0 unlabelled, 1..171) -> 0 -> 255, k -> k-1; 255 stays ignore."""
        return map_with_table(raw, COCO_STUFF10K_PNG_TABLE)

    @staticmethod
    def load_label(path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(stored label, train ids) of a ``.mat`` file (field S) or a converted PNG."""
        if path.suffix.lower() == ".mat":
            raw = read_mat_label(path)
            return raw, COCOStuff10kDataModule.map_labels(raw)
        raw = read_label(path)
        return raw, COCOStuff10kDataModule.map_converted(raw)


class COCOStuff164kDataModule(Crop512DataModule):
    """COCO-Stuff-164k (118,287 train / 5,000 val) with the stuffthingmaps PNGs.

    ``root`` holds ``images/{train2017,val2017}/*.jpg`` and ``annotations/{train2017,val2017}/*.png``: the
    stuffthingmaps (0-based ids 0..181, 255 unlabelled), mapped on load by removing the 11 unused thing ids; a
    ``<name>_labelTrainIds.png`` written by mmsegmentation's converter (0..170, 255) is used instead when present.
    "test" reads val2017. Defaults as for COCO-Stuff-10k.
    """

    CLASS_NAMES = COCO_STUFF_CLASS_NAMES
    PALETTE = COCO_STUFF_PALETTE
    SPLIT_SIZES = {"train": 118287, "val": 5000, "test": 5000}
    SERVER_IDS = COCO_USED_IDS  # the stuffthingmaps ids (COCO id - 1)
    SPLIT_FOLDERS = {"train": "train2017", "val": "val2017", "test": "val2017"}

    def scan_split(self, split: str) -> SplitScan:
        """Pairs ``images/<folder>/<name>.jpg`` with ``annotations/<folder>/<name>[_labelTrainIds].png``."""
        if split not in self.SPLIT_FOLDERS:
            raise ValueError(f"COCO-Stuff-164k split must be one of {sorted(self.SPLIT_FOLDERS)}, got {split!r}")
        folder = self.SPLIT_FOLDERS[split]
        return scan_folders(
            self.root / "images" / folder,
            self.root / "annotations" / folder,
            (".jpg", ".jpeg"),
            (TRAIN_IDS_SUFFIX, ".png"),
        )


    @staticmethod
    def map_labels(raw: np.ndarray) -> np.ndarray:
        """stuffthingmaps -> train ids: the 171 used ids -> 0..170; the 11 unused ids and 255 -> 255; 182..254 -> -1."""
        return map_with_table(raw, COCO_STUFF164K_TABLE)

    @staticmethod
    def map_converted(raw: np.ndarray) -> np.ndarray:
        """Converted ``_labelTrainIds.png``: 0..170 and 255 as stored; anything else -> -1."""
        return map_with_table(raw, COCO_STUFF164K_TRAIN_ID_TABLE)

    @staticmethod
    def load_label(path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(stored label, train ids) of a stuffthingmap or a converted ``_labelTrainIds.png``."""
        raw = read_label(path)
        if path.name.endswith(TRAIN_IDS_SUFFIX):
            return raw, COCOStuff164kDataModule.map_converted(raw)
        return raw, COCOStuff164kDataModule.map_labels(raw)
