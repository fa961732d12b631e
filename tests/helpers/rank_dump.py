"""Test-only callback, importable in `segcentroids fit` subprocesses (tests put this folder on PYTHONPATH)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class RankStateDump(L.Callback):
    """At the end of fit, every rank saves its module's state_dict (weights and buffers) to
    `<default_root_dir>/rank_state/rank<global_rank>.pt`."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = Path(trainer.default_root_dir) / "rank_state"
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save({"state": state, "global_step": trainer.global_step}, folder / f"rank{trainer.global_rank}.pt")
