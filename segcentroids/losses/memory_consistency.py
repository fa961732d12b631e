"""Representation consistent learning (MCIBI Eq. 15, 17): the final classifier must also classify the memory rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def representation_consistency_loss(classifier: nn.Module, memory: Tensor, initialized: Tensor) -> Tensor:
    """Cross-entropy of `classifier` (H2) on the memory rows reshaped to `[K, C, 1, 1]` (Eq. 15) against their class
    index, averaged over the initialised classes (Eq. 17; rows never seen yet are all zero and take no loss).

    The memory is a constant (detached); gradients reach the classifier only. All K rows go through the classifier,
    so the shapes never depend on the data. Returns a float32 scalar, 0 (with a graph) if no class is initialised.
    """
    num_classes = memory.shape[0]
    logits = classifier(memory.detach()[:, :, None, None]).flatten(1).float()  # O^M, [K, K]
    target = torch.arange(num_classes, device=memory.device)
    per_class = F.cross_entropy(logits, target, reduction="none")
    weights = initialized.float()
    return (per_class * weights).sum() / weights.sum().clamp_min(1.0)
