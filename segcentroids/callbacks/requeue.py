"""SlurmRequeue: on SLURM's warning signal, save an HPC checkpoint at a step boundary on every rank and requeue.

Lightning's own SLURM handler (`SLURMEnvironment(auto_requeue=True)`) saves the checkpoint inside the signal
handler, wherever the process happens to be: between an optimizer step and the memory update of the same step, or
on one rank while the other is inside a gradient all-reduce (the save's barrier then pairs with the wrong
collective). This callback only records the signal; before the next training batch every rank learns whether any
rank got it (one all-reduce), and all of them save the same, complete state:

- `<default_root_dir>/hpc_ckpt_<n>.ckpt`, the name and folder Lightning itself uses and looks for
  (`trainer.fit(ckpt_path=None)` under SLURM resumes from the highest `n`);
- then rank 0 runs `scontrol requeue <job>` (`<array job>_<task>` in an array) and training stops.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

HPC_PREFIX = "hpc_ckpt_"


def hpc_checkpoint_path(folder: str | Path) -> Path:
    """The next `hpc_ckpt_<n>.ckpt` in `folder` (n = 1 + the highest present), as Lightning names them."""
    numbers = [int(m.group(1)) for p in Path(folder).glob(f"{HPC_PREFIX}*.ckpt")
               if (m := re.fullmatch(rf"{HPC_PREFIX}(\d+)\.ckpt", p.name))]
    return Path(folder) / f"{HPC_PREFIX}{max(numbers, default=0) + 1}.ckpt"


def slurm_job_id() -> str | None:
    """`SLURM_JOB_ID`, or `<SLURM_ARRAY_JOB_ID>_<SLURM_ARRAY_TASK_ID>` inside an array job; None outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class SlurmRequeue(L.Callback):
    """Save `hpc_ckpt_<n>.ckpt` and requeue the SLURM job when `signal_name` arrives (see the module doc).

    Args:
        signal_name: the warning signal of `sbatch --signal=SIGUSR1@120` (no `B:`: it goes to the `srun` tasks).
        requeue: run `scontrol requeue` after saving (off: save and stop only).
        check_every_n_steps: how often the ranks agree on whether a signal came (one scalar all-reduce each time).
    """

    def __init__(self, signal_name: str = "SIGUSR1", requeue: bool = True, check_every_n_steps: int = 1) -> None:
        if not hasattr(signal, signal_name):
            raise ValueError(f"SlurmRequeue: signal_name must name a signal such as 'SIGUSR1', got {signal_name!r}")
        if check_every_n_steps < 1:
            raise ValueError(f"SlurmRequeue: check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.signum = getattr(signal, signal_name)
        self.requeue = requeue
        self.check_every_n_steps = check_every_n_steps
        self.received = False
        self._previous_handler: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment):
            environment.auto_requeue = False  # this callback replaces Lightning's in-handler save

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = False
        self._previous_handler = signal.signal(self.signum, self._handler)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous_handler is not None:
            signal.signal(self.signum, self._previous_handler)
            self._previous_handler = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # before this batch: the previous step, its memory update and every callback after it are complete
        if trainer.global_step % self.check_every_n_steps:
            return
        flag = torch.tensor(float(self.received), device=pl_module.device)
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag, reduce_op="max")
        if not bool(flag):
            return
        path = hpc_checkpoint_path(trainer.default_root_dir)
        path = Path(trainer.strategy.broadcast(str(path)))  # one name on every rank
        rank_zero_info(f"SlurmRequeue: signal received, saving {path} at step {trainer.global_step}")
        trainer.save_checkpoint(path)
        trainer.should_stop = True
        job = slurm_job_id()
        if self.requeue and trainer.is_global_zero:
            if job is None:
                rank_zero_warn("SlurmRequeue: not in a SLURM job, nothing to requeue")
            else:
                result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
                if result.returncode:
                    rank_zero_warn(f"SlurmRequeue: `scontrol requeue {job}` failed: {result.stderr.strip()}")
                else:
                    rank_zero_info(f"SlurmRequeue: requeued job {job}")
        trainer.strategy.barrier("SlurmRequeue")
