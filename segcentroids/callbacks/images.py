"""Validation images to TensorBoard (input | ground truth | prediction) and colourisation helpers."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import lightning as L
import numpy as np
import torch
from torch import Tensor

from segcentroids.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct colours by the PASCAL VOC bit-interleaving rule."""
    palette = []
    for index in range(num_classes):
        r = g = b = 0
        c = index + 1
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """RGB uint8 image `[H, W, 3]` of a label map; ignore pixels (255 or the large label sets' 65535) are black."""
    table = np.zeros((max(256, len(palette)) + 1, 3), dtype=np.uint8)  # the last row: black, for ignore
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    index = labels.astype(np.int64)
    return table[np.where((index == ignore_index) | (index >= len(table) - 1), len(table) - 1, index)]


def denormalize(image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
                ) -> np.ndarray:
    """`[3, H, W]` tensor normalised with `mean`/`std` (fractions of 255) -> uint8 `[H, W, 3]`."""
    mean = torch.tensor(mean, device=image.device).view(3, 1, 1)
    std = torch.tensor(std, device=image.device).view(3, 1, 1)
    rgb = ((image.float() * std + mean).clamp(0, 1) * 255).round().byte()
    return rgb.permute(1, 2, 0).cpu().numpy()


def normalization_of(trainer: L.Trainer | None) -> tuple[Sequence[float], Sequence[float]]:
    """(mean, std) the DataModule normalised the images with (ImageNet's without a trainer or DataModule)."""
    datamodule = None if trainer is None else trainer.datamodule
    return getattr(datamodule, "mean", IMAGENET_MEAN), getattr(datamodule, "std", IMAGENET_STD)


def palette_of(trainer: L.Trainer, num_classes: int) -> list[tuple[int, int, int]]:
    """The DataModule's palette, or a default one."""
    palette = getattr(trainer.datamodule, "palette", None) if trainer.datamodule is not None else None
    return list(palette) if palette else default_palette(num_classes)


TITLE_HEIGHT = 22  # pixels of the title strip above a panel
LEGEND_ROW = 18  # pixels per legend row below a panel
SWATCH = 12  # side of a legend colour swatch


def titled_panel(parts: Sequence[np.ndarray], titles: Sequence[str],
                 legend: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
    """The RGB `parts` side by side (equal heights) with a white title strip naming each, and below them a legend:
    a colour swatch and the name of each `(name, colour)` entry, in rows as wide as the panel."""
    body = np.concatenate(parts, axis=1)
    width = body.shape[1]
    header = np.full((TITLE_HEIGHT, width, 3), 255, dtype=np.uint8)
    left = 0
    for part, title in zip(parts, titles):
        cv2.putText(header, title, (left + 4, TITLE_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
        left += part.shape[1]
    return np.concatenate([header, body, legend_strip(legend, width)], axis=0)


def legend_strip(legend: Sequence[tuple[str, Sequence[int]]], width: int) -> np.ndarray:
    """White rows of `swatch name` entries, wrapped to `width` pixels."""
    places, x, row = [], 4, 0
    for name, colour in legend:
        entry = SWATCH + 6 + cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0] + 12
        if x + entry > width and x > 4:
            x, row = 4, row + 1
        places.append((x, row, name, colour))
        x += entry
    strip = np.full((LEGEND_ROW * (row + 1 if legend else 0), width, 3), 255, dtype=np.uint8)
    for x, row, name, colour in places:
        top = row * LEGEND_ROW + (LEGEND_ROW - SWATCH) // 2
        strip[top : top + SWATCH, x : x + SWATCH] = colour
        cv2.putText(strip, name, (x + SWATCH + 4, top + SWATCH - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return strip


def class_legend(labels: Sequence[np.ndarray], palette: Sequence[Sequence[int]], names: Sequence[str],
                 ignore_index: int) -> list[tuple[str, Sequence[int]]]:
    """`(name, colour)` of every class present in any of the label maps, in class order (ignore left out)."""
    present = np.unique(np.concatenate([label.reshape(-1) for label in labels]))
    present = present[(present != ignore_index) & (present < len(palette))]
    return [(names[k] if k < len(names) else str(k), palette[k]) for k in present.tolist()]


class ValidationImageLogger(L.Callback):
    """Logs the first `num_images` validation images of each epoch as input | ground truth | prediction panels,
    titled, with a legend of the classes they show."""

    def __init__(self, num_images: int = 4) -> None:
        self.num_images = num_images
        self._panels: list[np.ndarray] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._panels = []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or len(self._panels) >= self.num_images or not isinstance(outputs, dict) \
                or "preds" not in outputs:  # a model that makes no label maps (MultiLabelClassifier)
            return
        palette = palette_of(trainer, pl_module.num_classes)
        ignore = getattr(pl_module, "ignore_index", 255)
        names = getattr(pl_module, "class_names", None) or []
        for image, label, pred in zip(batch["image"], batch["mask"], outputs["preds"]):
            if len(self._panels) >= self.num_images:
                break
            label_np, pred_np = label.cpu().numpy(), pred.cpu().numpy()
            rgb = denormalize(image, *normalization_of(trainer))
            if rgb.shape[:2] != label_np.shape:
                rgb = cv2.resize(rgb, (label_np.shape[1], label_np.shape[0]), interpolation=cv2.INTER_LINEAR)
            parts = [rgb, colorize(label_np, palette, ignore), colorize(pred_np, palette, ignore)]
            legend = class_legend([label_np, pred_np], palette, names, ignore)
            self._panels.append(titled_panel(parts, ["input", "ground truth", "prediction"], legend))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        if not self._panels or not hasattr(experiment, "add_image") or not trainer.is_global_zero:
            return
        for index, panel in enumerate(self._panels):
            experiment.add_image(f"val/images/{index}", panel, trainer.global_step, dataformats="HWC")
