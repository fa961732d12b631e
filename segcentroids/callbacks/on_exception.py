"""`SaveOnException`: a fit that fails (bad data, out of memory, Ctrl-C) first saves what it has trained."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from segcentroids.runs import ON_EXCEPTION


class SaveOnException(L.Callback):
    """Saves `<dirpath>/on_exception.ckpt` when an exception stops a fit after at least one step; `--ckpt_path last`
    takes it when it is newer than `last.ckpt`.

    Lightning's `OnExceptionCheckpoint` does the same, but its presence makes every `fit(ckpt_path=None)` look for a
    last checkpoint to resume; here a fresh fit stays fresh and `--ckpt_path last` decides.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / f"{ON_EXCEPTION}.ckpt"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.global_step == 0:  # nothing trained yet
            return
        trainer.save_checkpoint(self.path)
