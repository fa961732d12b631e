"""FCN decoder: mmseg's FCNHead without its classifier (Long et al., dilated as in mmseg's ``fcn_r50-d8``)."""

import torch
from segmentation_models_pytorch.base.modules import Conv2dReLU
from torch import nn


class FCNConvs(nn.Module):
    """``num_convs`` 3x3 conv-BN-ReLU blocks; with ``concat_input`` a last 3x3 block on ``cat[input, convs(input)]``."""

    def __init__(self, in_channels: int, channels: int, num_convs: int = 2, concat_input: bool = True) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        self.convs = nn.Sequential(
            *[Conv2dReLU(in_channels if i == 0 else channels, channels, 3, padding=1) for i in range(num_convs)]
        )
        self.conv_cat = Conv2dReLU(in_channels + channels, channels, 3, padding=1) if concat_input else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, in_channels, h, w]`` to ``[B, channels, h, w]``."""
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return out


class FCNDecoder(nn.Module):
    """Two 3x3 convs on the deepest encoder stage, concatenated with their input, fused by a third 3x3 conv."""

    def __init__(self, encoder_channels: list[int], decoder_channels: int) -> None:
        super().__init__()
        self.head = FCNConvs(encoder_channels[-1], decoder_channels, num_convs=2, concat_input=True)
        self.out_channels = decoder_channels

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return ``{"decoder": features}`` at the stride of the deepest encoder stage."""
        return {"decoder": self.head(features[-1])}
