"""Procedural street-like scenes: large textured "stuff" regions with small "thing" objects on them.

Nothing is stored: an image is generated in ``__getitem__`` from ``(seed, split, index)``. The scenes exercise what
the methods are about:

- Classes come in colour pairs: classes ``2m`` and ``2m + 1`` share a mean colour and differ only in texture
  (horizontal, vertical or diagonal stripes, checker, speckle, smooth blotches), so colour alone cannot decide the
  class; per-image illumination, per-class colour jitter and pixel noise blur the colours of different pairs too.
- Stuff fills large regions (horizon bands, lower ids above higher ones, or wavy Voronoi cells); things are small
  discs and boxes.
- Each image holds a few classes only, by co-occurrence rules: 1 to 3 stuff classes, and thing ``j`` is placed only
  over stuff ``j`` or ``j + 1`` (modulo the number of stuff classes).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from segcentroids.data.base import SegDataModule, apply_transform
from segcentroids.data.labels import LARGE_IGNORE_INDEX, ignore_index_for, label_dtype
from segcentroids.data.transforms import pair

TEXTURES = ("hstripes", "vstripes", "checker", "speckle", "smooth", "dstripes")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
TEXTURE_AMPLITUDE = 40.0
NOISE_SIGMA = 8.0
COLOUR_JITTER = 10.0
MAX_SYNTHETIC_CLASSES = LARGE_IGNORE_INDEX  # uint16 labels above 255 classes


@dataclass(frozen=True)
class SceneClass:
    """How one class looks and where it may appear."""

    name: str
    is_thing: bool
    colour: tuple[float, float, float]  # mean RGB, shared with the other class of its colour pair
    texture: str  # one of TEXTURES
    period: float  # texture period in pixels at the generated size
    shape: str = ""  # things: "disc" or "box" (the usual shape; the other one with probability 1/4)
    stuff_below: tuple[int, ...] = ()  # things: the stuff classes it may be placed on


def scene_classes(num_classes: int) -> list[SceneClass]:
    """The ``num_classes`` class definitions: ``num_classes // 2`` stuff classes first, then the things.

    Classes ``2m`` and ``2m + 1`` share mean colour ``m`` and have different textures.
    """
    if not 2 <= num_classes <= MAX_SYNTHETIC_CLASSES:
        raise ValueError(f"SyntheticDataModule needs 2 <= num_classes <= {MAX_SYNTHETIC_CLASSES} (stuff and things), "
                         f"got {num_classes}")
    num_stuff = num_classes // 2
    num_colours = (num_classes + 1) // 2
    colours = [
        tuple(255.0 * channel for channel in colorsys.hsv_to_rgb(m / num_colours, 0.45, 0.6))
        for m in range(num_colours)
    ]
    classes = []
    for index in range(num_classes):
        texture = TEXTURES[index % len(TEXTURES)]
        colour = colours[index // 2]
        if index < num_stuff:
            classes.append(SceneClass(f"stuff{index}_{texture}", False, colour, texture, 10.0))
            continue
        thing = index - num_stuff
        classes.append(
            SceneClass(
                f"thing{thing}_{texture}",
                True,
                colour,
                texture,
                8.0,
                shape="disc" if thing % 2 == 0 else "box",
                stuff_below=tuple(sorted({thing % num_stuff, (thing + 1) % num_stuff})),
            )
        )
    return classes


def scene_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct display colours (golden-ratio hue steps), one per class."""
    palette = []
    for index in range(num_classes):
        rgb = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.75, 0.95 if index % 2 == 0 else 0.65)
        palette.append(tuple(int(255 * channel) for channel in rgb))
    return palette


