"""Specialize and Fuse: Pyramidal Output Representation for Semantic Segmentation (Hsiao et al., ICCV 2021).

A semantic pyramid (class logits at strides s_1 > ... > s_L) and a unity pyramid (is this cell one class?) are
trained with "done by coarser" relabelling (Eq. 1) and fused at inference (Eq. 2): each pixel takes the class of the
coarsest cell predicted unity.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from segcentroids.callbacks.images import colorize, denormalize, normalization_of, palette_of
from segcentroids.methods.base import Baseline, MethodScores
from segcentroids.nn.pyramid_heads import CONTEXTS, OUTPUTS, SemanticPyramidHead, UnityHead
from segcentroids.ops.pyramid import (
    RELABEL_POLICIES,
    fuse_level_map,
    fuse_pyramid,
    iou_from_confusion,
    level_confusion,
    pyramid_targets,
    relabel_done_by_coarser,
)
from segcentroids.ops.tracing import is_tracing
from segcentroids.plots import new_figure, png_bytes
from segcentroids.runs import tensorboard_of

FUSIONS = ("fuse", "finest")
UNITY_EPS = 1e-6
LOG_EPS = 1e-8


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {allowed}, got {value!r}")
    return value


class SpecializeFuse(Baseline):
    """Baseline whose classifier is replaced by the unity and semantic pyramid heads (Fig. 2)."""

    def __init__(
        self,
        num_levels: int = 4,
        strides: list[int] | None = None,
        unity_channels: int = 64,
        semantic_channels: int = 512,
        context: Literal["none", "anl", "anl_multi", "coarse_to_fine"] = "coarse_to_fine",
        output: Literal["single", "pyramid"] = "pyramid",
        relabel: Literal["none", "gt_unity", "true_positive"] = "true_positive",
        tau: float = 0.9,
        train_tau: float | None = None,
        fusion: Literal["fuse", "finest"] = "fuse",
        pool_sizes: tuple[int, ...] = (1, 3, 6, 8),
        level_analysis: bool = False,
        **kwargs,
    ) -> None:
        """
        Args:
            num_levels: L, the number of pyramid levels (4 in the paper; 2 for its {4, 32} row).
            strides: the level strides in pixels, coarsest first, ending with the feature stride; None =
                `s_L * 2^(L-l)`. Each must be a multiple of the next.
            unity_channels: D_u of the unity head (64).
            semantic_channels: D_s of the semantic head (512).
            context: Table 6 columns: `none`, `anl` (one ANL block), `anl_multi` (ANL per level), `coarse_to_fine`.
            output: Table 6 rows: `single` (finest output only, plain CE) or `pyramid` (Eq. 1).
            relabel: Table 7: `none` (naive), `gt_unity` (simple fix), `true_positive` (final).
            tau: unity threshold of the fusion (Eq. 2), 0.9.
            train_tau: threshold that calls a predicted cell unity in the `true_positive` relabelling (None = tau).
            fusion: Table 8: `fuse` (Eq. 2) or `finest` (the finest semantic level only, "aux. supervision").
            pool_sizes: PyramidPool grids (1, 3, 6, 8 -> 110 tokens).
            level_analysis: in `test`, report which level each pixel is taken from, the per-level mIoU (Table 9),
                the per-class IoU of each level alone and of the fused output (Fig. 3: a table and a PNG plot, needs
                matplotlib), and log a level-assignment map beside the prediction.
        """
        super().__init__(**kwargs)
        self.context = _choice("context", context, CONTEXTS)
        self.output = _choice("output", output, OUTPUTS)
        self.relabel = _choice("relabel", relabel, RELABEL_POLICIES)
        self.fusion = _choice("fusion", fusion, FUSIONS)
        for key, value in (("tau", tau), ("train_tau", train_tau)):
            if value is not None and not 0.0 < value <= 1.0:
                raise ValueError(f"{key} must be in (0, 1], got {value}")
        self.tau = tau
        self.train_tau = tau if train_tau is None else train_tau
        self.level_analysis = level_analysis

        in_channels, finest_stride = self.segmodel.out_channels, self.segmodel.output_stride
        self.strides = self._check_strides(num_levels, strides, finest_stride)
        factors = [s // finest_stride for s in self.strides]

        self.semantic_head = SemanticPyramidHead(
            in_channels, self.num_classes, factors, semantic_channels, self.context, self.output, pool_sizes,
            self.dropout,
        )
        self.unity_head = UnityHead(in_channels, factors[:-1], unity_channels) if self.output == "pyramid" else None
        if self.unity_head is None and self.fusion == "fuse" and len(self.strides) > 1:
            self.fusion = "finest"  # a single output has nothing to fuse
        self.loss_weights["unity"] = 1.0  # Eq. 1: both terms weigh 1
        self._level_confusion: Tensor | None = None
        self._fused_confusion: Tensor | None = None

    @staticmethod
    def _check_strides(num_levels: int, strides: list[int] | None, finest_stride: int) -> list[int]:
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        if strides is None:
            return [finest_stride * 2 ** (num_levels - 1 - level) for level in range(num_levels)]
        strides = [int(s) for s in strides]
        if len(strides) != num_levels:
            raise ValueError(f"strides {strides} must list num_levels={num_levels} strides")
        if strides[-1] != finest_stride:
            raise ValueError(f"strides {strides} must end with the feature stride {finest_stride}")
        if any(a <= b or a % b for a, b in zip(strides, strides[1:])):
            raise ValueError(f"strides {strides} must be strictly decreasing, each a multiple of the next")
        return strides

    # ----------------------------------------------------------------------------------------------- the model
    def _pad(self, images: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Pads bottom/right to a multiple of the coarsest stride: images with 0 (the mean), labels with ignore."""
        coarsest = self.strides[0]
        h, w = images.shape[-2:]
        pad_h, pad_w = -h % coarsest, -w % coarsest
        if not is_tracing() and pad_h == 0 and pad_w == 0:  # traced: F.pad by 0 keeps the graph size-agnostic
            return images, labels
        images = F.pad(images, (0, pad_w, 0, pad_h))
        if labels is not None:
            labels = F.pad(labels, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return images, labels

    def build_classifier(self) -> None:
        """None: the semantic pyramid head (`semantic_head`) replaces the plain classifier."""
        return None

    def prepare_inputs(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Images and labels padded to a multiple of the coarsest stride, so that the pyramid's cells tile them."""
        return self._pad(images, labels)

    def pyramid(self, images: Tensor, with_unity: bool = True) -> tuple[dict, list[Tensor], list[Tensor]]:
        """Backbone features, semantic logits per level and unity probabilities per level (coarsest first) of
        images whose size is a multiple of the coarsest stride."""
        features = self.segmodel(images)
        expected = (images.shape[-2] // self.strides[-1], images.shape[-1] // self.strides[-1])
        if tuple(features["decoder"].shape[-2:]) != expected:
            raise ValueError(f"features {tuple(features['decoder'].shape[-2:])} are not at stride "
                             f"{self.strides[-1]} of {expected}")
        return features, *self._levels(features["decoder"], with_unity)

    def _levels(self, x: Tensor, with_unity: bool = True) -> tuple[list[Tensor], list[Tensor]]:
        unity = self.unity_head(x) if with_unity and self.unity_head is not None else []
        return self.semantic_head(x), unity

    def head_outputs(self, features: dict, labels: Tensor | None = None) -> dict:
        """`logits` (the finest semantic level) beside the `semantic` and `unity` levels (lists, coarsest first)."""
        semantic, unity = self._levels(features["decoder"])
        return {"decoder": features["decoder"], "logits": semantic[-1], "semantic": semantic, "unity": unity}

    def classify(self, features: Tensor) -> Tensor:
        """Finest-level class logits of the semantic pyramid head."""
        return self.semantic_head(features)[-1]

    def forward(self, images: Tensor) -> Tensor:
        """Inference graph: log of the fused probabilities (Eq. 2) or the finest logits, at the feature stride when
        the image size is a multiple of it, else at the image size."""
        h, w = images.shape[-2:]
        padded, _ = self._pad(images)
        fuse = self.fusion == "fuse"
        _, semantic, unity = self.pyramid(padded, with_unity=fuse)
        out = fuse_pyramid(semantic, unity, self.tau).clamp_min(LOG_EPS).log() if fuse else semantic[-1]
        stride = self.strides[-1]
        if h % stride == 0 and w % stride == 0:
            return out[..., : h // stride, : w // stride]
        out = F.interpolate(out, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return out[..., :h, :w]

    # ------------------------------------------------------------------------------------------------ training
    def _cell_ce(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean CE (float32) of a coarse level's cells against its cell targets."""
        loss = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction="sum")
        return loss / (target != self.ignore_index).sum().clamp_min(1)

    def _unity_bce(self, prob: Tensor, target: Tensor) -> Tensor:
        """Mean BCE (float32, probabilities clamped) of a unity level against its 0/1/ignore targets."""
        valid = target != self.ignore_index
        p = prob.float().clamp(UNITY_EPS, 1.0 - UNITY_EPS)
        t = (target == 1).float()
        loss = -(t * p.log() + (1.0 - t) * (1.0 - p).log())
        return (loss * valid).sum() / valid.sum().clamp_min(1)

    def method_losses(self, outputs: dict, labels: Tensor) -> dict[str, Tensor]:
        """Eq. 1: mean CE over the L semantic levels + mean BCE over the L-1 unity levels, relabelled targets."""
        semantic, unity = outputs["semantic"], outputs["unity"]
        if self.unity_head is None:
            return {"ce": self.seg_loss(semantic[-1], labels)}
        semantic_targets, unity_targets = pyramid_targets(labels, self.strides[:-1], self.ignore_index)
        semantic_targets.append(labels)  # the finest level: CE on logits upsampled to the label size
        semantic_targets, unity_targets = relabel_done_by_coarser(
            semantic_targets, unity_targets, [u.detach() for u in unity], self.relabel, self.train_tau,
            self.ignore_index,
        )
        ce = [self._cell_ce(y, t) for y, t in zip(semantic[:-1], semantic_targets[:-1])]
        ce.append(self.seg_loss(semantic[-1], semantic_targets[-1]))
        return {"ce": torch.stack(ce).mean(),
                "unity": torch.stack([self._unity_bce(u, t) for u, t in zip(unity, unity_targets)]).mean()}

    # ------------------------------------------------------------------------------------ analysis (Table 9)
    def level_outputs(self, images: Tensor, out_size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """The level each pixel is taken from (`[B, *out_size]`, 0 = coarsest), every level's class prediction
        (`[B, L, *out_size]`) and the fused prediction of one whole-image pass (Eq. 2, `[B, *out_size]`: the
        evaluated prediction itself under whole-image single-scale inference), all resized bilinearly to
        `out_size` before the argmax."""
        h, w = images.shape[-2:]
        padded, _ = self._pad(images)
        _, semantic, unity = self.pyramid(padded)
        size = tuple(padded.shape[-2:])
        level = fuse_level_map(unity, tuple(semantic[-1].shape[-2:]), self.tau)
        level = F.interpolate(level[:, None].float(), size=size, mode="nearest")[..., :h, :w]
        level = F.interpolate(level, size=out_size, mode="nearest")[:, 0].long()
        preds = []
        for logits in semantic:
            probs = F.interpolate(logits.float().softmax(1), size=size, mode="bilinear", align_corners=False)
            probs = F.interpolate(probs[..., :h, :w], size=out_size, mode="bilinear", align_corners=False)
            preds.append(probs.argmax(1))
        fused = F.interpolate(self(images), size=out_size, mode="bilinear", align_corners=False).argmax(1)
        return level, torch.stack(preds, dim=1), fused

    def _analyses_levels(self, split: str) -> bool:
        return split == "test" and self.level_analysis and self.unity_head is not None

    def evaluation_outputs(self, images: Tensor, labels: Tensor, split: str) -> tuple[Tensor, dict[str, Tensor]]:
        """With `level_analysis` in test: also the level each pixel is taken from (`level`), every level's
        prediction (`level_preds`) and the fused prediction of that pass (`level_fused`); the first batch's level map
        goes to TensorBoard."""
        preds, extras = super().evaluation_outputs(images, labels, split)
        if not self._analyses_levels(split):
            return preds, extras
        level, level_preds, fused = self.level_outputs(images, tuple(labels.shape[-2:]))
        if self._level_confusion is None:
            self._log_level_map(images[0], labels[0], preds[0], level[0])
        return preds, {**extras, "level": level, "level_preds": level_preds, "level_fused": fused}

    def update_method_metrics(self, split: str, labels: Tensor, outputs: dict[str, Tensor]) -> None:
        """Adds the batch to the per-level confusion matrices of Table 9 and to the fused output's (Fig. 3)."""
        if not self._analyses_levels(split):
            return
        confusion = level_confusion(outputs["level_preds"], outputs["level"], labels, self.num_classes,
                                    self.ignore_index)
        fused = level_confusion(outputs["level_fused"][:, None], torch.zeros_like(outputs["level"]), labels,
                                self.num_classes, self.ignore_index)[0, 0]
        self._level_confusion = confusion if self._level_confusion is None else self._level_confusion + confusion
        self._fused_confusion = fused if self._fused_confusion is None else self._fused_confusion + fused

    def _log_level_map(self, image: Tensor, label: Tensor, pred: Tensor, level: Tensor) -> None:
        """TensorBoard image: input | ground truth | prediction | level map (dark = coarsest, yellow = finest)."""
        writer = tensorboard_of(self.trainer)
        if writer is None:
            return
        palette = palette_of(self.trainer, self.num_classes)
        num_levels = len(self.strides)
        ramp = np.linspace(0.0, 1.0, num_levels)[:, None]
        level_palette = ((1 - ramp) * np.array([68, 1, 84]) + ramp * np.array([253, 231, 37])).astype(np.uint8)
        rgb = denormalize(image, *normalization_of(self.trainer))
        panels = [colorize(label.cpu().numpy(), palette, self.ignore_index),
                  colorize(pred.cpu().numpy(), palette, self.ignore_index),
                  colorize(level.cpu().numpy(), level_palette.tolist(), 255)]
        if rgb.shape[:2] == panels[0].shape[:2]:
            panels.insert(0, rgb)
        writer.add_image("test/level_map", np.concatenate(panels, 1), self.global_step, dataformats="HWC")

    def on_test_epoch_start(self) -> None:
        self._level_confusion = self._fused_confusion = None

    def method_scores(self, split: str) -> MethodScores | None:
        """Table 9: the pixel share of each assigned level and the mIoU of each level's prediction on the pixels
        assigned to each level (`level/share_l<l>`, `level/mIoU_l<l>_by_l<l'>`; record `<split>_levels.json`).
        Fig. 3: the per-class IoU of each level alone (over all pixels) and of the fused output, with the
        difference level - fused (`<split>_levels_per_class.{json,md,csv,png}`)."""
        if not self._analyses_levels(split) or self._level_confusion is None:
            return None
        confusion = self.trainer.strategy.reduce(self._level_confusion.double(), reduce_op="sum").long()
        fused = self.trainer.strategy.reduce(self._fused_confusion.double(), reduce_op="sum").long()
        self._level_confusion = self._fused_confusion = None
        report = level_report(confusion)
        num_levels = len(self.strides)
        scalars = {f"level/share_l{assigned + 1}": report["share"][assigned] for assigned in range(num_levels)}
        for assigned in range(num_levels):
            for predicting in range(num_levels):
                value = report["mIoU"][predicting][assigned]
                if value == value:  # not NaN
                    scalars[f"level/mIoU_l{assigned + 1}_by_l{predicting + 1}"] = value
        text = "level assignment (Table 9)\n" + format_level_table(report)
        per_class = per_class_level_report(confusion, fused, self.class_names)
        markdown, table = format_per_class_levels(per_class)
        name = f"{split}_levels_per_class"
        files = {"levels_per_class.md": markdown, "levels_per_class.csv": table}
        if self.trainer.is_global_zero:  # the plot is drawn once, where the files are written
            files["levels_per_class.png"] = plot_per_class_levels(per_class)
        records = {"levels": (report, text),
                   "levels_per_class": (per_class, f"per-class IoU of each level and fused (Fig. 3): "
                                                   f"metrics/{name}.{{json,md,csv,png}}")}
        return MethodScores(scalars, records, files)


def level_report(confusion: Tensor) -> dict:
    """Pixel share per assigned level and `mIoU[predicting][assigned]` (percent; NaN where no pixel) from
    `[L, L, K, K]` level confusion matrices (Table 9)."""
    totals = confusion[:, 0].sum(dim=(-1, -2)).double()
    share = (100.0 * totals / totals.sum().clamp_min(1)).tolist()
    iou = iou_from_confusion(confusion)  # [assigned, predicting, K]
    miou = 100.0 * iou.nanmean(dim=-1)
    return {"share": share, "mIoU": miou.transpose(0, 1).tolist()}


def format_level_table(report: dict) -> str:
    """Markdown table in the layout of Table 9 (rows: predicting level l', columns: assigned level l)."""
    n = len(report["share"])
    head = "| l' \\ l | " + " | ".join(f"{a + 1}" for a in range(n)) + " |"
    lines = [head, "|" + " --- |" * (n + 1)]
    lines.append("| share % | " + " | ".join(f"{v:.2f}" for v in report["share"]) + " |")
    for p in range(n):
        lines.append(f"| {p + 1} | " + " | ".join(f"{v:.2f}" for v in report["mIoU"][p]) + " |")
    return "\n".join(lines)


def per_class_level_report(confusion: Tensor, fused_confusion: Tensor, class_names: Sequence[str]) -> dict:
    """Fig. 3: per-class IoU (percent, NaN where a class has no pixel and no prediction) of each level's prediction
    over all pixels, from the `[assigned, predicting, K, K]` level confusion summed over the assigned level, and of
    the fused output from its `[K, K]` confusion: `{"classes", "fused": [K], "levels": [L][K]}`."""
    levels = 100.0 * iou_from_confusion(confusion.sum(dim=0))
    fused = 100.0 * iou_from_confusion(fused_confusion)
    return {"classes": list(class_names), "fused": fused.tolist(), "levels": levels.tolist()}


def format_per_class_levels(report: dict) -> tuple[str, str]:
    """Markdown and CSV tables of `per_class_level_report`: one row per class, the fused IoU, each level's IoU and
    each level's IoU minus the fused IoU (Fig. 3's "degradation"); empty cells where the IoU is undefined."""
    num_levels = len(report["levels"])
    header = ["class", "fused", *[f"level {i + 1}" for i in range(num_levels)],
              *[f"level {i + 1} - fused" for i in range(num_levels)]]
    rows = []
    for k, name in enumerate(report["classes"]):
        fused, levels = report["fused"][k], [report["levels"][i][k] for i in range(num_levels)]
        rows.append([name, fused, *levels, *[level - fused for level in levels]])

    def cell(value: object) -> str:
        return value if isinstance(value, str) else ("" if value != value else f"{value:.2f}")

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[cell(v) for v in row] for row in rows])
    return "\n".join(lines) + "\n", stream.getvalue()


def plot_per_class_levels(report: dict) -> bytes:
    """Fig. 3 as a PNG: the fused output's per-class IoU (bars) over a heatmap of each level's IoU minus the fused
    IoU per class (red: the level alone is worse; grey: undefined). Drawn with matplotlib's Agg canvas."""
    from matplotlib import colormaps

    classes, fused = report["classes"], np.array(report["fused"], dtype=float)
    delta = np.array(report["levels"], dtype=float) - fused[None]
    num_levels, num_classes = delta.shape
    figure = new_figure(max(6.0, 0.16 * num_classes + 2.0), 2.0 + 0.4 * num_levels + 2.0)
    bars, heat = figure.subplots(2, 1, sharex=True, height_ratios=[2.0, 0.4 * num_levels + 0.5])
    bars.bar(np.arange(num_classes), np.nan_to_num(fused), color="0.4")
    bars.set_ylabel("fused IoU (%)")
    bars.set_title("Per-class IoU of each pyramid level versus the fused output (Fig. 3)")
    limit = max(float(np.nanmax(np.abs(delta))) if np.isfinite(delta).any() else 0.0, 1.0)
    image = heat.imshow(np.ma.masked_invalid(delta), aspect="auto", cmap=colormaps["RdBu"].with_extremes(bad="0.8"),
                        vmin=-limit, vmax=limit, interpolation="nearest")
    heat.set_yticks(range(num_levels), [f"level {i + 1}" for i in range(num_levels)])
    heat.set_xticks(range(num_classes), classes, rotation=90, fontsize=7)
    figure.colorbar(image, ax=heat, label="level - fused IoU")
    return png_bytes(figure)


__all__ = ["SpecializeFuse", "format_level_table", "format_per_class_levels", "level_report",
           "per_class_level_report", "plot_per_class_levels"]
