"""MomentumSchedule: sets a scheduled coefficient (e.g. a memory's momentum, MCIBI Eq. 7) on a module each step."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

SCHEDULES = ("poly", "constant")


def poly_momentum(step: int, total_steps: int, m0: float = 0.9, power: float = 0.9, end_ratio: float = 0.01) -> float:
    """MCIBI Eq. 7: `m_t = (1 - t / T)^p * (m0 - m0 * end_ratio) + m0 * end_ratio` (paper: end_ratio = 1/100).

    `t` is clamped to `[0, T]`.
    """
    total = max(int(total_steps), 1)
    progress = min(max(step, 0), total) / total
    floor = m0 * end_ratio
    return (1.0 - progress) ** power * (m0 - floor) + floor


def set_module_value(module: torch.nn.Module, attribute: str, value: float) -> None:
    """`module.<attribute> = value`, in place when the attribute is a tensor (a buffer keeps its identity)."""
    current = getattr(module, attribute, None)
    if isinstance(current, Tensor):
        current.fill_(value)
    else:
        setattr(module, attribute, value)


class MomentumSchedule(L.Callback):
    """Sets `target.<attribute>` before every training batch and logs it as `train/<name>`.

    Args:
        target: the module that owns the coefficient (e.g. a `FeatureMemory`).
        attribute: the coefficient's attribute on `target` (a float32 buffer is filled in place, so it stays
            identical on every rank and is saved in checkpoints).
        name: the logged name (default: the attribute's).
        m0: initial value.
        power: poly exponent p.
        schedule: `"poly"` (Eq. 7, annealed from m0 at step 0 to `m0 * end_ratio` at the last step) or `"constant"`.
        end_ratio: final value as a fraction of m0 (Eq. 7: 1/100).

    Driven by `trainer.global_step` and `trainer.estimated_stepping_batches`, so a resumed run continues the schedule
    exactly.
    """

    def __init__(
        self,
        target: torch.nn.Module,
        attribute: str = "momentum",
        m0: float = 0.9,
        power: float = 0.9,
        schedule: Literal["poly", "constant"] = "poly",
        end_ratio: float = 0.01,
        name: str | None = None,
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"MomentumSchedule: schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
        if not 0.0 <= m0 <= 1.0:
            raise ValueError(f"MomentumSchedule: m0 must be in [0, 1], got {m0}")
        if power < 0:
            raise ValueError(f"MomentumSchedule: power must be >= 0, got {power}")
        if not 0.0 <= end_ratio <= 1.0:
            raise ValueError(f"MomentumSchedule: end_ratio must be in [0, 1], got {end_ratio}")
        self.target = target
        self.attribute = attribute
        self.name = name or attribute
        self.m0 = m0
        self.power = power
        self.schedule = schedule
        self.end_ratio = end_ratio

    def value(self, step: int, total_steps: float) -> float:
        """The coefficient at optimizer step `step` of `total_steps`."""
        if self.schedule == "constant":
            return self.m0
        if not math.isfinite(total_steps):
            raise ValueError("MomentumSchedule: schedule 'poly' needs a finite number of training steps "
                             "(set trainer.max_steps or trainer.max_epochs)")
        return poly_momentum(step, int(total_steps), self.m0, self.power, self.end_ratio)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        value = self.value(trainer.global_step, trainer.estimated_stepping_batches)
        set_module_value(self.target, self.attribute, value)
        pl_module.log(f"train/{self.name}", value, on_step=True, on_epoch=False, batch_size=1)
