"""t-SNE of pixel representations beside the class memory (MCIBI Fig. 3), written as a PNG after validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor

from segcentroids.nn.memory import image_class_means
from segcentroids.plots import new_figure

RESOLUTIONS = ("label", "feature")


class FeatureTSNE(L.Callback):
    """After each `every_n_epochs`-th validation, embeds with t-SNE the per-image class means of the pixel
    representations (one point per class present in a validation image, as in Fig. 3) together with the rows of the
    class memory (initialised rows, drawn as stars), coloured by class with the DataModule's palette, and writes
    `<log dir>/tsne/epoch=<E>-step=<S>.png` (PNG text chunks: `points`, `memory_points`, `classes`).

    The representations are `pl_module.memory_features(images)` (MCIBI's R) when the module has it, else its
    SegModel's decoder output (the Baseline: Fig. 3 left); the memory is `pl_module.memory.memory` when present.
    `resolution`: `"label"` upsamples the features to the label size (exact), `"feature"` downsamples the labels
    (nearest; cheaper on Cityscapes-sized images). At most `max_points` image-class points are kept (the first ones).
    """

    def __init__(self, every_n_epochs: int = 1, max_points: int = 2000, perplexity: float = 30.0,
                 resolution: Literal["label", "feature"] = "feature", seed: int = 0) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"FeatureTSNE: every_n_epochs must be >= 1, got {every_n_epochs}")
        if max_points < 2:
            raise ValueError(f"FeatureTSNE: max_points must be >= 2, got {max_points}")
        if resolution not in RESOLUTIONS:
            raise ValueError(f"FeatureTSNE: resolution must be one of {list(RESOLUTIONS)}, got {resolution!r}")
        self.every_n_epochs = every_n_epochs
        self.max_points = max_points
        self.perplexity = perplexity
        self.resolution = resolution
        self.seed = seed
        self._points: list[Tensor] = []
        self._classes: list[Tensor] = []
        self.last_path: Path | None = None

    def _active(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._points, self._classes = [], []

    @torch.no_grad()
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._active(trainer) or sum(len(p) for p in self._points) >= self.max_points:
            return
        images, labels = batch["image"], batch["mask"]
        if hasattr(pl_module, "memory_features"):
            features = pl_module.memory_features(images)
        else:
            features = pl_module.segmodel(images)["decoder"]
        means, present = image_class_means(features, labels, pl_module.num_classes, pl_module.ignore_index,
                                           self.resolution)
        classes = torch.arange(pl_module.num_classes, device=labels.device).expand_as(present)
        self._points.append(means[present].cpu())
        self._classes.append(classes[present].cpu())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer) or not trainer.is_global_zero or not self._points:
            return
        points = torch.cat(self._points)[: self.max_points].numpy()
        classes = torch.cat(self._classes)[: self.max_points].numpy()
        memory = getattr(pl_module, "memory", None)
        rows = np.zeros((0, points.shape[1]), np.float32)
        row_classes = np.zeros(0, np.int64)
        if memory is not None and hasattr(memory, "initialized") and memory.memory.shape[1] == points.shape[1]:
            seen = (memory.initialized > 0).cpu()
            rows = memory.memory.detach().float().cpu()[seen].numpy()
            row_classes = torch.arange(len(seen))[seen].numpy()
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "tsne"
        path = folder / f"epoch={trainer.current_epoch}-step={trainer.global_step}.png"
        names = getattr(trainer.datamodule, "class_names", None) if trainer.datamodule is not None else None
        palette = getattr(trainer.datamodule, "palette", None) if trainer.datamodule is not None else None
        self.last_path = write_tsne(path, points, classes, rows, row_classes, names, palette, self.perplexity,
                                    self.seed)


def write_tsne(path: Path, points: np.ndarray, classes: np.ndarray, memory: np.ndarray, memory_classes: np.ndarray,
               class_names: list[str] | None = None, palette: list[tuple[int, int, int]] | None = None,
               perplexity: float = 30.0, seed: int = 0) -> Path:
    """t-SNE of `points` and `memory` rows together (2-D), scattered by class (memory rows as stars) into `path`."""
    from matplotlib import colormaps
    from sklearn.manifold import TSNE

    everything = np.concatenate([points, memory]).astype(np.float64)
    if len(everything) < 2:
        raise ValueError(f"FeatureTSNE: t-SNE needs at least 2 points, got {len(everything)}")
    perplexity = min(perplexity, max(len(everything) - 1, 1) / 3)
    embedded = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(everything)
    pixels, rows = embedded[: len(points)], embedded[len(points):]
    present = sorted({int(c) for c in classes} | {int(c) for c in memory_classes})

    def colour(k: int) -> tuple[float, ...]:
        if palette is not None and k < len(palette):
            return tuple(v / 255 for v in palette[k])
        return colormaps["tab20"](k % 20)

    def name(k: int) -> str:
        return class_names[k] if class_names is not None and k < len(class_names) else str(k)

    figure = new_figure(8, 8)
    axes = figure.subplots()
    for k in present:
        mine = classes == k
        axes.scatter(pixels[mine, 0], pixels[mine, 1], s=8, color=colour(k), label=name(k))
        axes.scatter(rows[memory_classes == k, 0], rows[memory_classes == k, 1], s=160, marker="*",
                     color=colour(k), edgecolors="black")
    axes.set_title(f"t-SNE: {len(points)} image-class means, {len(memory)} memory rows (stars)")
    axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2)
    axes.set_xticks([])
    axes.set_yticks([])
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"points": str(len(points)), "memory_points": str(len(memory)),
                "classes": json.dumps([name(k) for k in present])}
    figure.savefig(path, dpi=100, metadata=metadata)
    return path
