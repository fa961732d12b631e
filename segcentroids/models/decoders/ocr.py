"""OCR decoder (Yuan et al., object-contextual representations), as mmseg's OCRNet without its classifier.

A coarse K-way classifier (mmseg's first cascade head: FCN, one 3x3 conv, 256 channels) on the encoder's third stage
gives soft object regions; they are returned as ``"soft_regions"`` logits so that the method supervises them with
cross-entropy (weight 0.4 in mmseg's configs). Object region representations = region-softmax-weighted sums of the
pixel features; pixel-region relations = attention from pixels to regions; augmented representation =
1x1 conv-BN-ReLU on ``cat[object context, pixel features]``.
"""

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base.modules import Conv2dReLU
from torch import nn

from .fcn import FCNConvs

REGION_CHANNELS = 256
"""Channels of the soft-region head's conv (mmseg ``ocrnet_r50-d8``: FCNHead channels=256)."""


class ObjectAttentionBlock(nn.Module):
    """Pixel-region relation: queries from pixels, keys/values from object region representations."""

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        self.query = nn.Sequential(Conv2dReLU(channels, key_channels, 1), Conv2dReLU(key_channels, key_channels, 1))
        self.key = nn.Sequential(Conv2dReLU(channels, key_channels, 1), Conv2dReLU(key_channels, key_channels, 1))
        self.value = Conv2dReLU(channels, key_channels, 1)
        self.out = Conv2dReLU(key_channels, channels, 1)
        self.scale = key_channels**-0.5

    def forward(self, pixels: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """``pixels [B, C, h, w]``, ``regions [B, C, K, 1]`` -> object contextual representation ``[B, C, h, w]``."""
        batch, _, height, width = pixels.shape
        query = self.query(pixels).flatten(2).transpose(1, 2)  # B, hw, Ck
        key = self.key(regions).flatten(2)  # B, Ck, K
        value = self.value(regions).flatten(2).transpose(1, 2)  # B, K, Ck
        relation = torch.softmax(torch.bmm(query, key) * self.scale, dim=-1)  # B, hw, K
        context = torch.bmm(relation, value).transpose(1, 2).reshape(batch, -1, height, width)
        return self.out(context)


class OCRDecoder(nn.Module):
    """3x3 bottleneck on the deepest stage, then OCR guided by soft regions predicted from the third stage."""

    def __init__(self, encoder_channels: list[int], decoder_channels: int, num_classes: int) -> None:
        super().__init__()
        self.region_head = nn.Sequential(
            FCNConvs(encoder_channels[-2], REGION_CHANNELS, num_convs=1, concat_input=False),
            nn.Dropout2d(0.1),
            nn.Conv2d(REGION_CHANNELS, num_classes, 1),
        )
        self.bottleneck = Conv2dReLU(encoder_channels[-1], decoder_channels, 3, padding=1)
        self.object_attention = ObjectAttentionBlock(decoder_channels, decoder_channels // 2)
        self.fuse = Conv2dReLU(2 * decoder_channels, decoder_channels, 1)
        self.out_channels = decoder_channels

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return ``{"decoder": [B, C, h, w], "soft_regions": [B, K, h, w] logits}`` at the deepest stage's stride."""
        pixels = self.bottleneck(features[-1])
        soft_regions = self.region_head(features[-2])
        if soft_regions.shape[-2:] != pixels.shape[-2:]:
            soft_regions = F.interpolate(soft_regions, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
        region_weights = torch.softmax(soft_regions.flatten(2), dim=-1)  # B, K, hw: each region sums to one
        regions = torch.bmm(region_weights, pixels.flatten(2).transpose(1, 2))  # B, K, C
        regions = regions.transpose(1, 2).unsqueeze(-1)  # B, C, K, 1
        context = self.object_attention(pixels, regions)
        return {"decoder": self.fuse(torch.cat([context, pixels], dim=1)), "soft_regions": soft_regions}
