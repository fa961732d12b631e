"""Projection head for pixel embeddings (contrastive losses, training only)."""

from __future__ import annotations

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
        """`[B, C, h, w]` -> `[B, embed_dim, h, w]` (not normalised; the loss normalises)."""
        return super().forward(features)
