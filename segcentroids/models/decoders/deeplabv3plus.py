"""DeepLabV3+ decoder (Chen et al. 2018): smp's separable ASPP on the stride-8 stage, fused with the stride-4 stage."""

import torch
from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3PlusDecoder as _SmpDeepLabV3PlusDecoder

from .deeplabv3 import atrous_rates

ENCODER_STRIDE = 8
"""DeepLabV3+ runs its encoder dilated to stride 8 (as mmseg's ``deeplabv3plus_r50-d8``); the decoder is at stride 4."""


class DeepLabV3PlusDecoder(_SmpDeepLabV3PlusDecoder):
    """Separable ASPP at stride 8, upsampled x2 and fused with a 48-channel projection of the stride-4 stage."""

    def __init__(self, encoder_channels: list[int], decoder_channels: int) -> None:
        super().__init__(
            encoder_channels=encoder_channels,
            encoder_depth=len(encoder_channels) - 1,
            out_channels=decoder_channels,
            atrous_rates=atrous_rates(ENCODER_STRIDE),
            output_stride=ENCODER_STRIDE,
            aspp_separable=True,
            aspp_dropout=0.0,
        )
        self.out_channels = decoder_channels

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Return ``{"decoder": features}`` at stride 4."""
        return {"decoder": super().forward(features)}