class SceneGenerator:
    """Generates ``(image uint8 [H,W,3], label [H,W], stuff map [H,W])`` from ``(split, index)``; labels are uint8
    up to 255 classes, uint16 above (ignore 65535, never generated)."""

    def __init__(self, num_classes: int = 8, image_size: int | tuple[int, int] = (128, 128), seed: int = 0) -> None:
        self.classes = scene_classes(num_classes)
        self.num_stuff = num_classes // 2
        self.label_dtype = label_dtype(ignore_index_for(num_classes))
        self.height, self.width = pair(image_size)
        self.seed = seed
        self.rows = np.arange(self.height, dtype=np.float32)[:, None]
        self.cols = np.arange(self.width, dtype=np.float32)[None, :]
        self.colours = np.array([c.colour for c in self.classes], dtype=np.float32)
        # Textures and pixel noise are windows, at a random offset (the phase), of banks of twice the image size made
        # once per generator: computing them per image would cost most of the generation time.
        self.texture_banks = {(c.texture, c.period): self.texture_bank(c.texture, c.period) for c in self.classes}
        self.noise_bank = self.bank_rng("noise").standard_normal((2 * self.height, 2 * self.width, 3), np.float32)
        self.things_over = [
            [j for j, c in enumerate(self.classes) if c.is_thing and stuff in c.stuff_below]
            for stuff in range(self.num_stuff)
        ]

    def rng(self, split: str, index: int) -> np.random.Generator:
        """The random generator of one image, fixed by ``(seed, split, index)``."""
        return np.random.default_rng([self.seed, SPLIT_IDS[split], index])

    def bank_rng(self, name: str) -> np.random.Generator:
        """The random generator of one bank, fixed by ``(seed, name)``."""
        return np.random.default_rng([self.seed, len(SPLIT_IDS), *name.encode()])

    def stuff_map(self, rng: np.random.Generator) -> np.ndarray:
        """1 to 3 stuff classes as horizon bands (lower ids above) or wavy Voronoi cells."""
        count = int(rng.choice([1, 2, 3], p=[0.15, 0.45, 0.4]))
        chosen = np.sort(rng.choice(self.num_stuff, size=min(count, self.num_stuff), replace=False))
        size = min(self.height, self.width)
        if rng.random() < 0.5:
            region = np.zeros((self.height, self.width), dtype=np.uint8)
            for horizon in np.sort(rng.uniform(0.2, 0.8, len(chosen) - 1)) * self.height:
                wave = (
                    rng.uniform(0, 0.08)
                    * size
                    * np.sin(2 * np.pi * self.cols / rng.uniform(0.5, 2.0) / size + rng.uniform(0, 2 * np.pi))
                )
                region += self.rows > horizon + wave
        else:
            seeds = rng.uniform(0, 1, (len(chosen), 2)) * (self.height, self.width)
            amplitude, period, phase = rng.uniform(0, 0.08) * size, rng.uniform(0.3, 1.0) * size, rng.uniform(0, 7)
            rows = self.rows + amplitude * np.sin(2 * np.pi * self.cols / period + phase)
            cols = self.cols + amplitude * np.sin(2 * np.pi * self.rows / period + phase)
            # nearest seed on the warped grid: |p - s|^2 - |p|^2 = |s|^2 - 2 p.s, one weighted sum per seed
            region = np.zeros((self.height, self.width), dtype=np.uint8)
            nearest = np.full((self.height, self.width), np.inf, dtype=np.float32)
            for cell, (y, x) in enumerate(seeds):
                distance = cv2.addWeighted(rows, -2 * y, cols, -2 * x, y * y + x * x)
                region[distance < nearest] = cell
                np.minimum(nearest, distance, out=nearest)
        if self.label_dtype != np.uint8:  # more than 255 classes: ids as uint16
            return chosen.astype(self.label_dtype)[region]
        table = np.zeros(256, dtype=np.uint8)
        table[: len(chosen)] = chosen
        return cv2.LUT(region, table)

    def place_things(self, rng: np.random.Generator, label: np.ndarray, stuff: np.ndarray) -> None:
        """Draw 1 to 5 discs/boxes into ``label``, each of a thing class allowed over the stuff at its centre."""
        size = min(self.height, self.width)
        for _ in range(int(rng.integers(1, 6))):
            y, x = int(rng.integers(0, self.height)), int(rng.integers(0, self.width))
            allowed = self.things_over[stuff[y, x]]
            if not allowed:
                continue
            thing = allowed[int(rng.integers(len(allowed)))]
            shape = self.classes[thing].shape
            if rng.random() < 0.25:
                shape = "box" if shape == "disc" else "disc"
            half_h, half_w = (rng.uniform(0.05, 0.15, 2) * size).astype(int) + 2
            if shape == "disc":
                half_w = half_h
            top, bottom = max(y - half_h, 0), min(y + half_h + 1, self.height)
            left, right = max(x - half_w, 0), min(x + half_w + 1, self.width)
            window = label[top:bottom, left:right]
            if shape == "disc":
                inside = (self.rows[top:bottom] - y) ** 2 + (self.cols[:, left:right] - x) ** 2 <= half_h**2
                window[inside] = thing
            else:
                window[:] = thing

    def texture_bank(self, texture: str, period: float) -> np.ndarray:
        """A texture over twice the image size, values about in [-1, 1]."""
        frequency = 2 * np.pi / period
        rows = np.arange(2 * self.height, dtype=np.float32)[:, None]
        cols = np.arange(2 * self.width, dtype=np.float32)[None, :]
        shape = (2 * self.height, 2 * self.width)
        if texture == "hstripes":
            bank = np.cos(frequency * rows) + 0 * cols
        elif texture == "vstripes":
            bank = np.cos(frequency * cols) + 0 * rows
        elif texture == "dstripes":
            bank = np.cos(frequency / np.sqrt(2) * (rows + cols))
        elif texture == "checker":
            bank = np.cos(frequency * rows) * np.cos(frequency * cols)
        elif texture == "speckle":
            bank = 0.7 * self.bank_rng(texture).standard_normal(shape, dtype=np.float32)
        else:  # smooth blotches, about a quarter of the image across
            coarse = self.bank_rng(texture).standard_normal((8, 8), np.float32)
            bank = 0.7 * cv2.resize(coarse, shape[::-1], interpolation=cv2.INTER_CUBIC)
        return np.ascontiguousarray(bank, dtype=np.float32)

    def window(self, rng: np.random.Generator, bank: np.ndarray) -> np.ndarray:
        """An image-sized window of ``bank`` at a random offset."""
        top, left = int(rng.integers(0, self.height + 1)), int(rng.integers(0, self.width + 1))
        return bank[top : top + self.height, left : left + self.width]

    def scene(self, split: str, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image, label and stuff map (the stuff under the things) of image ``index`` of ``split``."""
        rng = self.rng(split, index)
        stuff = self.stuff_map(rng)
        label = stuff.copy()
        self.place_things(rng, label, stuff)
        gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-15, 15)  # the image's illumination
        colours = np.zeros((max(256, len(self.classes)), 1, 3), dtype=np.float32)
        jitter = rng.normal(0, COLOUR_JITTER, self.colours.shape).astype(np.float32)
        colours[: len(self.classes), 0] = (self.colours + jitter) * gain + offset
        texture = np.zeros((self.height, self.width), dtype=np.float32)
        for class_index in np.flatnonzero(np.bincount(label.ravel(), minlength=len(self.classes))):
            scene_class = self.classes[class_index]
            field = self.window(rng, self.texture_banks[(scene_class.texture, scene_class.period)])
            cv2.copyTo(field, (label == class_index).view(np.uint8), texture)
        # a LUT for uint8 labels (fast), the same lookup by indexing for uint16 ones
        image = cv2.LUT(cv2.merge([label] * 3), colours) if label.dtype == np.uint8 else colours[label, 0]
        image = cv2.scaleAdd(cv2.merge([texture] * 3), TEXTURE_AMPLITUDE * gain, image)
        image = cv2.scaleAdd(self.window(rng, self.noise_bank), NOISE_SIGMA, cv2.GaussianBlur(image, (3, 3), 0))
        return np.clip(image, 0, 255).astype(np.uint8), label, stuff


class SyntheticDataset(Dataset):
    """``size`` generated scenes of ``split``; items as ``SegDataset`` (``with_mask=False``: as predict items)."""

    def __init__(
        self,
        generator: SceneGenerator,
        split: str,
        size: int,
        transform: A.Compose,
        transform_mask: bool = True,
        with_mask: bool = True,
    ) -> None:
        if split not in SPLIT_IDS:
            raise ValueError(f"synthetic split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        self.generator = generator
        self.split = split
        self.size = size
        self.transform = transform
        self.transform_mask = transform_mask
        self.with_mask = with_mask

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} synthetic {self.split} images")
        image, label, _ = self.generator.scene(self.split, index)
        name = f"{self.split}_{index:05d}"
        if not self.with_mask:
            return {"image": self.transform(image=image)["image"], "name": name, "orig_size": torch.tensor(label.shape)}
        image, mask = apply_transform(self.transform, self.transform_mask, image, label)
        return {"image": image, "mask": mask, "name": name}


class SyntheticDataModule(SegDataModule):
    """Generated scenes (see the module docstring), deterministic from ``seed``; nothing on disk.

    ``predict`` uses the images of ``predict_dir`` if given, else the synthetic test images without labels. The
    training pipeline is the usual one; ``crop_size`` defaults to ``image_size`` and ``scale=None`` resizes the
    generated size by ``ratio_range``. Other arguments are those of ``SegDataModule``.
    """

    def __init__(
        self,
        num_classes: int = 8,
        image_size: int | tuple[int, int] = (128, 128),
        train_size: int = 512,
        val_size: int = 64,
        test_size: int = 64,
        seed: int = 0,
        batch_size: int = 8,
        val_batch_size: int = 8,
        crop_size: int | tuple[int, int] | None = None,
        scale: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root=None,
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            crop_size=image_size if crop_size is None else crop_size,
            scale=scale,
            **kwargs,
        )
        self.generator = SceneGenerator(num_classes, image_size, seed)
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self._palette = scene_palette(num_classes)

    @property
    def class_names(self) -> list[str]:
        return [scene_class.name for scene_class in self.generator.classes]

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return list(self._palette)

    def build_dataset(self, split: str) -> Dataset:
        training = split == "train"
        transform = self.train_transform() if training else self.test_transform()
        return SyntheticDataset(self.generator, split, self.sizes[split], transform, transform_mask=training)

    def build_predict_dataset(self) -> Dataset:
        if self.predict_dir is not None:
            return super().build_predict_dataset()
        return SyntheticDataset(self.generator, "test", self.sizes["test"], self.test_transform(), with_mask=False)
