"""No decoder: the deepest encoder stage itself (Segmenter's linear decoder is this + the method's 1x1 classifier)."""

import torch
from torch import nn


class IdentityDecoder(nn.Module):
    """Return the deepest encoder stage unchanged."""

    def __init__(self, encoder_channels: list[int]) -> None:
        super().__init__()
        self.out_channels = encoder_channels[-1]

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return ``{"decoder": features[-1]}``."""
        return {"decoder": features[-1]}
