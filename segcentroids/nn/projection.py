"""Projection head for pixel embeddings (contrastive losses, training only)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ProjectionHead(nn.Sequential):
    """conv1x1-BN-ReLU, conv1x1 to `embed_dim` channels (SimCLR-style MLP applied per pixel)."""

    def __init__(self, in_channels: int, embed_dim: int = 256, hidden_channels: int | None = None) -> None:
        hidden = hidden_channels or in_channels
        super().__init__(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, embed_dim, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        """`[B, C, h, w]` -> `[B, embed_dim, h, w]` (not normalised; the loss normalises), in channels-last memory:
        the last 1x1 conv runs as one product per image with the pixels as rows (its weights, not its module call:
        hooks on `self[3]` do not fire), so a loss gathers pixels as contiguous rows without a transposing copy."""
        hidden = self[2](self[1](self[0](features)))
        conv = self[3]
        b, _, h, w = hidden.shape
        weight = conv.weight.flatten(1).t().expand(b, -1, -1)  # [B, C, D]
        rows = torch.baddbmm(conv.bias, hidden.flatten(2).transpose(1, 2), weight)  # [B, h*w, D]
        return rows.view(b, h, w, -1).permute(0, 3, 1, 2)
