"""Multi-group visual semantic centroids (MVSC, Sec. 3.2): G groups of K learnable class centroids in feature space."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Centroids(nn.Module):
    """G x K x D learnable centroids (V_1 ... V_G of Sec. 3.2), truncated-normal init; used only in training.

    Args:
        groups: number of centroid groups G.
        num_classes: number of classes K.
        dim: feature channels D (the classifier's input channels).
        std: standard deviation of the truncated-normal init (cut at +-2 std).
    """

    def __init__(self, groups: int, num_classes: int, dim: int, std: float = 0.02) -> None:
        super().__init__()
        for key, value in (("groups", groups), ("num_classes", num_classes), ("dim", dim)):
            if value < 1:
                raise ValueError(f"Centroids: {key} must be >= 1, got {value}")
        if std <= 0:
            raise ValueError(f"Centroids: std must be > 0, got {std}")
        self.weight = nn.Parameter(torch.empty(groups, num_classes, dim))
        nn.init.trunc_normal_(self.weight, std=std, a=-2 * std, b=2 * std)

    @property
    def groups(self) -> int:
        return self.weight.shape[0]

    def forward(self) -> Tensor:
        """The centroid groups `[G, K, D]`."""
        return self.weight

    def global_centroids(self) -> Tensor:
        """Global centroid V_G `[K, D]`: the mean over groups."""
        return self.weight.mean(dim=0)
