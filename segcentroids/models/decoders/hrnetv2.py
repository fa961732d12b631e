"""HRNetV2 decoder (Wang et al., TPAMI 2020): the stride 4-32 encoder stages resized to stride 4 and concatenated,
then mmseg's ``fcn_hr`` head convolution (one 1x1 conv-BN-ReLU), without its classifier."""

import torch
from segmentation_models_pytorch.base.modules import Conv2dReLU
from torch import nn

from .resize_concat import ResizeConcat

STAGES = slice(2, None)
"""The stride 4, 8, 16 and 32 entries of an encoder pyramid (entries 0 and 1 are strides 1 and 2)."""


class HRNetV2Decoder(nn.Module):
    """Optional per-stage 1x1 conv-BN-ReLU reductions (``stage_channels``; Specialize and Fuse's light ResNet-101
    decoder uses 48, 96, 192, 384 so that D = 720 as on HRNet-W48), :class:`ResizeConcat`, then a 1x1 conv-BN-ReLU to
    ``decoder_channels``; with ``decoder_channels=None`` the concatenation itself is the output (D channels)."""

    def __init__(
        self, encoder_channels: list[int], decoder_channels: int | None, stage_channels: list[int] | None = None
    ) -> None:
        super().__init__()
        stages = list(encoder_channels[STAGES])
        if stage_channels is not None and len(stage_channels) != len(stages):
            raise ValueError(
                f"stage_channels needs one entry per stride 4-32 encoder stage ({len(stages)}), got {stage_channels}"
            )
        self.reduce = None
        if stage_channels is not None:
            self.reduce = nn.ModuleList(Conv2dReLU(c_in, c_out, 1) for c_in, c_out in zip(stages, stage_channels))
            stages = list(stage_channels)
        self.concat = ResizeConcat([*encoder_channels[:2], *stages])
        self.project = Conv2dReLU(self.concat.out_channels, decoder_channels, 1) if decoder_channels else None
        self.out_channels = decoder_channels or self.concat.out_channels

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return ``{"decoder": [B, out_channels, H / 4, W / 4]}``."""
        if self.reduce is not None:
            features = [*features[:2], *(reduce(stage) for reduce, stage in zip(self.reduce, features[STAGES]))]
        fused = self.concat(features)
        return {"decoder": fused if self.project is None else self.project(fused)}
