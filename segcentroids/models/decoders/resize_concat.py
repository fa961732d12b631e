"""HRNetV2 representation (Wang et al.): the stride 4-32 encoder stages upsampled to stride 4 and concatenated."""

import torch
import torch.nn.functional as F
from torch import nn


class ResizeConcat(nn.Module):
    """Parameter-free neck: bilinear resize of ``features[2:]`` to the stride-4 stage, then channel concat.

    Lets the single-input archs (``fcn``, ``ocr``, ...) run at stride 4 on encoders that cannot be dilated, such as
    HRNet (mmseg's ``input_transform="resize_concat"``).
    """

    def __init__(self, encoder_channels: list[int]) -> None:
        super().__init__()
        self.out_channels = sum(encoder_channels[2:])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Return ``[B, out_channels, H / 4, W / 4]``."""
        size = features[2].shape[-2:]
        resized = [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features[3:]]
        return torch.cat([features[2], *resized], dim=1)
