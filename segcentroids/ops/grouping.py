"""Random grouping of each class's pixels and per-(group, class) feature means (MVSC, Eq. 1 and Sec. 3.2).

Everything here is vectorised (one sort and one `index_add` for the whole batch, no loop over classes) and draws
its randomness from an explicit `torch.Generator`, so a training step is reproducible from its seed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from segcentroids.ops.resample import nearest_labels

# random keys live in the low 31 bits of the sort key, the class index above them
_KEY_BITS = 31


def _count(index: Tensor, size: int) -> Tensor:
    """Occurrences of each value of `index` in `[0, size)` (a `bincount` without its host sync on CUDA)."""
    return torch.zeros(size, dtype=torch.long, device=index.device).scatter_add_(0, index, torch.ones_like(index))


def random_class_groups(
    labels: Tensor,
    groups: int,
    num_classes: int,
    generator: torch.Generator | None = None,
    ignore_index: int = 255,
) -> Tensor:
    """Random group index of every pixel: each class's pixels split into `groups` near-equal parts.

    Args:
        labels: int labels `[...]` (any shape); `ignore_index` and values outside `[0, num_classes)` are ignored.
        groups: number of groups G.
        num_classes: number of classes K.
        generator: source of the random split (on CPU or on the labels' device).
    Returns:
        int64 tensor of the labels' shape: the group in `[0, G)` of each valid pixel, -1 for ignored pixels. A class
        with `c` pixels has groups of `c // G` or `c // G + 1` pixels (group sizes differ by at most one).
    """
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    flat = labels.reshape(-1).long()
    valid = (flat != ignore_index) & (flat >= 0) & (flat < num_classes)
    classes = torch.where(valid, flat, torch.full_like(flat, num_classes))  # ignored pixels -> bin K
    key_device = generator.device if generator is not None else flat.device
    keys = torch.randint(0, 2**_KEY_BITS, flat.shape, generator=generator, device=key_device).to(flat.device)
    # one sort orders pixels by class, and randomly within a class
    order = torch.sort((classes << _KEY_BITS) | keys, stable=True).indices
    counts = _count(classes, num_classes + 1)
    starts = torch.cumsum(counts, 0) - counts
    sorted_classes = classes[order]
    rank = torch.arange(flat.numel(), device=flat.device) - starts[sorted_classes]
    sorted_groups = rank * groups // counts[sorted_classes].clamp_min(1)
    group = torch.empty_like(flat).scatter_(0, order, sorted_groups)
    return torch.where(valid, group, torch.full_like(group, -1)).reshape(labels.shape)


def grouped_class_means(
    features: Tensor,
    labels: Tensor,
    groups: int,
    generator: torch.Generator | None = None,
    ignore_index: int = 255,
    num_classes: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Means of each class's features over G random, near-equal groups of its pixels (r_{n,g} of Sec. 3.2).

    Args:
        features: `[B, D, h, w]` dense features.
        labels: `[B, H, W]` int labels; nearest-downsampled to `(h, w)` when larger.
        groups: number of groups G.
        generator: source of the random split, so a step is reproducible.
        ignore_index: label left out.
        num_classes: K; inferred from the largest valid label when None (this syncs with the host: pass it in a
            training step).
    Returns:
        `(means [G, K, D], present [K] bool)`. `means[g, k]` is the mean feature of group g of class k (differentiable
        w.r.t. `features`), zero for absent classes. A present class with fewer than G pixels has empty groups, which
        take the mean of all its pixels so that every present (g, k) holds a mean of real features.
    """
    batch, dim, height, width = features.shape
    labels = nearest_labels(labels, (height, width))
    if num_classes is None:
        valid_labels = labels[labels != ignore_index]
        num_classes = int(valid_labels.max()) + 1 if valid_labels.numel() else 1
    group = random_class_groups(labels, groups, num_classes, generator, ignore_index).reshape(-1)
    classes = labels.reshape(-1)
    valid = group >= 0
    dump = groups * num_classes  # ignored pixels are summed into one extra slot, then dropped
    slot = torch.where(valid, group * num_classes + classes, torch.full_like(group, dump))
    # scatter along the pixel axis of the native [B, D, h * w] layout (a permute to [N, D] would copy the features)
    flat = features.reshape(batch, dim, height * width)
    index = slot.view(batch, 1, height * width).expand(batch, dim, height * width)
    sums = flat.new_zeros(batch, dim, dump + 1).scatter_add_(2, index, flat).sum(0)[:, :dump]
    sums = sums.t().reshape(groups, num_classes, dim)
    counts = _count(slot, dump + 1)[:dump].view(groups, num_classes).to(flat.dtype)
    class_counts = counts.sum(0)
    present = class_counts > 0
    class_means = sums.sum(0) / class_counts.clamp_min(1)[:, None]
    group_means = sums / counts.clamp_min(1)[..., None]
    means = torch.where((counts > 0)[..., None], group_means, class_means.expand_as(group_means))
    return means, present
