"""Whether the code runs under a graph capture (ONNX / TorchScript tracing, `torch.export`)."""

from __future__ import annotations

import torch


def is_tracing() -> bool:
    """True under `torch.jit.trace` (also the ONNX exporter's) and `torch.export`: a shape branch taken in eager
    mode as a shortcut (e.g. "no padding needed") must then take its general path, which the graph keeps for every
    input size."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()
