"""Datasets and the ``SegDataModule`` base every dataset's DataModule subclasses.

A subclass gives ``CLASS_NAMES``, ``PALETTE``, ``list_split(split)`` (the ``(image, label)`` file pairs of a split)
and a static ``map_labels(raw)`` (stored label values -> train ids ``0..K-1``, ``ignore_index`` for ignored pixels;
any other value, e.g. -1, marks a stored value the dataset does not define). Everything else is shared: the file
checks, loading, the pipelines and the loaders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import albumentations as A
import cv2
import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from segcentroids.data.labels import IGNORE_INDEX, LARGE_IGNORE_INDEX, ignore_index_for, label_dtype
from segcentroids.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_test_transform, build_train_transform

if TYPE_CHECKING:  # layouts builds on this module
    from segcentroids.data.layouts import SplitScan

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
READ_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10 decodes straight to RGB

LabelMapping = Callable[[np.ndarray], np.ndarray]
LabelLoader = Callable[[Path], tuple[np.ndarray, np.ndarray]]
FilePair = tuple[Path, Path]


def short_list(items: Sequence[Any], limit: int = 10) -> str:
    """``items`` joined by commas, cut after ``limit`` with a count of the rest."""
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def map_with_table(raw: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[raw]`` for integer labels of any dtype; values outside the table map to -1 (undefined)."""
    if raw.dtype == np.uint8 and len(table) >= 256:
        return np.take(table, raw)
    mapped = np.full(raw.shape, -1, dtype=table.dtype)
    inside = (raw >= 0) & (raw < len(table))
    mapped[inside] = table[raw[inside]]
    return mapped


def read_image(path: Path) -> np.ndarray:
    """An image file as uint8 RGB ``[H, W, 3]``; raises ``OSError`` naming the file when it cannot be read."""
    if READ_RGB is not None:
        image = cv2.imread(str(path), READ_RGB)
    else:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        image = None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image is None:
        raise OSError(f"cannot read image file {path} (missing, not an image, or corrupt)")
    return image


def read_label(path: Path) -> np.ndarray:
    """A label map as stored (``cv2.IMREAD_UNCHANGED``), single channel ``[H, W]``; raises naming the file."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise OSError(f"cannot read label file {path} (missing, not an image, or corrupt)")
    if label.ndim != 2:
        raise ValueError(f"label file {path} has shape {label.shape}; expected a single-channel label map [H, W]")
    return label


def verify_image(path: Path) -> tuple[int, int]:
    """The ``(H, W)`` of an image file checked without decoding it (header and, for PNG, every chunk's checksum, so
    a truncated file fails); raises ``OSError`` naming the file."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            image.verify()
    except (OSError, SyntaxError, ValueError) as error:
        raise OSError(f"cannot read image file {path} ({error})") from None
    return height, width


def label_reader(map_labels: LabelMapping, load_label: LabelLoader | None = None) -> LabelLoader:
    """``path -> (stored label, train ids)``: ``load_label`` when the dataset has one (e.g. .mat files or per-file
    rules), else ``read_label`` then ``map_labels``."""
    if load_label is not None:
        return load_label

    def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        raw = read_label(path)
        return raw, map_labels(raw)

    return read


