"""`segcentroids predict` output: raw label PNGs and colourised PNGs."""

from __future__ import annotations

from pathlib import Path

import cv2
import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from segcentroids.callbacks.images import colorize, palette_of


class SegPredictionWriter(BasePredictionWriter):
    """Writes `<output_dir>/labels/<name>.png` (train ids), `<output_dir>/color/<name>.png` and, for a DataModule
    whose label files use other ids (`SERVER_IDS`: Cityscapes labelIds, ADE20K and Pascal-Context 59 ids + 1,
    COCO-Stuff's COCO ids), `<output_dir>/server/<name>.png` in those ids, ready for the benchmark's server.

    `output_dir` defaults to `<record>/predictions`, the predict command's record folder in the run.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir

    def _folder(self, trainer: L.Trainer) -> Path:
        root = Path(self.output_dir) if self.output_dir else Path(trainer.default_root_dir)
        return root if self.output_dir else root / "predictions"

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction, batch_indices,
                           batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        folder = self._folder(trainer)
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        (folder / "color").mkdir(parents=True, exist_ok=True)
        palette = palette_of(trainer, pl_module.num_classes)
        datamodule = getattr(trainer, "datamodule", None)
        server_ids = getattr(datamodule, "SERVER_IDS", ()) and datamodule.server_ids
        if server_ids:
            (folder / "server").mkdir(exist_ok=True)
        for pred, name in zip(prediction["preds"], prediction["name"]):
            labels = pred.cpu().numpy()
            dtype = np.uint8 if pl_module.num_classes <= 256 else np.uint16
            stem = Path(name).stem
            cv2.imwrite(str(folder / "labels" / f"{stem}.png"), labels.astype(dtype))
            if server_ids:
                cv2.imwrite(str(folder / "server" / f"{stem}.png"), server_ids(labels))
            color = colorize(labels, palette)
            cv2.imwrite(str(folder / "color" / f"{stem}.png"), cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
