"""PSPNet decoder (Zhao et al.): pyramid pooling (1, 2, 3, 6) on the deepest stage + 3x3 bottleneck.

smp's UPerNet ``PSPModule`` is exactly mmseg's ``PSPHead`` without its classifier (each branch -> decoder_channels,
3x3 conv-BN-ReLU on ``cat[input, branches]``); smp's own ``PSPDecoder`` (branches -> C/4, 1x1 fuse) is not used.
"""

import torch
from segmentation_models_pytorch.decoders.upernet.decoder import PSPModule


class PSPNetDecoder(PSPModule):
    """Pyramid pooling module on ``features[-1]``."""

    def __init__(self, encoder_channels: list[int], decoder_channels: int) -> None:
        super().__init__(encoder_channels[-1], decoder_channels, sizes=(1, 2, 3, 6))
        self.out_channels = decoder_channels

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Return ``{"decoder": features}`` at the stride of the deepest encoder stage."""
        return {"decoder": super().forward(features[-1])}
