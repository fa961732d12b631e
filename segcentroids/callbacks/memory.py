"""Callbacks around a class memory: feed it each training step (`MemoryUpdate`) and picture it
(`MemorySimilarityLogger`)."""

from __future__ import annotations

from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from torch import Tensor, nn


def resolve_attribute(module: nn.Module, path: str) -> Any:
    """`module.a.b` for `path="a.b"`, with an error naming the missing part."""
    target: Any = module
    for part in path.split("."):
        if not hasattr(target, part):
            raise AttributeError(f"{type(module).__name__} has no attribute {path!r} (missing {part!r})")
        target = getattr(target, part)
    return target


class MemoryUpdate(L.Callback):
    """After each training batch, `module.<memory>.update(features, labels, momentum)`.

    `features` is `outputs["outputs"][features_key]`: the detached tensor the training step returned (the Baseline
    returns `{"loss", "outputs": {name: tensor.detach()}}`); `labels` is `batch[labels_key]`; `momentum` is
    `module.<momentum>` (set by a `MomentumSchedule`). Any method with a memory exposing `update` can use it.
    """

    def __init__(self, memory: str = "memory", features_key: str = "memory_features",
                 momentum: str = "memory_momentum", labels_key: str = "mask") -> None:
        self.memory = memory
        self.features_key = features_key
        self.momentum = momentum
        self.labels_key = labels_key

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if outputs is None:  # the step was skipped
            return
        step_outputs = outputs.get("outputs", {}) if isinstance(outputs, dict) else {}
        if self.features_key not in step_outputs:
            raise KeyError(f"MemoryUpdate: the training step returned no outputs[{self.features_key!r}] "
                           f"(got {sorted(step_outputs)})")
        memory = resolve_attribute(pl_module, self.memory)
        momentum = resolve_attribute(pl_module, self.momentum)
        memory.update(step_outputs[self.features_key], batch[self.labels_key], momentum)


def cosine_similarity_matrix(memory: Tensor) -> Tensor:
    """`[K, K]` cosine similarities between the rows of a memory."""
    rows = torch.nn.functional.normalize(memory.float(), dim=1, eps=1e-8)
    return rows @ rows.T


def similarity_image(similarity: Tensor, cell: int = 8) -> np.ndarray:
    """A `[K, K]` matrix in [-1, 1] as an RGB uint8 heat map `[K*cell, K*cell, 3]` (blue -1, red +1)."""
    values = ((similarity.clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
    values = np.kron(values, np.ones((cell, cell), dtype=np.uint8))
    return cv2.cvtColor(cv2.applyColorMap(values, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


class MemorySimilarityLogger(L.Callback):
    """Every `every_n_steps` training steps, logs the class-by-class cosine
    similarity of `module.<memory>.memory` as an image `train/<memory>_similarity` and its mean off-diagonal value
    as a scalar (initialised classes only)."""

    def __init__(self, memory: str = "memory", every_n_steps: int = 500, cell: int = 8) -> None:
        if every_n_steps < 1:
            raise ValueError(f"MemorySimilarityLogger: every_n_steps must be >= 1, got {every_n_steps}")
        self.memory = memory
        self.every_n_steps = every_n_steps
        self.cell = cell

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        memory = resolve_attribute(pl_module, self.memory)
        similarity = cosine_similarity_matrix(memory.memory)
        seen = memory.initialized > 0
        pair = (seen[:, None] & seen[None, :]).float() * (1 - torch.eye(len(seen), device=seen.device))
        off_diagonal = (similarity * pair).sum() / pair.sum().clamp_min(1)
        pl_module.log(f"train/{self.memory}_mean_similarity", off_diagonal, on_step=True, on_epoch=False,
                      batch_size=1)
        experiment = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
        if trainer.is_global_zero and hasattr(experiment, "add_image"):
            experiment.add_image(f"train/{self.memory}_similarity", similarity_image(similarity, self.cell),
                                 trainer.global_step, dataformats="HWC")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._log(trainer, pl_module)
