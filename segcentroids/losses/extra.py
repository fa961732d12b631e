"""Plug-in objectives: extra loss terms any method can add from YAML (`extra_losses`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class LossContext:
    """What a plug-in loss may know of the method it is added to.

    Attributes:
        feature_channels: channels of `outputs["decoder"]`, the classifier's input.
        num_classes: K.
        ignore_index: the label of pixels left out.
        log: `log(name, value, batch_size)` records a training scalar (a no-op outside a Trainer).
        step: `step()` is the current optimizer step (to seed per-step randomness).
    """

    feature_channels: int
    num_classes: int
    ignore_index: int
    log: Callable[[str, Tensor, int], None]
    step: Callable[[], int]


def offline_context(feature_channels: int, num_classes: int, ignore_index: int = 255) -> LossContext:
    """A context outside any method or Trainer (tests, benchmarks): logging does nothing, the step is 0."""
    return LossContext(feature_channels, num_classes, ignore_index, lambda name, value, batch_size: None, lambda: 0)


class ExtraLoss(nn.Module):
    """An objective composed onto a method from config.

    `build(context)` is called once by the method (build heads with the context's channel counts there);
    `forward(outputs, labels)` returns named, unweighted loss terms; `weights` maps each name to its weight and is
    merged into the method's `loss_weights`. `outputs` are the method's training outputs (at least `decoder`
    features and `logits`).
    """

    weights: dict[str, float]

    def __init__(self) -> None:
        super().__init__()
        self.weights = {}

    def build(self, context: LossContext) -> None:
        """Build parameters that depend on the method (default: nothing)."""

    def forward(self, outputs: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError
