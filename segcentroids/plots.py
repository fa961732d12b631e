"""Figures drawn on matplotlib's Agg canvas (no pyplot state, no display): the helpers every plot shares and the
confusion matrix of an evaluation split."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

ANNOTATE_UP_TO = 30  # classes up to which the cells carry their value
LABEL_UP_TO = 200  # classes up to which the axes carry class names


def new_figure(width: float, height: float) -> Figure:
    """A figure of `width x height` inches on its own Agg canvas, laid out without overlaps."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    stream = io.BytesIO()
    figure.savefig(stream, format="png", dpi=dpi)
    return stream.getvalue()


def rgb_array(figure: Figure) -> np.ndarray:
    """The figure rendered as an RGB uint8 array `[H, W, 3]` (for TensorBoard)."""
    canvas = figure.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def row_normalized(confmat: Tensor) -> Tensor:
    """`confmat[true, pred]` divided by each ground-truth class's pixel count (rows sum to 1; empty rows stay 0)."""
    confmat = confmat.double()
    return confmat / confmat.sum(dim=1, keepdim=True).clamp_min(1)


def confusion_figure(confmat: Tensor, class_names: Sequence[str], title: str) -> Figure:
    """mmsegmentation's `confusion_matrix.py` view: rows = ground truth, columns = prediction, each row normalised to
    its class's pixels (in %), class names on the axes up to `LABEL_UP_TO` classes, values in the cells up to
    `ANNOTATE_UP_TO`."""
    normalized = (row_normalized(confmat.cpu()) * 100).numpy()
    k = len(normalized)
    side = min(max(6.0, 0.22 * k + 3.0), 40.0)
    figure = new_figure(side, side)
    axes = figure.subplots()
    image = axes.imshow(normalized, cmap="viridis", vmin=0, vmax=100, interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8, label="% of the ground-truth class's pixels")
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title(title)
    if k <= LABEL_UP_TO:
        names = list(class_names) if len(class_names) == k else [str(i) for i in range(k)]
        fontsize = 8 if k <= 60 else 5
        axes.set_xticks(range(k), names, rotation=90, fontsize=fontsize)
        axes.set_yticks(range(k), names, fontsize=fontsize)
    if k <= ANNOTATE_UP_TO:
        for (row, col), value in np.ndenumerate(normalized):
            axes.text(col, row, f"{value:.0f}", ha="center", va="center", fontsize=6,
                      color="white" if value < 50 else "black")
    return figure


__all__ = ["confusion_figure", "new_figure", "png_bytes", "rgb_array", "row_normalized"]

