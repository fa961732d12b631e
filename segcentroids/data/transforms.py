"""Albumentations pipelines in the mmsegmentation style (random resize, cat-max-ratio crop, flip, photometric, pad).

Sizes follow mmsegmentation: ``crop_size`` is ``(height, width)``; ``scale`` is ``(long edge, short edge)`` and an
image is resized keeping its aspect ratio so that it fits inside that scale.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.crops.transforms import BaseCrop
from albumentations.pytorch import ToTensorV2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""The ImageNet normalisation (fractions of 255): the default, and what smp's own encoders were trained with."""


def pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``size`` as a ``(height, width)`` pair (an int means a square)."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def rescaled_size(height: int, width: int, scale: tuple[int, int] | None, ratio: float = 1.0) -> tuple[int, int]:
    """``(height, width)`` after a keep-ratio resize to fit ``scale`` (long, short) times ``ratio`` (mmcv's rule).

    With ``scale=None`` the image's own size is multiplied by ``ratio``.
    """
    if scale is None:
        factor = ratio
    else:
        long_edge, short_edge = int(scale[0] * ratio), int(scale[1] * ratio)
        factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class KeepRatioResize(A.DualTransform):
    """Resize keeping the aspect ratio so the image fits ``scale`` (long, short) times a ratio from ``ratio_range``.

    mmsegmentation's ``RandomResize(scale, ratio_range, keep_ratio=True)``; with ``ratio_range=(1, 1)`` it is the
    test-time ``Resize(scale, keep_ratio=True)``. Images are resized bilinearly, masks by nearest neighbour.
    """

    def __init__(
        self,
        scale: tuple[int, int] | None,
        ratio_range: tuple[float, float] = (1.0, 1.0),
        interpolation: int = cv2.INTER_LINEAR,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if ratio_range[0] > ratio_range[1] or ratio_range[0] <= 0:
            raise ValueError(f"ratio_range must be (low, high) with 0 < low <= high, got {ratio_range}")
        self.scale = None if scale is None else (int(scale[0]), int(scale[1]))
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.interpolation = interpolation

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        ratio = self.py_random.uniform(*self.ratio_range)
        return {"target_size": rescaled_size(height, width, self.scale, ratio)}

    def apply(self, img: np.ndarray, target_size: tuple[int, int], **params: Any) -> np.ndarray:
        if img.shape[:2] == target_size:
            return img
        return cv2.resize(img, target_size[::-1], interpolation=self.interpolation)

    def apply_to_mask(self, mask: np.ndarray, target_size: tuple[int, int], **params: Any) -> np.ndarray:
        if mask.shape[:2] == target_size:
            return mask
        return cv2.resize(mask, target_size[::-1], interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "ratio_range", "interpolation")


class CatMaxRatioCrop(BaseCrop):
    """Random crop of at most ``(height, width)`` in which no single class covers ``cat_max_ratio`` or more.

    mmsegmentation's ``RandomCrop(crop_size, cat_max_ratio)``: up to ``max_tries`` crop positions are drawn; the first
    one whose most frequent class covers less than ``cat_max_ratio`` of the labelled (non-ignore) pixels, and that
    holds at least two classes, is taken; otherwise the last one drawn. An image smaller than the crop keeps that
    side whole (pad afterwards). ``cat_max_ratio >= 1`` turns the check off. Masks must hold non-negative integers.
    """

    def __init__(
        self,
        height: int,
        width: int,
        cat_max_ratio: float = 0.75,
        ignore_index: int = 255,
        max_tries: int = 10,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if max_tries < 1:
            raise ValueError(f"max_tries must be at least 1, got {max_tries}")
        self.height = height
        self.width = width
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.max_tries = max_tries

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        image_height, image_width = params["shape"][:2]
        crop_height, crop_width = min(self.height, image_height), min(self.width, image_width)
        mask = data.get("mask")
        check = mask is not None and self.cat_max_ratio < 1.0
        for _ in range(self.max_tries if check else 1):
            y_min = self.py_random.randint(0, image_height - crop_height)
            x_min = self.py_random.randint(0, image_width - crop_width)
            if check and self._balanced(mask[y_min : y_min + crop_height, x_min : x_min + crop_width]):
                break
        return {"crop_coords": (x_min, y_min, x_min + crop_width, y_min + crop_height)}

    def _balanced(self, crop_mask: np.ndarray) -> bool:
        if crop_mask.dtype == np.uint8:  # a histogram without copying the crop out
            counts = cv2.calcHist([crop_mask], [0], None, [256], [0, 256]).ravel()
        else:
            counts = np.bincount(crop_mask.ravel())
        if self.ignore_index < len(counts):
            counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "cat_max_ratio", "ignore_index", "max_tries")


class PhotoMetricDistortion(A.ImageOnlyTransform):
    """mmsegmentation's ``PhotoMetricDistortion`` on uint8 RGB images, each step with probability 0.5.

    Brightness (add a delta in ``[-brightness_delta, brightness_delta]``), contrast (multiply by a factor in
    ``contrast_range``, before or after the colour steps, chosen at random), saturation (multiply S in HSV by a factor
    in ``saturation_range``) and hue (shift H, OpenCV's 0..179 scale, by an integer in ``[-hue_delta, hue_delta]``).
    Values are clipped to 0..255 after every step, as mmsegmentation does; the steps run as lookup tables.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    def get_params(self) -> dict[str, Any]:
        rng: random.Random = self.py_random
        coin = lambda: rng.random() < 0.5  # noqa: E731
        return {
            "brightness": rng.uniform(-self.brightness_delta, self.brightness_delta) if coin() else 0.0,
            "contrast_first": coin(),
            "contrast": rng.uniform(*self.contrast_range) if coin() else 1.0,
            "saturation": rng.uniform(*self.saturation_range) if coin() else 1.0,
            "hue": rng.randint(-self.hue_delta, self.hue_delta) if coin() else 0,
        }

    def apply(
        self,
        img: np.ndarray,
        brightness: float,
        contrast_first: bool,
        contrast: float,
        saturation: float,
        hue: int,
        **params: Any,
    ) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise TypeError(f"PhotoMetricDistortion needs a uint8 RGB image, got {img.dtype} {img.shape}")
        levels = np.arange(256, dtype=np.float32)
        table = np.clip(levels + brightness, 0, 255).astype(np.uint8)
        if contrast_first:
            table = np.clip(table * np.float32(contrast), 0, 255).astype(np.uint8)
        if brightness != 0.0 or (contrast_first and contrast != 1.0):
            img = cv2.LUT(img, table)
        if saturation != 1.0 or hue != 0:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hue_table = ((levels.astype(np.int64) + hue) % 180).astype(np.uint8)
            saturation_table = np.clip(levels * np.float32(saturation), 0, 255).astype(np.uint8)
            hsv_table = np.stack([hue_table, saturation_table, levels.astype(np.uint8)], axis=-1)[:, None, :]
            img = cv2.cvtColor(cv2.LUT(hsv, hsv_table), cv2.COLOR_HSV2RGB)
        if not contrast_first and contrast != 1.0:
            img = cv2.LUT(img, np.clip(levels * np.float32(contrast), 0, 255).astype(np.uint8))
        return img

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_delta", "contrast_range", "saturation_range", "hue_delta")


class LookupNormalize(A.Normalize):
    """``A.Normalize`` (``(x / max_pixel_value - mean) / std``) as one per-channel lookup table for uint8 images.

    The same float32 values as ``A.Normalize``, several times faster on uint8 input; other dtypes go to it.
    """

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        if self.normalization != "standard" or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            return super().apply(img, **params)
        levels = np.arange(256, dtype=np.float32)[:, None] / np.float32(self.max_pixel_value)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return cv2.LUT(img, ((levels - mean) / std)[:, None, :])


def build_train_transform(
    crop_size: int | tuple[int, int],
    scale: tuple[int, int] | None,
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    ignore_index: int = 255,
    flip: A.BasicTransform | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """The mmsegmentation training pipeline; outputs a normalised ``[3, *crop_size]`` image and a ``crop_size`` mask.

    Random keep-ratio resize of ``scale`` (long, short) by a ratio in ``ratio_range`` (``scale=None``: of the image's
    own size), cat-max-ratio random crop, horizontal flip (``flip`` replaces ``HorizontalFlip(p=flip_prob)``, e.g. a
    flip that also swaps left/right classes), photometric distortion, normalisation with ``mean``/``std`` (fractions
    of 255; ImageNet's by default), then padding at the
    bottom/right to exactly ``crop_size`` with 0 in the normalised image and ``ignore_index`` in the mask.
    """
    crop_height, crop_width = pair(crop_size)
    steps: list[A.BasicTransform] = [
        KeepRatioResize(scale, ratio_range),
        CatMaxRatioCrop(crop_height, crop_width, cat_max_ratio=cat_max_ratio, ignore_index=ignore_index),
    ]
    if flip is not None:
        steps.append(flip)
    elif flip_prob > 0:
        steps.append(A.HorizontalFlip(p=flip_prob))
    if photometric:
        steps.append(PhotoMetricDistortion())
    steps += [
        LookupNormalize(mean=mean, std=std, max_pixel_value=255.0),
        A.PadIfNeeded(
            min_height=crop_height,
            min_width=crop_width,
            position="top_left",
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=ignore_index,
        ),
        ToTensorV2(),
    ]
    return A.Compose(steps)


def build_test_transform(scale: tuple[int, int] | None, mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD) -> A.Compose:
    """Test pipeline for the image only: keep-ratio resize to ``scale`` (long, short; ``None``: no resize), normalise
    with ``mean``/``std``.

    Call it as ``transform(image=image)``: the label stays at its stored size, where the evaluation happens.
    """
    steps: list[A.BasicTransform] = []
    if scale is not None:
        steps.append(KeepRatioResize(scale))
    steps += [LookupNormalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps)
