"""MLSeg diagnostics: histograms of the top-ranked multi-label scores with true/false positives marked (Fig. 1c)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import Tensor

from segcentroids.ops.selection import multi_hot_labels, select_top_labels

TRUE_POSITIVE = (40, 170, 60)
FALSE_POSITIVE = (220, 40, 40)
BACKGROUND = (255, 255, 255)


def top_label_histogram(probabilities: Tensor, targets: Tensor, top: int, bar_width: int = 6,
                        height: int = 80) -> np.ndarray:
    """RGB uint8 image `[n * (height + 4), top * bar_width, 3]`: one row of bars per image, the `top` highest
    probabilities in decreasing order, bar height = probability, green = class present (true positive), red =
    absent (false positive). `probabilities, targets: [n, K]`."""
    selected = select_top_labels(probabilities, top)
    heights = probabilities.gather(1, selected).clamp(0, 1).cpu().numpy()
    present = targets.gather(1, selected).cpu().numpy() > 0
    rows = []
    for bars, hits in zip(heights, present):
        row = np.full((height + 4, bars.shape[0] * bar_width, 3), BACKGROUND, dtype=np.uint8)
        for rank, (value, hit) in enumerate(zip(bars, hits)):
            top_pixel = height - int(round(float(value) * height))
            row[top_pixel:height, rank * bar_width : (rank + 1) * bar_width - 1] = TRUE_POSITIVE if hit else \
                FALSE_POSITIVE
        rows.append(row)
    return np.concatenate(rows, axis=0)


class TopLabelHistogram(L.Callback):
    """Logs, per validation, the histogram of the top-`top` multi-label probabilities of the first `num_images`
    validation images (Fig. 1c) to TensorBoard. Needs a method whose validation step returns `multilabel_logits`
    (MLSeg with `multi_task`); does nothing otherwise."""

    def __init__(self, num_images: int = 4, top: int = 20) -> None:
        if num_images < 1 or top < 1:
            raise ValueError(f"TopLabelHistogram: num_images and top must be >= 1, got {num_images}, {top}")
        self.num_images = num_images
        self.top = top
        self._probabilities: list[Tensor] = []
        self._targets: list[Tensor] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._probabilities, self._targets = [], []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        collected = sum(p.shape[0] for p in self._probabilities)
        if (trainer.sanity_checking or collected >= self.num_images or not isinstance(outputs, dict)
                or outputs.get("multilabel_logits") is None):
            return
        take = self.num_images - collected
        logits = outputs["multilabel_logits"][:take]
        targets = multi_hot_labels(batch["mask"][:take], logits.shape[1], getattr(pl_module, "ignore_index", 255))
        self._probabilities.append(torch.sigmoid(logits.float()).cpu())
        self._targets.append(targets.cpu())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        if not self._probabilities or not hasattr(experiment, "add_image") or not trainer.is_global_zero:
            return
        probabilities, targets = torch.cat(self._probabilities), torch.cat(self._targets)
        image = top_label_histogram(probabilities, targets, min(self.top, probabilities.shape[1]))
        experiment.add_image("val/multilabel_top_scores", image, trainer.global_step, dataformats="HWC")
