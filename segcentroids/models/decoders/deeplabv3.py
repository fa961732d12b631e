"""DeepLabV3 decoder (Chen et al. 2017): smp's ASPP + 3x3 bottleneck on the deepest stage."""

import torch
from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3Decoder as _SmpDeepLabV3Decoder


def atrous_rates(encoder_stride: int) -> tuple[int, int, int]:
    """ASPP rates (12, 24, 36) at output stride 8, scaled to keep the same field of view at other strides."""
    return tuple(rate * 8 // encoder_stride for rate in (12, 24, 36))  # type: ignore[return-value]


class DeepLabV3Decoder(_SmpDeepLabV3Decoder):
    """ASPP (1x1, three dilated 3x3, image pooling) -> 1x1 projection -> 3x3 conv-BN-ReLU; no dropout inside."""

    def __init__(self, encoder_channels: list[int], decoder_channels: int, encoder_stride: int) -> None:
        super().__init__(
            in_channels=encoder_channels[-1],
            out_channels=decoder_channels,
            atrous_rates=atrous_rates(encoder_stride),
            aspp_separable=False,
            aspp_dropout=0.0,
        )
        self.out_channels = decoder_channels

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Return ``{"decoder": features}`` at the stride of the deepest encoder stage."""
        return {"decoder": super().forward(features)}
