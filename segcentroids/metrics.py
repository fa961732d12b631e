"""Segmentation metrics: one confusion matrix per split, mmsegmentation's conventions.

`segmentation_scores` is the pure functional core (confusion matrix -> IoU, Acc, mIoU, mAcc, aAcc);
`SegmentationMetrics` is the thin stateful wrapper around torchmetrics' `MulticlassJaccardIndex`, whose summed
confusion-matrix state is what makes the numbers exact under DDP.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.classification import (
    MulticlassJaccardIndex,
    MultilabelAveragePrecision,
    MultilabelStatScores,
)


def segmentation_scores(confmat: Tensor) -> dict[str, Tensor]:
    """Scores from a confusion matrix `confmat[true, pred]` of pixel counts.

    IoU of a class is NaN when the class has neither ground-truth nor predicted pixels, Acc is NaN when it has no
    ground-truth pixels (both 0/0); NaN classes are left out of mIoU and mAcc. All values are in percent.
    """
    confmat = confmat.double()
    intersection = confmat.diagonal()
    label_area = confmat.sum(dim=1)
    pred_area = confmat.sum(dim=0)
    union = label_area + pred_area - intersection
    nan = torch.tensor(float("nan"), dtype=confmat.dtype, device=confmat.device)
    iou = torch.where(union > 0, intersection / union.clamp_min(1), nan) * 100
    acc = torch.where(label_area > 0, intersection / label_area.clamp_min(1), nan) * 100
    total = label_area.sum()
    aacc = torch.where(total > 0, intersection.sum() / total.clamp_min(1), nan) * 100
    return {
        "mIoU": iou.nanmean().float(),
        "mAcc": acc.nanmean().float(),
        "aAcc": aacc.float(),
        "IoU": iou.float(),
        "Acc": acc.float(),
    }


class SegmentationMetrics(MulticlassJaccardIndex):
    """mIoU, mAcc, aAcc and per-class IoU/Acc accumulated over a whole split.

    `update(preds, target)` takes class-index maps (or `[B, K, H, W]` scores, arg-maxed) and int64 targets of
    the same spatial size; pixels equal to `ignore_index` are left out. `compute()` returns the dict of
    `segmentation_scores`.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs) -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, average="none", validate_args=False,
                         **kwargs)

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(dim=1)
        if preds.shape != target.shape:
            raise ValueError(f"SegmentationMetrics.update: preds {tuple(preds.shape)} and target "
                             f"{tuple(target.shape)} must have the same shape")
        super().update(preds, target)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        return segmentation_scores(self.confmat)


def format_table(scores: dict[str, Tensor], class_names: Sequence[str] | None = None) -> str:
    """Markdown table of per-class IoU and Acc followed by the summary line."""
    iou, acc = scores["IoU"].tolist(), scores["Acc"].tolist()
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(iou))]
    width = max([len("class")] + [len(n) for n in names])

    def fmt(value: float) -> str:
        return "  nan" if math.isnan(value) else f"{value:5.2f}"

    lines = [f"| {'class':<{width}} |   IoU |   Acc |", f"| {'-' * width} | ----: | ----: |"]
    lines += [f"| {name:<{width}} | {fmt(i)} | {fmt(a)} |" for name, i, a in zip(names, iou, acc)]
    lines.append(f"mIoU {fmt(float(scores['mIoU']))}  mAcc {fmt(float(scores['mAcc']))}  "
                 f"aAcc {fmt(float(scores['aAcc']))}")
    return "\n".join(lines)


class MultilabelMAP(torch.nn.Module):
    """Multi-label image classification mAP (%) over the classes present in the evaluated split: a class no image
    holds has no defined AP and is left out. `update(logits [B, K], targets [B, K] multi-hot)`; `update_count` is
    the number of updates since the last reset (0: nothing evaluated). MLSeg's xi, its frozen selector and
    `MultiLabelClassifier` report it as `<split>/multilabel_mAP`."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.average_precision = MultilabelAveragePrecision(num_classes, average=None)
        self.label_counts = MultilabelStatScores(num_classes, average=None)

    @property
    def update_count(self) -> int:
        return self.label_counts.update_count

    def update(self, logits: Tensor, targets: Tensor) -> None:
        probabilities, targets = logits.float().sigmoid(), targets.long()
        self.average_precision.update(probabilities, targets)
        self.label_counts.update(probabilities, targets)

    def compute(self) -> Tensor:
        with warnings.catch_warnings():  # torchmetrics warns about classes absent from the split
            warnings.simplefilter("ignore")
            average_precision = self.average_precision.compute()
        present = self.label_counts.compute()[:, 4] > 0  # support: images holding the class
        return average_precision[present].mean() * 100

    def reset(self) -> None:
        self.average_precision.reset()
        self.label_counts.reset()
