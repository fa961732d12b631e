"""Video consistency VC_n of the validation and test predictions (VSPW's metric), for any method."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L

from segcentroids.runs import write_record
from segcentroids.video_metrics import VideoConsistency


class VideoConsistencyLogger(L.Callback):
    """Feeds each evaluation batch's predictions (`outputs["preds"]`) and labels to a `VideoConsistency` metric per
    split and, at the end of the epoch, logs `<split>/VC_<n>` (percent) and writes
    `metrics/<split>_video_consistency.json`.

    Needs batches with `video` (the video of each frame; `segcentroids.data.clips.collate_clips`) whose frames come
    in video order (`VSPWDataModule`'s evaluation loaders); batches without it are skipped. The VSPW DataModule
    asks the `segcentroids` command for this callback (`evaluation_callbacks`).
    """

    def __init__(self, windows: Sequence[int] = (8, 16), ignore_index: int = 255, require_correct: bool = True,
                 average: Literal["videos", "windows"] = "videos") -> None:
        self.windows = tuple(windows)
        self.options = {"windows": self.windows, "ignore_index": ignore_index, "require_correct": require_correct,
                        "average": average}
        self.metrics = {split: VideoConsistency(**self.options) for split in ("val", "test")}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for metric in self.metrics.values():
            metric.to(pl_module.device)
            metric.reset()

    def _update(self, split: str, outputs: Any, batch: Any) -> None:
        if not isinstance(outputs, dict) or "preds" not in outputs or not isinstance(batch, dict) \
                or "video" not in batch:
            return
        metric = self.metrics[split]
        if metric.device != outputs["preds"].device:
            metric.to(outputs["preds"].device)
        metric.update(outputs["preds"], batch["mask"], list(batch["video"]))

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        metric = self.metrics[split]
        if metric.update_count == 0 and trainer.world_size == 1:  # under DDP every process joins the sync
            return
        with warnings.catch_warnings():  # a process that held no video warns that compute precedes update
            warnings.simplefilter("ignore")
            scores = {name: value * 100 for name, value in metric.compute().items()}
        metric.reset()
        if trainer.sanity_checking:
            return
        for name, value in scores.items():
            pl_module.log(f"{split}/{name}", value.float())
        if not trainer.is_global_zero:
            return
        record = {"split": split, **{name: round(float(value), 4) for name, value in scores.items()},
                  "average": self.options["average"], "require_correct": self.options["require_correct"]}
        print(f"\n[{split}] video consistency: " + ", ".join(f"{k} {v}" for k, v in record.items()
                                                           if k.startswith("VC_")), flush=True)
        write_record(trainer, f"{split}_video_consistency", record)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update("val", outputs, batch)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update("test", outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(trainer, pl_module, "test")
