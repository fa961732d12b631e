"""UPerNet decoder (Xiao et al.): smp's PPM on the stride-32 stage + FPN over strides 4-16, fused at stride 4."""

import torch
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder as _SmpUPerNetDecoder


class UPerNetDecoder(_SmpUPerNetDecoder):
    """smp's UPerNet decoder (it LayerNorms each encoder stage before the laterals)."""

    def __init__(self, encoder_channels: list[int], decoder_channels: int) -> None:
        super().__init__(
            encoder_channels=encoder_channels,
            encoder_depth=len(encoder_channels) - 1,
            decoder_channels=decoder_channels,
        )
        self.out_channels = decoder_channels

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Return ``{"decoder": features}`` at stride 4."""
        return {"decoder": super().forward(features)}
