"""Encoders of ``SegModel``: smp encoders (``resnet50``, ``mit_b0``, ...) and timm models (``tu-<timm name>``).

Every encoder returns smp's pyramid: a list whose first entry is the input image and whose last entry is the deepest
stage. Plain ViTs (one token grid, e.g. ``tu-vit_tiny_patch16_224``), which smp's universal timm encoder rejects, go
through :class:`ViTEncoder`.
"""

import warnings
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
from segmentation_models_pytorch.encoders.mix_transformer import MixVisionTransformerEncoder
from torch import nn

from .pretrained import (
    PACKAGED_ENCODERS,
    PACKAGED_WEIGHTS_NAME,
    causes,
    check_download_possible,
    download_unavailable,
    load_packaged_weights,
)

NATIVE_STRIDE = 32
VIT_INTERMEDIATES = 4


class ViTEncoder(nn.Module):
    """A plain timm ViT as a pyramid ``[image, blocks at 1/4, 1/2, 3/4 and full depth]``, all on the patch grid.

    Block outputs go through the ViT's final norm; the position embedding is interpolated to any input size.
    """

    def __init__(self, name: str, in_channels: int = 3, pretrained: bool = False, **kwargs: Any) -> None:
        super().__init__()
        self.model = timm.create_model(
            name, pretrained=pretrained, in_chans=in_channels, num_classes=0, dynamic_img_size=True, **kwargs
        )
        info = self.model.feature_info
        depth = len(info)
        self.indices = [depth * (i + 1) // VIT_INTERMEDIATES - 1 for i in range(VIT_INTERMEDIATES)]
        self.output_stride = int(info[-1]["reduction"])
        self.out_channels = [in_channels] + [int(info[i]["num_chs"]) for i in self.indices]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return ``[images, *block outputs as [B, C, H / patch, W / patch]]``."""
        features = self.model.forward_intermediates(
            images, indices=self.indices, norm=True, output_fmt="NCHW", intermediates_only=True
        )
        return [images, *features]


def _timm_reductions(name: str) -> list[int] | None:
    """Feature reductions of timm model ``name`` (built on the meta device), None when timm does not list them."""
    try:
        with torch.device("meta"):
            probe = timm.create_model(name, pretrained=False)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise ValueError(f"unknown timm model {name!r} in encoder 'tu-{name}'") from error
        return None
    except Exception:  # some models cannot be built on the meta device: let smp build the real one
        return None
    info = getattr(probe, "feature_info", None)
    return [int(entry["reduction"]) for entry in info] if info else None


def _not_dilatable(encoder_name: str, stride: int, purpose: str, reason: str) -> ValueError:
    return ValueError(f"encoder {encoder_name!r} cannot run at output stride {stride} ({purpose}): {reason}")


def _download_failed(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from) is a failed download (the hub raises ``OSError``s)."""
    return any(isinstance(cause, OSError) for cause in causes(error))


def build_encoder(
    encoder_name: str,
    in_channels: int,
    weights: str | None,
    stride: int | None,
    purpose: str,
    encoder_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Build encoder ``encoder_name`` whose deepest stage is at ``stride`` (dilated if < 32; None: its native stride).

    ``purpose`` names who asks for the stride, for error messages. ``encoder_kwargs`` go to ``timm.create_model``
    (``tu-`` encoders only; ignored with a warning otherwise). The returned module has ``out_channels`` (list) and
    ``output_stride`` (deepest stage).

    ``weights``: ``"imagenet"`` for the encoders in ``PACKAGED_ENCODERS`` loads the weights their wheels ship (no
    network); any other non-null value needs a download (smp's weight names; for ``tu-`` encoders timm's default tag)
    and fails at once, in one line, when the hub cannot be reached.
    """
    kwargs = dict(encoder_kwargs or {})
    if weights is None:
        return _build_encoder(encoder_name, in_channels, None, stride, purpose, kwargs)
    if encoder_name in PACKAGED_ENCODERS:
        if weights != PACKAGED_WEIGHTS_NAME:
            raise ValueError(f"encoder_weights for encoder {encoder_name!r} must be {PACKAGED_WEIGHTS_NAME!r} (the "
                             f"ImageNet weights shipped in a package) or null, got {weights!r}")
        encoder = _build_encoder(encoder_name, in_channels, None, stride, purpose, kwargs)
        load_packaged_weights(encoder, encoder_name)
        return encoder
    check_download_possible(encoder_name, weights)
    try:
        return _build_encoder(encoder_name, in_channels, weights, stride, purpose, kwargs)
    except Exception as error:
        if _download_failed(error):
            raise download_unavailable(encoder_name, weights, f"which failed ({error})") from None
        raise


def _build_encoder(encoder_name: str, in_channels: int, weights: str | None, stride: int | None, purpose: str,
                   kwargs: dict[str, Any]) -> nn.Module:
    """The encoder with ``weights`` as smp / timm take them (a download when not None)."""
    if encoder_name.startswith("tu-"):
        return _build_timm_encoder(encoder_name, in_channels, weights, stride, purpose, kwargs)
    if kwargs:  # e.g. a timm encoder's config run small with an smp encoder: say so, do not fail
        warnings.warn(
            f"encoder_kwargs {sorted(kwargs)} are ignored: they go to timm and only apply to 'tu-' encoders, "
            f"not to encoder {encoder_name!r}",
            UserWarning,
            stacklevel=4,
        )
    return _build_smp_encoder(encoder_name, in_channels, weights, stride, purpose)


def _build_smp_encoder(encoder_name: str, in_channels: int, weights: str | None, stride: int | None,
                       purpose: str) -> nn.Module:
    """smp encoder ``encoder_name`` (smp's weight names), dilated by smp when ``stride`` < 32."""
    if encoder_name not in smp.encoders.encoders:
        raise ValueError(
            f"unknown encoder {encoder_name!r}: use an smp encoder name (resnet50, mit_b0, ...; "
            f"see segmentation_models_pytorch.encoders.get_encoder_names()) or 'tu-<timm model>'"
        )
    stride = stride or NATIVE_STRIDE
    encoder_class = smp.encoders.encoders[encoder_name]["encoder"]
    if stride != NATIVE_STRIDE and issubclass(encoder_class, MixVisionTransformerEncoder):
        raise _not_dilatable(encoder_name, stride, purpose, "Mix Transformer encoders cannot be dilated")
    try:
        encoder = smp.encoders.get_encoder(encoder_name, in_channels, 5, weights, stride)
    except ValueError as error:
        if stride == NATIVE_STRIDE:
            raise
        raise _not_dilatable(encoder_name, stride, purpose, str(error)) from error
    return encoder


def _build_timm_encoder(encoder_name: str, in_channels: int, weights: str | None, stride: int | None, purpose: str,
                        kwargs: dict[str, Any]) -> nn.Module:
    """timm encoder ``tu-<timm name>`` (timm's default weights when ``weights`` is not None): a plain ViT through
    :class:`ViTEncoder`, any other model through smp's universal timm encoder, dilated by timm when ``stride`` < 32."""
    timm_name = encoder_name[3:]
    reductions = _timm_reductions(timm_name)
    if reductions and len(set(reductions)) == 1:
        native = reductions[-1]
        if stride not in (None, native):
            raise _not_dilatable(
                encoder_name,
                stride,
                purpose,
                f"a plain ViT has a single fixed stride of {native} (set output_stride={native})",
            )
        return ViTEncoder(timm_name, in_channels, pretrained=weights is not None, **kwargs)

    if timm_name.startswith("hrnet"):
        kwargs.setdefault("feature_location", "")  # HRNetV2: the raw stride 4-32 branches, not the incre modules
    stride = stride or NATIVE_STRIDE
    try:
        encoder = smp.encoders.get_encoder(
            encoder_name, in_channels, 5, True if weights is not None else None, stride, **kwargs
        )
    except Exception as error:
        if stride == NATIVE_STRIDE:
            raise ValueError(f"smp cannot build encoder {encoder_name!r}: {error}") from error
        raise _not_dilatable(
            encoder_name, stride, purpose, f"timm refused output_stride={stride} ({type(error).__name__}: {error})"
        ) from error
    actual = encoder.model.feature_info.reduction()[-1]
    if actual != stride:
        raise _not_dilatable(encoder_name, stride, purpose, f"timm built it with stride {actual}")
    return encoder
