"""``SegModel``: encoder + decoder from segmentation-models-pytorch (plus FCN and OCR written here), no classifier."""

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segcentroids.ops.tracing import is_tracing

from .decoders import IdentityDecoder, ResizeConcat, build_decoder
from .decoders.deeplabv3plus import ENCODER_STRIDE as DEEPLABV3PLUS_ENCODER_STRIDE
from .encoders import ViTEncoder, build_encoder

DILATED_ARCHS = ("fcn", "pspnet", "deeplabv3", "ocr")
"""Decoders on the deepest stage of a dilated encoder (``output_stride`` 8, 16 or 32), or at ``output_stride`` 4 on the
HRNetV2 representation of an undilated encoder (:class:`ResizeConcat`)."""
PYRAMID_ARCHS = ("deeplabv3plus", "fpn", "upernet", "segformer", "hrnetv2")
"""Decoders that fuse the encoder pyramid down to stride 4."""
ARCHS = (*DILATED_ARCHS, *PYRAMID_ARCHS, "identity")
DILATED_DEFAULT_STRIDE = 8
PYRAMID_STRIDE = 4


NULL_STRINGS = frozenset({"None", "null", "none", ""})


class SegModel(nn.Module):
    """Encoder + decoder returning named features; the method adds the classifier.

    Args:
        arch: ``fcn``, ``pspnet``, ``deeplabv3``, ``ocr`` (deepest stage of a dilated encoder, default stride 8;
            at ``output_stride=4`` on the stride 4-32 stages resized to stride 4 and concatenated, as HRNetV2),
            ``deeplabv3plus``, ``fpn``, ``upernet``, ``segformer``, ``hrnetv2`` (stride 4; ``hrnetv2`` is the
            HRNetV2 concatenation of the stride 4-32 stages + one 1x1 conv, mmseg's ``fcn_hr``), or ``identity``
            (no decoder: the deepest encoder stage, e.g. a ViT for Segmenter; default stride = the encoder's own).
        encoder_name: an smp encoder (``resnet50``, ``mit_b0``, ...) or ``tu-<timm model>`` (a plain ViT such as
            ``tu-vit_tiny_patch16_224`` is supported with ``identity`` and the dilated archs at its stride 16).
        encoder_weights: pretrained weights (``"imagenet"``; for ``tu-`` any value loads timm's default tag) or None.
        in_channels: input image channels.
        decoder_channels: channels of ``out["decoder"]`` (ignored by ``identity``); ``hrnetv2`` with None outputs the
            concatenation itself (no 1x1 conv, D = the sum of the stage channels).
        output_stride: stride of ``out["decoder"]``; None picks the arch's default (8, 4, or the encoder's own).
        num_classes: number of OCR soft object regions (= the dataset's classes); required by ``ocr`` only.
        stage_channels: ``hrnetv2`` only: reduce each stride 4-32 stage to these channels (1x1 conv-BN-ReLU) before
            concatenating (Specialize and Fuse's light ResNet-101 decoder: ``[48, 96, 192, 384]``, D = 720).
        encoder_kwargs: extra ``timm.create_model`` arguments for ``tu-`` encoders (HRNet defaults to
            ``feature_location=""``, i.e. the HRNetV2 branches).

    ``forward(images)`` returns ``{"encoder": list[Tensor], "decoder": Tensor}``, and for ``ocr`` also
    ``"soft_regions"``: the K-way coarse region logits at the decoder's stride, to be supervised with cross-entropy.
    Inputs of any size are accepted: sides that are not multiples of ``size_divisor`` (the stride of the deepest
    encoder stage) are zero-padded at the bottom/right and every output is cropped back to ``ceil(side / stride)``.
    """

    def __init__(
        self,
        arch: str = "fcn",
        encoder_name: str = "resnet50",
        encoder_weights: str | None = "imagenet",
        in_channels: int = 3,
        decoder_channels: int | None = 512,
        output_stride: int | None = None,
        num_classes: int | None = None,
        stage_channels: list[int] | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if encoder_weights in NULL_STRINGS:  # jsonargparse passes `...encoder_weights=null` nested in init_args as text
            encoder_weights = None
        arch = arch.lower()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}, expected one of {list(ARCHS)}")
        purpose = f"arch {arch!r}"
        if arch in PYRAMID_ARCHS:
            if output_stride not in (None, PYRAMID_STRIDE):
                raise ValueError(f"arch {arch!r} outputs stride {PYRAMID_STRIDE}, got output_stride={output_stride}")
            encoder_stride = DEEPLABV3PLUS_ENCODER_STRIDE if arch == "deeplabv3plus" else None
        else:
            allowed = (4, 8, 16, 32) if arch in DILATED_ARCHS else (8, 16, 32)
            if output_stride not in (None, *allowed):
                raise ValueError(f"arch {arch!r} supports output_stride {allowed}, got {output_stride}")
            if output_stride == PYRAMID_STRIDE:  # undilated encoder, stages fused by ResizeConcat
                encoder_stride = None
            else:
                encoder_stride = output_stride or (DILATED_DEFAULT_STRIDE if arch in DILATED_ARCHS else None)
        self.encoder = build_encoder(
            encoder_name, in_channels, encoder_weights, encoder_stride, purpose, encoder_kwargs
        )
        uses_pyramid = arch in PYRAMID_ARCHS or output_stride == PYRAMID_STRIDE
        if uses_pyramid and isinstance(self.encoder, ViTEncoder):
            raise ValueError(
                f"arch {arch!r} at output stride {PYRAMID_STRIDE} fuses a multi-scale pyramid; encoder "
                f"{encoder_name!r} is a plain ViT with a single stride: use arch 'identity' or a dilated arch at "
                f"its stride"
            )
        self.encoder_channels: list[int] = list(self.encoder.out_channels)
        self.aux_channels: int = self.encoder_channels[-2]
        use_neck = arch in DILATED_ARCHS and output_stride == PYRAMID_STRIDE
        self.neck = ResizeConcat(self.encoder_channels) if use_neck else None
        self.output_stride: int = PYRAMID_STRIDE if uses_pyramid else self.encoder.output_stride
        # with the neck, the decoder reads its one input as both the "third" and the "deepest" stage (OCR uses both)
        decoder_channels_in = self.encoder_channels if self.neck is None else [self.neck.out_channels] * 2
        self.decoder = build_decoder(
            arch, decoder_channels_in, decoder_channels, self.output_stride, num_classes, stage_channels
        )
        self.out_channels: int = self.decoder.out_channels
        self.size_divisor: int = self.encoder.output_stride
        self.arch = arch

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        """``images [B, in_channels, H, W]`` -> ``{"encoder": pyramid, "decoder": [B, out_channels, H/os, W/os]}``."""
        height, width = images.shape[-2:]
        pad_height, pad_width = -height % self.size_divisor, -width % self.size_divisor
        if not is_tracing() and not (pad_height or pad_width):  # traced: the padding path, zero pad included
            return self._forward_features(images)
        padded_height, padded_width = height + pad_height, width + pad_width

        def crop(tensor: torch.Tensor) -> torch.Tensor:
            stride_h, stride_w = padded_height // tensor.shape[-2], padded_width // tensor.shape[-1]
            # ceil division with non-negative operands only: ONNX's integer Div truncates towards zero
            return tensor[..., : (height + stride_h - 1) // stride_h, : (width + stride_w - 1) // stride_w]

        out = self._forward_features(F.pad(images, (0, pad_width, 0, pad_height)))
        return {name: [crop(f) for f in value] if name == "encoder" else crop(value) for name, value in out.items()}

    def encoder_only(self) -> "SegModel":
        """A SegModel over this one's encoder (the same module, shared) without its decoder or neck: arch
        ``identity``, ``out["decoder"]`` is the deepest encoder stage. For a method whose own modules replace the
        decoder (MCIBI on FCN); this SegModel is left as it is."""
        model = copy.copy(self)  # the plain attributes; the submodules are set below, on a dict of its own
        model._modules = {"encoder": self.encoder, "neck": None, "decoder": IdentityDecoder(self.encoder_channels)}
        model.arch, model.out_channels, model.output_stride = "identity", self.encoder_channels[-1], self.size_divisor
        return model

    def _forward_features(self, images: torch.Tensor) -> dict[str, Any]:
        features = self.encoder(images)
        if self.neck is None:
            return {"encoder": features, **self.decoder(features)}
        fused = self.neck(features)
        return {"encoder": features, **self.decoder([fused, fused])}
