"""Auxiliary heads."""

import torch
from torch import nn

from segcentroids.models.decoders.fcn import FCNConvs


class FCNHead(nn.Module):
    """mmseg's auxiliary ``FCNHead``: ``num_convs`` 3x3 conv-BN-ReLU, dropout, 1x1 conv to class logits.

    The Baseline puts it on ``out["encoder"][-2]`` (``SegModel.aux_channels`` channels), loss weight 0.4 in the
    paper configs; used only in training.
    """

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 256, num_convs: int = 1, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.convs = FCNConvs(in_channels, channels, num_convs=num_convs, concat_input=False)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, h, w]`` -> logits ``[B, num_classes, h, w]``."""
        return self.classifier(self.dropout(self.convs(features)))
