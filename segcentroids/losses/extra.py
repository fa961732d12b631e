"""Plug-in objectives: extra loss terms any method can add from YAML (`extra_losses`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

if TYPE_CHECKING:
    from segcentroids.methods.base import Baseline


class ExtraLoss(nn.Module):
    """An objective composed onto a method from config.

    `bind(method)` is called once the method's model exists (build heads with the right channel counts there);
    `forward(outputs, labels)` returns named, unweighted loss terms; `weights` maps each name to its weight and is
    merged into the method's `loss_weights`. `outputs` is the dict from `Baseline.training_outputs` (at least
    `decoder` features and `logits`).
    """

    weights: dict[str, float]

    def __init__(self) -> None:
        super().__init__()
        self.weights = {}

    def bind(self, method: Baseline) -> None:
        """Build parameters that depend on the method's model (default: nothing)."""

    def forward(self, outputs: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError
