"""Pyramidal output representation (Specialize and Fuse, ICCV 2021): targets, relabelling, fusion, analysis.

Every list in this module is ordered coarsest level first (level 1 of the paper) to finest (level L).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from segcentroids.ops.resample import resize_bilinear

RelabelPolicy = Literal["none", "gt_unity", "true_positive"]
RELABEL_POLICIES = ("none", "gt_unity", "true_positive")


def _cells(x: Tensor, stride: int) -> Tensor:
    """`[B, H, W]` -> `[B, H / stride, stride, W / stride, stride]` (a view): reduce over dims (2, 4) to pool cells."""
    b, h, w = x.shape
    return x.view(b, h // stride, stride, w // stride, stride)


def _check_strides(strides: list[int], height: int, width: int) -> None:
    if not strides:
        raise ValueError("strides must list at least one stride")
    for stride in strides:
        if stride < 1 or height % stride or width % stride:
            raise ValueError(f"stride {stride} must be >= 1 and divide the label size {height}x{width}")
    if any(a <= b for a, b in zip(strides, strides[1:])):
        raise ValueError(f"strides must be ordered coarsest first (strictly decreasing), got {strides}")


def pyramid_targets(labels: Tensor, strides: list[int], ignore_index: int = 255) -> tuple[list[Tensor], list[Tensor]]:
    """Semantic and unity ground truth of every pyramid level (Sec. 3.1).

    A cell covers `s x s` label pixels. Unity target: 1 if the cell has no ignore pixel and one label, 0 if it has
    more than one label among its valid pixels, `ignore_index` if it has an ignore pixel and its valid pixels share
    one label (or it has none). Semantic target: the shared label of the valid pixels, `ignore_index` for mix cells
    and cells with no valid pixel. Computed with max/min pooling over cells.

    Args:
        labels: int64 `[B, H, W]`.
        strides: cell sizes in pixels, coarsest first; each must divide H and W.

    Returns:
        `(semantic, unity)`: two lists, coarsest first, of int64 `[B, H / s, W / s]`.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be [B, H, W], got shape {tuple(labels.shape)}")
    _check_strides(list(strides), labels.shape[-2], labels.shape[-1])
    valid = labels != ignore_index
    # max/min over the valid labels of a cell (int32: labels fit); -1 / `big` stand for "no valid pixel"
    big = torch.iinfo(torch.int32).max
    labels = labels.int()
    low = torch.where(valid, labels, torch.full_like(labels, -1))
    high = torch.where(valid, labels, torch.full_like(labels, big))
    ignore = torch.full((), ignore_index, dtype=torch.int64, device=labels.device)
    pixel_maps = (low, high, ~valid)
    maps, finer = pixel_maps, 1
    semantic, unity = [], []
    for stride in reversed(list(strides)):  # finest first: each level pools the previous one when its stride divides
        if stride % finer:
            maps, finer = pixel_maps, 1
        factor = stride // finer
        cells = [_cells(m, factor) for m in maps]
        maps = (cells[0].amax(dim=(2, 4)), cells[1].amin(dim=(2, 4)), cells[2].any(dim=(2, 4)))
        finer = stride
        vmax, vmin, has_ignore = maps
        one_label = vmax == vmin  # false for a cell with no valid pixel (-1 != big)
        semantic.append(torch.where(one_label, vmax.long(), ignore))
        unity.append(torch.where(has_ignore & (vmax <= vmin), ignore, one_label.long()))
    return semantic[::-1], unity[::-1]


