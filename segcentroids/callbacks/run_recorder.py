"""`RunRecorder`: the machine-readable cost and metric records the ablation runner collects from a run folder.

Written on rank 0 under `<trainer.default_root_dir>/metrics/` (the command's record folder, `segcentroids.runs`):

- `cost.json` (fit): parameters (all, and those the inference graph uses), inference GFLOPs of one eval forward of
  one image at the training crop size (`torch.utils.flop_counter`), and the median wall time of a training step
  (`on_train_batch_start` -> `on_train_batch_end`: forward, backward and optimiser step, no data loading), measured
  after `warmup_steps` steps.
- `<split>_all.json` (validate / test): every logged `<split>/...` metric (method metrics such as
  `val/multilabel_mAP` included), written once the split's epoch has ended.
- `curves.csv` (fit): the training curves, one `step,name,value` line per scalar: every `train/...` metric and the
  learning rate of each parameter group (`lr/<group>`) every `log_every_n_steps` steps, every `val/...` metric after
  each validation. Appended, so a resumed fit continues it (`read_curves` keeps the last value of a step).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

CURVES_FILE = "curves.csv"


def grouped_mm_flops(a_shape: tuple[int, ...], b_shape: tuple[int, ...], *args, out_shape: tuple[int, ...],
                     **kwargs) -> int:
    """FLOPs of `F.grouped_mm` (torch's counter has no formula for it): every output element is one dot product
    over `a`'s last dimension, except 2D x 2D, where that dimension is split among the groups of the output."""
    if len(a_shape) == 2 and len(b_shape) == 2:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    return 2 * math.prod(out_shape) * a_shape[-1]


@contextlib.contextmanager
def flop_counter() -> Iterator[FlopCounterMode]:
    """`FlopCounterMode` with `F.scaled_dot_product_attention` on its math path (torch's counter has no formula for
    the fused CPU attention kernels and counts them as 0 FLOPs) and a formula for `F.grouped_mm`."""
    mapping = {torch.ops.aten._grouped_mm: grouped_mm_flops} if hasattr(torch.ops.aten, "_grouped_mm") else {}
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        yield counter


def inference_cost(module: torch.nn.Module, images: Tensor) -> dict[str, float]:
    """Parameters (all / used by the eval forward) and GFLOPs of `module(images)` in eval mode.

    A parameter counts as used by inference when the eval forward's output depends on it (it gets a gradient,
    computed with `torch.autograd.grad` so `.grad` is untouched). The training mode and the RNG state are restored.
    """
    was_training = module.training
    module.eval()
    params = [p for p in module.parameters() if p.requires_grad]
    try:
        with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
            with flop_counter() as counter:
                out = module(images)
            # torch.autograd.grad leaves .grad (and DDP's gradient hooks) untouched
            grads = torch.autograd.grad(out.float().sum(), params, allow_unused=True)
        used = sum(p.numel() for p, g in zip(params, grads) if g is not None)
    finally:
        module.train(was_training)
    return {
        "params": sum(p.numel() for p in module.parameters()),
        "params_inference": used,
        "gflops": counter.get_total_flops() / 1e9 / images.shape[0],
        "crop": list(images.shape[-2:]),
    }


def _scalars(metrics: dict, prefix: str) -> dict[str, float]:
    """The one-element metrics whose name starts with `prefix`, as floats."""
    return {key: float(value) for key, value in metrics.items()
            if key.startswith(prefix) and torch.as_tensor(value).numel() == 1}


def learning_rates(trainer: L.Trainer) -> dict[str, float]:
    """`lr/<group name>` of every parameter group of the trainer's optimizers (`group<i>` when unnamed)."""
    rates = {}
    for optimizer in trainer.optimizers:
        for i, group in enumerate(optimizer.param_groups):
            rates[f"lr/{group.get('name', f'group{i}')}"] = float(group["lr"])
    return rates


def append_curves(folder: Path, step: int, values: dict[str, float]) -> None:
    """Appends `step,name,value` lines to `<folder>/curves.csv` (its header first when new)."""
    path = folder / CURVES_FILE
    new = not path.is_file()
    with path.open("a", newline="") as stream:
        writer = csv.writer(stream)
        if new:
            writer.writerow(["step", "name", "value"])
        writer.writerows([step, name, value] for name, value in values.items())


def read_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    """`{name: {step: value}}` of a run's `metrics/curves.csv` ({} without one); a step logged twice (a resumed
    fit) keeps its last value."""
    path = Path(run_dir) / "metrics" / CURVES_FILE
    curves: dict[str, dict[int, float]] = {}
    if not path.is_file():
        return curves
    with path.open(newline="") as stream:
        for line in csv.DictReader(stream):
            curves.setdefault(line["name"], {})[int(line["step"])] = float(line["value"])
    return curves


class RunRecorder(L.Callback):
    """Records the run's cost (`metrics/cost.json`) and all its split metrics (`metrics/<split>_all.json`)."""

    def __init__(self, warmup_steps: int = 5) -> None:
        """
        Args:
            warmup_steps: training steps left out of the step-time median (fewer are dropped in short runs, so
                that at least one step is timed).
        """
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = warmup_steps
        self._cost: dict | None = None
        self._step_times: list[float] = []
        self._start = 0.0

    def _folder(self, trainer: L.Trainer) -> Path | None:
        if not trainer.is_global_zero:
            return None
        folder = Path(trainer.default_root_dir) / "metrics"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @staticmethod
    def _sync(module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict,
                             batch_idx: int) -> None:
        if self._cost is None:
            try:
                self._cost = inference_cost(pl_module, batch["image"][:1])
            except Exception as error:  # a cost the recorder cannot measure must not stop training
                self._cost = {"error": f"{type(error).__name__}: {error}"}
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: dict,
                           batch_idx: int) -> None:
        self._sync(pl_module)
        self._step_times.append(time.perf_counter() - self._start)
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0 and (folder := self._folder(trainer)):
            values = {**_scalars(trainer.callback_metrics, "train/"), **learning_rates(trainer)}
            append_curves(folder, trainer.global_step, values)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = self._folder(trainer)
        if folder is None:
            return
        skip = min(self.warmup_steps, max(len(self._step_times) - 1, 0))
        timed = self._step_times[skip:]
        record = dict(self._cost or {})
        record.update({
            "step_time_s": statistics.median(timed) if timed else None,
            "timed_steps": len(timed),
            "device": str(pl_module.device),
            "precision": str(trainer.precision),
            "world_size": trainer.world_size,
        })
        (folder / "cost.json").write_text(json.dumps(record, indent=2))

    def _write_metrics(self, trainer: L.Trainer, split: str) -> None:
        if trainer.sanity_checking:
            return
        folder = self._folder(trainer)
        if folder is None:
            return
        record = _scalars(trainer.callback_metrics, f"{split}/")
        (folder / f"{split}_all.json").write_text(json.dumps(record, indent=2))
        if trainer.state.fn == "fit":
            append_curves(folder, trainer.global_step, record)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_metrics(trainer, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_metrics(trainer, "test")
