"""Callbacks around a class memory: initialise it from the training data (`MemoryInitialization`), feed it each
training step (`MemoryUpdate`) and picture it (`MemorySimilarityLogger`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from segcentroids.runs import tensorboard_of


class MemoryUpdate(L.Callback):
    """After each training batch, `memory.update(features, labels)` with the memory's own `momentum` buffer.

    `features` is `outputs["outputs"][features_key]`: the detached tensor the training step returned (the Baseline
    returns `{"loss", "outputs": {name: tensor.detach()}}`); `labels` is `batch[labels_key]`. Any memory exposing
    `update(features, labels)` can be fed this way.
    """

    def __init__(self, memory: nn.Module, features_key: str = "memory_features", labels_key: str = "mask") -> None:
        self.memory = memory
        self.features_key = features_key
        self.labels_key = labels_key

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if outputs is None:  # the step was skipped
            return
        step_outputs = outputs.get("outputs", {}) if isinstance(outputs, dict) else {}
        if self.features_key not in step_outputs:
            raise KeyError(f"MemoryUpdate: the training step returned no outputs[{self.features_key!r}] "
                           f"(got {sorted(step_outputs)})")
        self.memory.update(step_outputs[self.features_key], batch[self.labels_key])


class MemoryInitialization(L.Callback):
    """MCIBI's "clustering" initialisation (Table 2): before the first training step, the row of every class seen is
    set to the centre of a one-cluster cosine k-means over that class's per-image mean features, taken by
    `features(images)` (the module in training mode, no grad, buffers restored afterwards) on `num_batches` training
    batches (None: an epoch, as limited by `limit_train_batches`).

    With one cluster per class (one memory row), k-means assigns every point to it whatever the similarity and its
    centre is the mean of the points: the mean over images of the class's per-image mean feature. Under
    `torch.distributed` the sums and counts are all-reduced, so every rank sets the same rows. Skipped when training
    resumes from a checkpoint or the memory already holds a row. Classes not seen stay uninitialised (set at first
    sight during training).
    """

    def __init__(self, memory: nn.Module, features: Callable[[Tensor], Tensor], num_batches: int | None = None,
                 images_key: str = "image", labels_key: str = "mask") -> None:
        if num_batches is not None and num_batches < 1:
            raise ValueError(f"MemoryInitialization: num_batches must be >= 1 or None, got {num_batches}")
        self.memory = memory
        self.features = features
        self.num_batches = num_batches
        self.images_key = images_key
        self.labels_key = labels_key

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        memory, extract = self.memory, self.features
        if trainer.ckpt_path is not None or bool(memory.initialized.any()):
            return
        sums = memory.memory.new_zeros(memory.memory.shape)
        counts = memory.initialized.new_zeros(memory.initialized.shape)
        limit = self.num_batches
        if limit is None:  # one epoch as the trainer counts it (limit_train_batches, fast_dev_run)
            epoch = getattr(trainer, "num_training_batches", None)
            limit = epoch if isinstance(epoch, int) else None
        # features as the training steps compute them (batch statistics in normalisation layers), so the rows start
        # in the space they are compared with, also for a network trained from scratch, whose running statistics
        # mean nothing yet; every buffer (running statistics, counters) is put back afterwards
        buffers = {name: buffer.clone() for name, buffer in pl_module.named_buffers()}
        was_training = pl_module.training
        pl_module.train()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                for index, batch in enumerate(trainer.train_dataloader):
                    if limit is not None and index >= limit:
                        break
                    images = batch[self.images_key].to(pl_module.device)
                    labels = batch[self.labels_key].to(pl_module.device)
                    means, present = memory.image_class_means(extract(images), labels)
                    sums += means.sum(0)
                    counts += present.sum(0)
        finally:
            pl_module.train(was_training)
            for name, buffer in pl_module.named_buffers():
                buffer.copy_(buffers[name])
        memory.initialize_from_sums(sums, counts)  # all-reduced under torch.distributed


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
    """Every `every_n_steps` training steps, logs the class-by-class cosine similarity of `memory.memory` as an
    image `train/<name>_similarity` and its mean off-diagonal value as a scalar (initialised classes only)."""

    def __init__(self, memory: nn.Module, name: str = "memory", every_n_steps: int = 500, cell: int = 8) -> None:
        if every_n_steps < 1:
            raise ValueError(f"MemorySimilarityLogger: every_n_steps must be >= 1, got {every_n_steps}")
        self.memory = memory
        self.name = name
        self.every_n_steps = every_n_steps
        self.cell = cell

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        memory = self.memory
        similarity = cosine_similarity_matrix(memory.memory)
        seen = memory.initialized > 0
        pair = (seen[:, None] & seen[None, :]).float() * (1 - torch.eye(len(seen), device=seen.device))
        off_diagonal = (similarity * pair).sum() / pair.sum().clamp_min(1)
        pl_module.log(f"train/{self.name}_mean_similarity", off_diagonal, on_step=True, on_epoch=False,
                      batch_size=1)
        writer = tensorboard_of(trainer)
        if trainer.is_global_zero and writer is not None:
            writer.add_image(f"train/{self.name}_similarity", similarity_image(similarity, self.cell),
                                 trainer.global_step, dataformats="HWC")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._log(trainer, pl_module)