def _upsample_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest upsampling of a boolean `[B, h, w]` by an integer factor to `size` (each cell to its descendants)."""
    fy, fx = size[0] // mask.shape[-2], size[1] // mask.shape[-1]
    if fy * mask.shape[-2] != size[0] or fx * mask.shape[-1] != size[1]:
        raise ValueError(f"a finer level {size} must be an integer multiple of a coarser one {tuple(mask.shape[-2:])}")
    return mask.repeat_interleave(fy, dim=-2).repeat_interleave(fx, dim=-1)


def relabel_done_by_coarser(
    semantic_targets: list[Tensor],
    unity_targets: list[Tensor],
    unity_probs: list[Tensor],
    policy: RelabelPolicy = "true_positive",
    train_tau: float = 0.9,
    ignore_index: int = 255,
) -> tuple[list[Tensor], list[Tensor]]:
    """Marks "done by coarser" cells as ignore (Sec. 3.2, Table 7).

    A cell of level l is selected when (`gt_unity`) its ground truth is unity, or (`true_positive`) its ground truth
    is unity and its predicted unity probability is >= `train_tau`. Every descendant of a selected cell, at every
    finer level, becomes `ignore_index` in both the semantic and the unity targets. `none` returns the targets as
    they are. The selected cell itself keeps its targets.

    Args:
        semantic_targets: coarsest first, `[B, h_l, w_l]`; finer levels are integer multiples of coarser ones (the
            last entry may be the pixel labels).
        unity_targets: coarsest first, at the resolutions of the first `len(unity_targets)` semantic levels.
        unity_probs: predicted unity probabilities of the first `len(unity_probs)` levels (read only, no gradient).

    Returns:
        New `(semantic, unity)` lists; the inputs are not modified.
    """
    if policy not in RELABEL_POLICIES:
        raise ValueError(f"relabel policy must be one of {RELABEL_POLICIES}, got {policy!r}")
    if len(unity_targets) > len(semantic_targets) or len(unity_probs) > len(unity_targets):
        raise ValueError(
            f"need len(unity_probs) <= len(unity_targets) <= len(semantic_targets), got {len(unity_probs)}, "
            f"{len(unity_targets)}, {len(semantic_targets)}"
        )
    semantic, unity = list(semantic_targets), list(unity_targets)
    if policy == "none":
        return semantic, unity
    for level, target in enumerate(unity_targets[: len(unity_probs)]):
        selected = target == 1
        if policy == "true_positive":
            selected = selected & (unity_probs[level].detach() >= train_tau)
        for finer in range(level + 1, len(semantic)):
            done = _upsample_mask(selected, tuple(semantic[finer].shape[-2:]))
            semantic[finer] = semantic[finer].masked_fill(done, ignore_index)
            if finer < len(unity):
                unity[finer] = unity[finer].masked_fill(done, ignore_index)
    return semantic, unity


def fuse_level_map(unity_probs: list[Tensor], size: tuple[int, int], tau: float = 0.9) -> Tensor:
    """Level each finest cell takes its label from (Eq. 2): the coarsest level whose (nearest-upsampled) unity
    probability is >= `tau`, the finest level (index `len(unity_probs)`) when none is.

    Returns:
        int64 `[B, *size]` with values in `0 .. len(unity_probs)` (0 = coarsest).
    """
    if not unity_probs:
        raise ValueError("fuse_level_map needs at least one unity level")
    unity = [F.interpolate(u.unsqueeze(1).float(), size=size, mode="nearest") for u in unity_probs]
    is_unity = torch.cat([u >= tau for u in unity] + [torch.ones_like(unity[0], dtype=torch.bool)], dim=1)
    return is_unity.byte().argmax(dim=1)  # argmax returns the first (= coarsest) maximal index


def fuse_pyramid(semantic_logits: list[Tensor], unity_probs: list[Tensor], tau: float = 0.9) -> Tensor:
    """Fused class probabilities at the finest grid (Eq. 2).

    Each finest cell takes the softmax probabilities of the coarsest level whose unity probability is >= `tau`
    while every coarser level is < `tau`; the finest level is the fallback. Unity masks are upsampled nearest,
    class probabilities bilinearly (`align_corners=False`).

    Args:
        semantic_logits: L tensors `[B, K, h_l, w_l]`, coarsest first.
        unity_probs: L - 1 tensors `[B, h_l, w_l]` for levels 1..L-1.

    Returns:
        `[B, K, h_L, w_L]` probabilities (float32).
    """
    if len(unity_probs) != len(semantic_logits) - 1:
        raise ValueError(
            f"fuse_pyramid needs one unity level fewer than semantic levels, got {len(unity_probs)} and "
            f"{len(semantic_logits)}"
        )
    size = tuple(semantic_logits[-1].shape[-2:])
    if not unity_probs:
        return semantic_logits[0].float().softmax(dim=1)
    level = fuse_level_map(unity_probs, size, tau).unsqueeze(1)
    fused = semantic_logits[-1].float().softmax(dim=1)  # the finest level, the fallback
    for index, logits in enumerate(semantic_logits[:-1]):
        probs = logits.float().softmax(dim=1)
        if probs.shape[-2:] != size:
            probs = resize_bilinear(probs, size)
        if fused.requires_grad or probs.requires_grad:
            fused = torch.where(level == index, probs, fused)
        else:  # inference: in place, no new [B, K, H, W] map per level
            torch.where(level == index, probs, fused, out=fused)
    return fused


def level_confusion(
    level_preds: Tensor, level_map: Tensor, labels: Tensor, num_classes: int, ignore_index: int = 255
) -> Tensor:
    """Confusion matrices per (assigned level, predicting level) pair, for Table 9.

    Args:
        level_preds: int64 `[B, L, H, W]`, the class predicted by each level's semantic output at the label size.
        level_map: int64 `[B, H, W]`, the level each pixel is assigned to by the unity pyramid.
        labels: int64 `[B, H, W]`.

    Returns:
        int64 `[L, L, K, K]`: `[assigned, predicting, ground truth, prediction]` pixel counts (ignore left out).
    """
    num_levels = level_preds.shape[1]
    valid = labels != ignore_index
    gt = labels.clamp(0, num_classes - 1).unsqueeze(1)
    predicting = torch.arange(num_levels, device=labels.device).view(1, -1, 1, 1)
    index = ((level_map.unsqueeze(1) * num_levels + predicting) * num_classes + gt) * num_classes + level_preds
    weights = valid.unsqueeze(1).expand_as(index).reshape(-1).long()
    counts = torch.bincount(index.reshape(-1), weights=weights, minlength=num_levels**2 * num_classes**2)
    return counts.long().view(num_levels, num_levels, num_classes, num_classes)


def iou_from_confusion(confusion: Tensor) -> Tensor:
    """Per-class IoU `[..., K]` from confusion matrices `[..., K, K]` (NaN for a class absent from both)."""
    confusion = confusion.double()
    tp = confusion.diagonal(dim1=-2, dim2=-1)
    union = confusion.sum(-1) + confusion.sum(-2) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
