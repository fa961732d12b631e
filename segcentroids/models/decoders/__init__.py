"""Decoders of ``SegModel``: one module per architecture; each maps the encoder pyramid to ``{"decoder": ...}``."""

from collections.abc import Callable

from torch import nn

from .deeplabv3 import DeepLabV3Decoder
from .deeplabv3plus import DeepLabV3PlusDecoder
from .fcn import FCNConvs, FCNDecoder
from .fpn import FPNDecoder
from .hrnetv2 import HRNetV2Decoder
from .identity import IdentityDecoder
from .ocr import OCRDecoder
from .pspnet import PSPNetDecoder
from .resize_concat import ResizeConcat
from .segformer import SegformerDecoder
from .upernet import UPerNetDecoder

__all__ = [
    "DeepLabV3Decoder",
    "DeepLabV3PlusDecoder",
    "FCNConvs",
    "FCNDecoder",
    "FPNDecoder",
    "HRNetV2Decoder",
    "IdentityDecoder",
    "OCRDecoder",
    "PSPNetDecoder",
    "ResizeConcat",
    "SegformerDecoder",
    "UPerNetDecoder",
    "build_decoder",
]


def _ocr(encoder_channels: list[int], decoder_channels: int | None, encoder_stride: int,
         num_classes: int | None) -> nn.Module:
    if num_classes is None or num_classes < 1:
        raise ValueError(f"arch 'ocr' needs num_classes (its soft object regions are K-way), got {num_classes}")
    return OCRDecoder(encoder_channels, decoder_channels, num_classes)


# every arch but hrnetv2: (encoder_channels, decoder_channels, encoder_stride, num_classes) -> decoder
_BUILDERS: dict[str, Callable[[list[int], int | None, int, int | None], nn.Module]] = {
    "fcn": lambda channels, width, stride, classes: FCNDecoder(channels, width),
    "pspnet": lambda channels, width, stride, classes: PSPNetDecoder(channels, width),
    "deeplabv3": lambda channels, width, stride, classes: DeepLabV3Decoder(channels, width, stride),
    "ocr": _ocr,
    "identity": lambda channels, width, stride, classes: IdentityDecoder(channels),
    "deeplabv3plus": lambda channels, width, stride, classes: DeepLabV3PlusDecoder(channels, width),
    "fpn": lambda channels, width, stride, classes: FPNDecoder(channels, width),
    "upernet": lambda channels, width, stride, classes: UPerNetDecoder(channels, width),
    "segformer": lambda channels, width, stride, classes: SegformerDecoder(channels, width),
}


def build_decoder(
    arch: str,
    encoder_channels: list[int],
    decoder_channels: int | None,
    encoder_stride: int,
    num_classes: int | None,
    stage_channels: list[int] | None = None,
) -> nn.Module:
    """Build the decoder of ``arch`` for an encoder with ``encoder_channels`` whose deepest stage is at
    ``encoder_stride``; ``num_classes`` is the number of soft object regions of ``ocr`` (unused otherwise);
    ``stage_channels`` are ``hrnetv2``'s per-stage reductions; only ``hrnetv2`` takes ``decoder_channels=None``."""
    if arch == "hrnetv2":
        return HRNetV2Decoder(encoder_channels, decoder_channels, stage_channels)
    if stage_channels is not None:
        raise ValueError(f"stage_channels applies to arch 'hrnetv2' only, got it with arch {arch!r}")
    if arch != "identity" and (not decoder_channels or decoder_channels < 1):
        raise ValueError(f"arch {arch!r} needs decoder_channels >= 1, got {decoder_channels}")
    if arch not in _BUILDERS:
        raise ValueError(f"unknown arch {arch!r}")
    return _BUILDERS[arch](encoder_channels, decoder_channels, encoder_stride, num_classes)
