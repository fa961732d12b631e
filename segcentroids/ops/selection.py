"""MLSeg label selection: top-kappa classes per image, ground truth re-indexed to ranks, ranks scattered back to K.

All functions work for any batch size (gathers/scatters along the class dimension) and never sync with the host.
"""

from __future__ import annotations

import torch
from torch import Tensor

UNSELECTED_MARGIN = 1e4
"""How far below a pixel's lowest selected logit the unselected classes are put (so they can never be predicted)."""


def select_top_labels(scores: Tensor, k: int) -> Tensor:
    """Indices `[B, min(k, K)]` of the highest `scores [B, K]`, highest first (Eq. 2); no gradient flows."""
    if scores.ndim != 2:
        raise ValueError(f"select_top_labels: scores must be [B, K], got shape {tuple(scores.shape)}")
    if k < 1:
        raise ValueError(f"select_top_labels: k must be >= 1, got {k}")
    k = min(k, scores.shape[1])
    return torch.topk(scores.detach(), k, dim=1, largest=True, sorted=True).indices


def multi_hot_labels(labels: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Image-level targets `[B, K]` (float 0/1): 1 where class k has at least one pixel; ignore pixels excluded."""
    flat = labels.reshape(labels.shape[0], -1)
    valid = flat != ignore_index
    index = torch.where(valid, flat, torch.zeros_like(flat))
    counts = torch.zeros(flat.shape[0], num_classes, device=labels.device, dtype=torch.float32)
    counts.scatter_add_(1, index, valid.float())
    return (counts > 0).float()


def labels_to_ranks(labels: Tensor, selected: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Re-index `labels [B, H, W]` (ids in [0, K) or `ignore_index`) to each pixel's rank in `selected [B, k]`.

    Pixels of classes outside the selection, and ignore pixels, become `ignore_index`.
    """
    batch, k = selected.shape
    # per image: class id -> rank; entry K (where ignore pixels look up) and unselected classes hold ignore
    table = torch.full((batch, num_classes + 1), ignore_index, dtype=torch.long, device=labels.device)
    table.scatter_(1, selected.long(), torch.arange(k, device=labels.device).expand(batch, k))
    flat = labels.reshape(batch, -1).long()
    flat = torch.where(flat == ignore_index, torch.full_like(flat, num_classes), flat)
    return table.gather(1, flat).reshape(labels.shape)


def scatter_to_classes(rank_logits: Tensor, selected: Tensor, num_classes: int) -> Tensor:
    """K-channel logits `[B, K, h, w]` from `rank_logits [B, k, h, w]` of the classes `selected [B, k]`.

    Unselected classes get the pixel's lowest selected logit minus `UNSELECTED_MARGIN`, so the argmax is always a
    selected class and bilinear resizing keeps it so. Differentiable with respect to `rank_logits`.
    """
    batch, k, height, width = rank_logits.shape
    fill = rank_logits.detach().amin(dim=1, keepdim=True) - UNSELECTED_MARGIN
    full = fill.expand(batch, num_classes, height, width).contiguous()
    index = selected.long()[:, :, None, None].expand(batch, k, height, width)
    return full.scatter(1, index, rank_logits)


def suppress_classes(logits: Tensor, keep: Tensor) -> Tensor:
    """`logits [B, k, h, w]` with the channels where `keep [B, k]` (bool) is False put `UNSELECTED_MARGIN` below the
    pixel's lowest logit, so they can never be predicted (the oracle's restriction to ground-truth classes)."""
    fill = logits.detach().amin(dim=1, keepdim=True) - UNSELECTED_MARGIN
    return torch.where(keep[:, :, None, None], logits, fill)
