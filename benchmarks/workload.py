"""What the benchmarks run: scene-like labels, one training step and one inference forward of a method."""

from __future__ import annotations

import torch

from segcentroids.methods import Baseline


def blocky_labels(batch: int, size: int | tuple[int, int], classes: int, generator: torch.Generator,
                  block: int = 16, ignore_rows: int = 4) -> torch.Tensor:
    """`[batch, H, W]` labels (`size` = H = W, or `(H, W)`) of `block` x `block` regions of random classes; the top
    `ignore_rows` rows are ignore (255)."""
    height, width = (size, size) if isinstance(size, int) else size
    blocks = torch.randint(0, classes, (batch, -(-height // block), -(-width // block)), generator=generator)
    labels = blocks.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :height, :width]  # the last blocks cut
    labels[:, :ignore_rows] = 255
    return labels


def train_step(model: Baseline, images: torch.Tensor, labels: torch.Tensor,
               optimizer: torch.optim.Optimizer | None = None) -> dict[str, torch.Tensor]:
    """Forward in train mode, the weighted loss (`total_loss`), backward, and the optimizer step if one is given;
    returns the training outputs."""
    model.train()
    model.zero_grad(set_to_none=True)
    outputs, losses = model.training_outputs(images, labels)
    model.total_loss(losses).backward()
    if optimizer is not None:
        optimizer.step()
    return outputs


def infer(model: Baseline, images: torch.Tensor) -> None:
    """One eval-mode forward without gradients."""
    model.eval()
    with torch.no_grad():
        model(images)
