"""`segcentroids predict` output: label PNGs (train ids and, where they differ, the test server's ids), colourised
PNGs and overlays of the colours on the input."""

from __future__ import annotations

from pathlib import Path

import cv2
import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from segcentroids.callbacks.images import colorize, palette_of
from segcentroids.data.base import read_image


class SegPredictionWriter(BasePredictionWriter):
    """Writes `<output_dir>/labels/<name>.png` (train ids), `<output_dir>/color/<name>.png`,
    `<output_dir>/overlay/<name>.png` (the colours blended on the input image with `overlay_alpha`; None: no
    overlays) and, for a DataModule whose label files use other ids (`SERVER_IDS`: Cityscapes labelIds, ADE20K and
    Pascal-Context 59 ids + 1, COCO-Stuff's COCO ids), `<output_dir>/server/<name>.png` in those ids, ready for the
    benchmark's server. At the end it prints where and how many files it wrote.

    `output_dir` defaults to `<record>/predictions`, the predict command's record folder in the run.
    """

    def __init__(self, output_dir: str | None = None, overlay_alpha: float | None = 0.5) -> None:
        super().__init__(write_interval="batch")
        if overlay_alpha is not None and not 0.0 < overlay_alpha <= 1.0:
            raise ValueError(f"prediction_writer.overlay_alpha must be in (0, 1] or null, got {overlay_alpha}")
        self.output_dir = output_dir
        self.overlay_alpha = overlay_alpha
        self.written: dict[str, int] = {}

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.written = {}

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            folder = self._folder(trainer)
            counts = ", ".join(f"{count} in {folder / kind}" for kind, count in self.written.items())
            print(f"[predict] wrote {counts or 'nothing'}", flush=True)

    def _write(self, folder: Path, kind: str, stem: str, image: np.ndarray) -> None:
        (folder / kind).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / kind / f"{stem}.png"), image)
        self.written[kind] = self.written.get(kind, 0) + 1

    def _folder(self, trainer: L.Trainer) -> Path:
        root = Path(self.output_dir) if self.output_dir else Path(trainer.default_root_dir)
        return root if self.output_dir else root / "predictions"

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction, batch_indices,
                           batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        folder = self._folder(trainer)
        palette = palette_of(trainer, pl_module.num_classes)
        datamodule = getattr(trainer, "datamodule", None)
        server_ids = getattr(datamodule, "SERVER_IDS", ()) and datamodule.server_ids
        paths = batch.get("path") if isinstance(batch, dict) else None
        for index, (pred, name) in enumerate(zip(prediction["preds"], prediction["name"])):
            labels = pred.cpu().numpy()
            dtype = np.uint8 if pl_module.num_classes <= 256 else np.uint16
            stem = Path(name).stem
            self._write(folder, "labels", stem, labels.astype(dtype))
            if server_ids:
                self._write(folder, "server", stem, server_ids(labels))
            color = colorize(labels, palette)
            self._write(folder, "color", stem, cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
            if self.overlay_alpha is not None and paths is not None:
                overlay = blend(read_image(Path(paths[index])), color, self.overlay_alpha)
                self._write(folder, "overlay", stem, cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))


def blend(image: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    """`alpha * color + (1 - alpha) * image` (uint8 RGB), the image resized to the colour map if they differ."""
    if image.shape[:2] != color.shape[:2]:
        image = cv2.resize(image, (color.shape[1], color.shape[0]), interpolation=cv2.INTER_LINEAR)
    mixed = alpha * color.astype(np.float32) + (1.0 - alpha) * image.astype(np.float32)
    return np.clip(mixed.round(), 0, 255).astype(np.uint8)
