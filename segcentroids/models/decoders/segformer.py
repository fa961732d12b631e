"""SegFormer decoder (Xie et al.): smp's all-MLP head over the four stride 4-32 stages, fused at stride 4."""

import torch
from segmentation_models_pytorch.decoders.segformer.decoder import SegformerDecoder as _SmpSegformerDecoder


class SegformerDecoder(_SmpSegformerDecoder):
    """Per-stage linear -> upsample to stride 4 -> concat -> 1x1 conv-BN-ReLU.

    The stride-2 stage of CNN encoders is dropped, so every encoder feeds the paper's four stages.
    """

    def __init__(self, encoder_channels: list[int], decoder_channels: int) -> None:
        channels = list(encoder_channels)
        channels[1] = 0
        super().__init__(
            encoder_channels=channels,
            encoder_depth=len(encoder_channels) - 1,
            segmentation_channels=decoder_channels,
        )
        self.out_channels = decoder_channels

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Return ``{"decoder": features}`` at stride 4."""
        features = list(features)
        features[1] = features[1][:, :0]
        return {"decoder": super().forward(features)}
