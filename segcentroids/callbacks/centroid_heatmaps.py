"""MVSC Fig. 4-5: heatmaps of the cosine similarity between dense features and one class's centroid, per group."""

from __future__ import annotations

import cv2
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from segcentroids.callbacks.images import denormalize, normalization_of


def centroid_similarity_maps(features: Tensor, centroids: Tensor) -> Tensor:
    """Cosine similarity of every pixel's feature with each group's centroid.

    Args:
        features: `[B, D, h, w]` dense features.
        centroids: `[B, G, D]` the G group centroids of the class shown for each image.
    Returns:
        `[B, G, h, w]` in [-1, 1].
    """
    features = F.normalize(features.float(), dim=1)
    centroids = F.normalize(centroids.float(), dim=-1)
    return torch.einsum("bdhw,bgd->bghw", features, centroids)


def diverging_colormap(similarity: np.ndarray) -> np.ndarray:
    """uint8 RGB `[..., 3]` of values in [-1, 1]: blue (-1), white (0), red (+1), as in the paper's figures."""
    s = np.clip(similarity, -1.0, 1.0)[..., None]
    red, white, blue = np.array([1.0, 0.0, 0.0]), np.ones(3), np.array([0.0, 0.0, 1.0])
    rgb = np.where(s >= 0, white + s * (red - white), white - s * (blue - white))
    return (rgb * 255).round().astype(np.uint8)


class CentroidHeatmapLogger(L.Callback):
    """Logs, for the first `num_images` validation images of each epoch, input | class mask | one heatmap per group.

    The class shown is `class_index`, or each image's most frequent labelled class when None. Needs a module with
    `centroids` (MVSC) and `segmodel`; does nothing for other modules or loggers without `add_image`.

    Args:
        num_images: how many validation images (taken from the first batches) to show.
        class_index: class whose centroids are shown; None = each image's most frequent class.
    """

    def __init__(self, num_images: int = 2, class_index: int | None = None) -> None:
        if num_images < 0:
            raise ValueError(f"CentroidHeatmapLogger: num_images must be >= 0, got {num_images}")
        self.num_images = num_images
        self.class_index = class_index
        self._panels: list[np.ndarray] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._panels = []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        centroids = getattr(pl_module, "centroids", None)
        if (trainer.sanity_checking or centroids is None or not trainer.is_global_zero
                or len(self._panels) >= self.num_images):
            return
        count = min(self.num_images - len(self._panels), batch["image"].shape[0])
        self._panels += self.panels(pl_module, batch["image"][:count], batch["mask"][:count])

    @torch.no_grad()
    def panels(self, pl_module: L.LightningModule, images: Tensor, labels: Tensor) -> list[np.ndarray]:
        """One uint8 `[H, 3 + G ...]` panel per image: input | class mask | heatmap of group 1 .. G."""
        features = pl_module.segmodel(images)["decoder"]
        weight = pl_module.centroids.weight  # [G, K, D]
        valid = (labels >= 0) & (labels < weight.shape[1])
        if self.class_index is None:
            counts = F.one_hot(torch.where(valid, labels, 0).flatten(1), weight.shape[1]) * valid.flatten(1)[..., None]
            classes = counts.sum(1).argmax(1)
        else:
            classes = torch.full((images.shape[0],), self.class_index, device=images.device)
        maps = centroid_similarity_maps(features, weight[:, classes].transpose(0, 1))
        height, width = labels.shape[-2:]
        maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False).cpu().numpy()
        panels = []
        for image, label, cls, group_maps in zip(images, labels, classes.tolist(), maps):
            rgb = denormalize(image, *normalization_of(pl_module._trainer))
            if rgb.shape[:2] != (height, width):
                rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
            mask = np.repeat(((label == cls).cpu().numpy() * 255).astype(np.uint8)[..., None], 3, axis=2)
            panels.append(np.concatenate([rgb, mask, *(diverging_colormap(m) for m in group_maps)], axis=1))
        return panels

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        if not self._panels or not hasattr(experiment, "add_image") or not trainer.is_global_zero:
            return
        for index, panel in enumerate(self._panels):
            experiment.add_image(f"val/centroid_heatmaps/{index}", panel, trainer.global_step, dataformats="HWC")
