"""Semantic FPN decoder (Kirillov et al., panoptic FPN), as smp's ``FPNDecoder`` with any channel count."""

import math

import torch
from segmentation_models_pytorch.decoders.fpn.decoder import FPNBlock
from torch import nn

PYRAMID_CHANNELS = 256
GROUPS = 32


def _conv_gn_relu(in_channels: int, out_channels: int, upsample: bool) -> nn.Sequential:
    layers = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(math.gcd(GROUPS, out_channels), out_channels),
        nn.ReLU(inplace=True),
    ]
    if upsample:
        layers.append(nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=True))
    return nn.Sequential(*layers)


def _segmentation_block(in_channels: int, out_channels: int, upsamples: int) -> nn.Sequential:
    """smp's ``SegmentationBlock``: ``max(upsamples, 1)`` conv-GN-ReLU blocks, each followed by x2 upsampling."""
    return nn.Sequential(
        *[
            _conv_gn_relu(in_channels if i == 0 else out_channels, out_channels, upsample=upsamples > 0)
            for i in range(max(upsamples, 1))
        ]
    )


class FPNDecoder(nn.Module):
    """FPN (256 channels, smp's ``FPNBlock`` laterals) over the stride 4-32 stages; per level 3x3 conv-GN-ReLU blocks
    with x2 bilinear upsampling down to stride 4; levels summed. No dropout inside.

    GroupNorm has 32 groups, or ``gcd(32, decoder_channels)`` when ``decoder_channels`` is not a multiple of 32.
    """

    def __init__(self, encoder_channels: list[int], decoder_channels: int) -> None:
        super().__init__()
        c2, c3, c4, c5 = encoder_channels[-4:]
        self.p5 = nn.Conv2d(c5, PYRAMID_CHANNELS, kernel_size=1)
        self.p4 = FPNBlock(PYRAMID_CHANNELS, c4)
        self.p3 = FPNBlock(PYRAMID_CHANNELS, c3)
        self.p2 = FPNBlock(PYRAMID_CHANNELS, c2)
        self.seg_blocks = nn.ModuleList(
            [_segmentation_block(PYRAMID_CHANNELS, decoder_channels, upsamples) for upsamples in (3, 2, 1, 0)]
        )
        self.out_channels = decoder_channels

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return ``{"decoder": features}`` at stride 4."""
        c2, c3, c4, c5 = features[-4:]
        p5 = self.p5(c5)
        p4 = self.p4(p5, c4)
        p3 = self.p3(p4, c3)
        p2 = self.p2(p3, c2)
        levels = [block(level) for block, level in zip(self.seg_blocks, (p5, p4, p3, p2))]
        return {"decoder": torch.stack(levels).sum(dim=0)}