def undefined_pixels(label: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """Mask of the pixels whose mapped value is neither one of the ``num_classes`` classes nor ``ignore_index``."""
    return (label < 0) | ((label >= num_classes) & (label != ignore_index))


@dataclass
class LoadedPair:
    """One image/label pair read and validated by ``load_pair``: what could be read, and one error (naming the file)
    per problem found, in the order ``raise_first`` raises them."""

    image_path: Path
    label_path: Path
    image: np.ndarray | None = None  # uint8 RGB [H, W, 3] when decoded
    image_size: tuple[int, int] | None = None  # (H, W)
    raw: np.ndarray | None = None  # the label as stored [H, W]
    label: np.ndarray | None = None  # train ids as mapped (-1: undefined) [H, W]
    undefined: np.ndarray | None = None  # mask of the pixels whose value is neither a class nor ignore
    image_error: Exception | None = None  # image file unreadable
    label_error: Exception | None = None  # label file unreadable or not a single-channel map
    size_error: ValueError | None = None  # image and label sizes differ
    value_error: ValueError | None = None  # label values neither a class nor ignore

    @property
    def errors(self) -> list[Exception]:
        found = (self.image_error, self.label_error, self.size_error, self.value_error)
        return [error for error in found if error is not None]

    def raise_first(self) -> None:
        """Raise the first problem found (unreadable image, unreadable label, size mismatch, label values)."""
        if self.errors:
            raise self.errors[0]


def load_pair(
    image_path: Path,
    label_path: Path,
    read_labels: LabelLoader,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    decode: bool = True,
) -> LoadedPair:
    """Read an image and its label and validate them: readable files, equal sizes, label values that map to a class
    or ignore. Problems are recorded, not raised (``LoadedPair.raise_first``). ``decode=False`` only verifies the
    image file (``verify_image``); ``read_labels`` is a ``label_reader``."""
    pair = LoadedPair(image_path, label_path)
    try:
        if decode:
            pair.image = read_image(image_path)
            pair.image_size = pair.image.shape[:2]
        else:
            pair.image_size = verify_image(image_path)
    except (OSError, ValueError) as error:
        pair.image_error = error
    try:
        pair.raw, pair.label = read_labels(label_path)
    except (OSError, ValueError) as error:
        pair.label_error = error
        return pair
    raw, label = pair.raw, pair.label
    if pair.image_size is not None and tuple(pair.image_size) != raw.shape:
        pair.size_error = ValueError(
            f"image {image_path} is {pair.image_size[0]}x{pair.image_size[1]} (HxW) but its label {label_path} is "
            f"{raw.shape[0]}x{raw.shape[1]}"
        )
    pair.undefined = undefined_pixels(label, num_classes, ignore_index)
    if pair.undefined.any():
        pair.value_error = ValueError(
            f"label file {label_path} holds values {np.unique(raw[pair.undefined]).tolist()} that are neither one of "
            f"the {num_classes} classes nor ignore ({ignore_index}) after mapping "
            f"(mapped to {np.unique(label[pair.undefined]).tolist()})"
        )
    return pair


class SegDataset(Dataset):
    """``(image, label)`` file pairs -> ``{"image": float32 [3,H,W], "mask": int64 [H,W], "name": str}``.

    ``transform`` is called as ``transform(image=..., mask=...)``; with ``transform_mask=False`` it sees the image
    only and the mask keeps its stored size (evaluation at the label's resolution). Every item is checked: readable
    files, equal image and label sizes, label values that map to a class or ignore; errors name the file.
    """

    def __init__(
        self,
        pairs: Sequence[FilePair],
        map_labels: LabelMapping,
        num_classes: int,
        transform: A.Compose,
        transform_mask: bool = True,
        ignore_index: int = IGNORE_INDEX,
        load_label: LabelLoader | None = None,
    ) -> None:
        if not 0 < num_classes <= ignore_index <= LARGE_IGNORE_INDEX:
            raise ValueError(f"need 0 < num_classes <= ignore_index <= {LARGE_IGNORE_INDEX}, got {num_classes} and "
                             f"{ignore_index}")
        self.pairs = list(pairs)
        self.num_classes = num_classes
        self.transform = transform
        self.transform_mask = transform_mask
        self.ignore_index = ignore_index
        self.read_labels = label_reader(map_labels, load_label)

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int, decode: bool = True) -> LoadedPair:
        """Pair ``index`` read and validated (``load_pair``); problems recorded, not raised."""
        image_path, label_path = self.pairs[index]
        return load_pair(image_path, label_path, self.read_labels, self.num_classes, self.ignore_index, decode)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The checked pair: uint8 RGB image ``[H, W, 3]`` and train-id label ``[H, W]`` (uint8, or uint16 for the
        large label sets' ignore 65535)."""
        pair = self.read(index)
        pair.raise_first()
        return pair.image, pair.label.astype(label_dtype(self.ignore_index), copy=False)

    def verify(self, index: int) -> None:
        """`load`'s checks without decoding the image: the label is read and checked, the image file only
        verified (header and, for PNG, every chunk's checksum, so a truncated file fails)."""
        self.read(index, decode=False).raise_first()

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = apply_transform(self.transform, self.transform_mask, *self.load(index))
        return {"image": image, "mask": mask, "name": self.pairs[index][0].stem}


def apply_transform(transform: Callable, transform_mask: bool, image: np.ndarray, label: np.ndarray
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(image tensor, int64 mask tensor) of one item: the label goes through `transform` with the image when
    `transform_mask` is set (training crops and flips), else it is kept at its size on disk."""
    if transform_mask:
        out = transform(image=image, mask=label)
        return out["image"], out["mask"].long()
    return transform(image=image)["image"], torch.from_numpy(label).long()


class ImageFolderDataset(Dataset):
    """Images to predict: ``{"image": float32 [3,H,W], "name": str, "path": str, "orig_size": int64 [2] (H, W on
    disk)}``."""

    def __init__(self, paths: Sequence[Path], transform: A.Compose) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = read_image(self.paths[index])
        return {
            "image": self.transform(image=image)["image"],
            "name": self.paths[index].stem,
            "path": str(self.paths[index]),
            "orig_size": torch.tensor(image.shape[:2]),
        }


def init_loader_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: single-threaded OpenCV, and the albumentations pipeline reseeded per worker.

    Albumentations keeps its own random state, which forked workers would otherwise share (the same augmentations in
    every worker and every epoch); torch gives each worker a seed that differs per worker and per epoch and follows
    ``seed_everything``. OpenCV's own thread pool in every worker would oversubscribe the cores.
    """
    cv2.setNumThreads(0)
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if transform is not None:
        transform.set_random_seed(torch.initial_seed() % 2**32)


class SegDataModule(L.LightningDataModule):
    """Shared DataModule: file checks, the mmsegmentation-style pipelines, and train/val/test/predict loaders.

    Args:
        root: dataset root folder (the dataset's usual layout, see the subclass).
        batch_size: training batch size (per process).
        val_batch_size: validation/test/predict batch size (1 when image sizes differ).
        num_workers: loader worker processes; ``persistent_workers`` only applies when it is above 0.
        crop_size: training crop ``(height, width)`` (an int for a square); crops are padded to exactly this size.
        scale: training resize scale ``(long, short)``, multiplied by a ratio from ``ratio_range``; ``None`` resizes
            the image's own size by that ratio.
        cat_max_ratio: crops are redrawn (up to 10 times) while one class covers this share of the labelled pixels.
        flip_prob: horizontal-flip probability; ``photometric``: brightness/contrast/saturation/hue distortion.
        test_scale: keep-ratio resize ``(long, short)`` of evaluation images (``None``: as stored); labels stay as
            stored, so predictions are resized back to the label size for the metric.
        predict_dir: folder of images for ``predict``.
        check_files: read every file of the splits a command uses in ``setup`` (readable, sizes match, label values
            valid) so bad input fails before training rather than in the middle of an epoch. Off, a fit still
            verifies the val split (labels read, images verified without decoding).
        mean, std: per-channel normalisation of the images, as fractions of 255. ``None``: the encoder's (the
            ``segcentroids`` command fills them in from ``model.init_args.segmodel``'s ``encoder_name``: 0.5 / 0.5
            for EfficientNet-Lite, ImageNet's for ResNets), or ImageNet's outside the command.
    """

    CLASS_NAMES: tuple[str, ...] = ()
    PALETTE: tuple[tuple[int, int, int], ...] = ()
    # optional static hook ``path -> (stored label, train ids)`` replacing ``read_label`` + ``map_labels``
    load_label: LabelLoader | None = None
    # published number of image/label pairs per split (checked by ``segcentroids check-data``); empty: unknown
    SPLIT_SIZES: dict[str, int] = {}
    # the id the dataset's own label files (and its evaluation server) use for train id k; empty: the train ids
    SERVER_IDS: tuple[int, ...] = ()

    def __init__(
        self,
        root: str | Path | None = None,
        batch_size: int = 8,
        val_batch_size: int = 1,
        num_workers: int = 2,
        persistent_workers: bool = True,
        pin_memory: bool = False,
        crop_size: int | tuple[int, int] = (512, 512),
        scale: tuple[int, int] | None = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        test_scale: tuple[int, int] | None = None,
        predict_dir: str | Path | None = None,
        check_files: bool = False,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
    ) -> None:
        super().__init__()
        self.root = None if root is None else Path(root)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers and num_workers > 0
        self.pin_memory = pin_memory
        self.crop_size = crop_size
        self.scale = scale
        self.ratio_range = ratio_range
        self.cat_max_ratio = cat_max_ratio
        self.flip_prob = flip_prob
        self.photometric = photometric
        self.test_scale = test_scale
        self.predict_dir = None if predict_dir is None else Path(predict_dir)
        self.check_files = check_files
        self.mean = tuple(IMAGENET_MEAN if mean is None else mean)
        self.std = tuple(IMAGENET_STD if std is None else std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got mean={mean}, std={std}")
        self.datasets: dict[str, Dataset] = {}

    @property
    def class_names(self) -> list[str]:
        """Class names in train-id order."""
        return list(self.CLASS_NAMES)

    @property
    def num_classes(self) -> int:
        """Number of classes K (train ids ``0..K-1``)."""
        return len(self.class_names)

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        """One RGB colour per class, for colourised predictions."""
        return [tuple(colour) for colour in self.PALETTE]

    @property
    def ignore_index(self) -> int:
        """Label value of ignored pixels: 255 up to 255 classes, 65535 above (``labels.ignore_index_for``)."""
        return ignore_index_for(self.num_classes)

    def server_ids(self, train_ids: np.ndarray) -> np.ndarray:
        """Predicted train ids in the ids of the dataset's label files, as its test server expects them
        (``SERVER_IDS``; the train ids where it is empty). ``map_labels`` maps them back."""
        if not self.SERVER_IDS:
            return train_ids
        table = np.asarray(self.SERVER_IDS, dtype=np.uint8 if max(self.SERVER_IDS) < 256 else np.uint16)
        return table[train_ids]

    def list_split(self, split: str) -> list[FilePair]:
        """The ``(image_path, label_path)`` pairs of ``split`` ("train", "val" or "test"), raising naming every
        unpaired or missing file: ``scan_split(split).checked()``."""
        return self.scan_split(split).checked()

    def scan_split(self, split: str) -> SplitScan:
        """What ``split``'s folders or list files hold, unpaired files included (``segcentroids.data.layouts``'s
        ``scan_folders`` or ``scan_list``); a subclass implements this, or ``list_split`` for pairs of its own."""
        raise NotImplementedError(f"{type(self).__name__} implements neither scan_split nor list_split")

    @staticmethod
    def map_labels(raw: np.ndarray) -> np.ndarray:
        """Stored label values -> train ids (``0..K-1``, ``ignore_index`` ignore, anything else undefined);
        subclasses implement."""
        raise NotImplementedError("map_labels is implemented by each dataset's DataModule")

    def train_transform(self) -> A.Compose:
        """The training pipeline built from this DataModule's arguments."""
        transform = build_train_transform(
            self.crop_size,
            self.scale,
            ratio_range=self.ratio_range,
            cat_max_ratio=self.cat_max_ratio,
            flip_prob=self.flip_prob,
            photometric=self.photometric,
            ignore_index=self.ignore_index,
            flip=self.flip_transform(),
            mean=self.mean,
            std=self.std,
        )
        transform.set_random_seed(torch.initial_seed() % 2**32)
        return transform

    def flip_transform(self) -> A.BasicTransform | None:
        """The training flip; ``None`` means albumentations' ``HorizontalFlip(p=flip_prob)`` (LIP swaps classes)."""
        return None

    def test_transform(self) -> A.Compose:
        """The evaluation/predict pipeline (image only)."""
        return build_test_transform(self.test_scale, self.mean, self.std)

    def build_dataset(self, split: str) -> Dataset:
        """The dataset of ``split``: training pipeline for "train", evaluation pipeline otherwise."""
        if self.root is None:
            raise ValueError(f"{type(self).__name__} needs root, the dataset folder")
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root {self.root} does not exist or is not a folder")
        training = split == "train"
        dataset = SegDataset(
            self.list_split(split),
            self.map_labels,
            self.num_classes,
            self.train_transform() if training else self.test_transform(),
            transform_mask=training,
            ignore_index=self.ignore_index,
            load_label=self.load_label,
        )
        return dataset

    def build_predict_dataset(self) -> Dataset:
        """The images of ``predict_dir`` (sorted by name), with the evaluation pipeline."""
        if self.predict_dir is None:
            raise ValueError(f"{type(self).__name__}.predict needs predict_dir, a folder of images")
        if not self.predict_dir.is_dir():
            raise FileNotFoundError(f"predict_dir {self.predict_dir} does not exist or is not a folder")
        paths = sorted(p for p in self.predict_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise FileNotFoundError(f"no images ({'/'.join(IMAGE_SUFFIXES)}) in predict_dir {self.predict_dir}")
        return ImageFolderDataset(paths, self.test_transform())

    @staticmethod
    def check_dataset(dataset: SegDataset, split: str, full: bool) -> None:
        """Every pair of `dataset` loaded (`full`) or verified; one error listing every bad file, the first one
        on the first line."""
        problems = []
        for index in range(len(dataset)):
            try:
                dataset.load(index) if full else dataset.verify(index)
            except (OSError, ValueError) as error:
                problems.append(str(error))
        if problems:
            rest = "".join(f"\n  {problem}" for problem in problems[1:])
            raise ValueError(f"{split} split: {len(problems)} bad file(s): {problems[0]}{rest}")

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets the stage needs (fit -> train+val, validate -> val, test, predict) and check their
        files: all of them with ``check_files``; otherwise a fit still verifies the val split's files (labels read,
        images verified without decoding), so that a bad one fails before training, not after it."""
        needed = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["predict"]}
        for split in needed.get(stage or "fit", []):
            if split in self.datasets:
                continue
            dataset = self.build_predict_dataset() if split == "predict" else self.build_dataset(split)
            self.datasets[split] = dataset
            if isinstance(dataset, SegDataset) and (self.check_files or (split == "val" and stage in (None, "fit"))):
                self.check_dataset(dataset, split, full=self.check_files)

    def _loader(self, split: str, batch_size: int, training: bool = False) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(split, split))
        dataset = self.datasets[split]
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=training,
            drop_last=training and len(dataset) >= batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers,
            pin_memory=self.pin_memory,
            worker_init_fn=init_loader_worker,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, training=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """One image per batch: a folder of images to predict may hold any mix of sizes."""
        return self._loader("predict", 1)


class Crop512DataModule(SegDataModule):
    """mmsegmentation's protocol of ADE20K and COCO-Stuff as the defaults: 512x512 crops of images resized to fit
    (2048, 512) times a ratio in ``ratio_range``, test images resized to fit (2048, 512) (short side 512)."""

    def __init__(
        self,
        root: str | Path,
        crop_size: int | tuple[int, int] = (512, 512),
        scale: tuple[int, int] | None = (2048, 512),
        test_scale: tuple[int, int] | None = (2048, 512),
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, crop_size=crop_size, scale=scale, test_scale=test_scale, **kwargs)
