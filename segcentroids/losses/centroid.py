"""MVSC centroid losses: feature-centroid alignment (Eq. 2), centroid pulling (Eq. 3), centroid enhancement (Eq. 4)
and the semantic loss of the (enhanced) centroids, L_v.

Shapes: G groups, K classes, D channels. `present [K]` flags the classes with pixels in the batch; absent classes
contribute no term. All losses are computed in float32.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

NEGATIVES = ("all", "present")


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` where `mask`; 0 (with a graph) when the mask is empty."""
    weights = mask.to(values.dtype).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1)


def feature_centroid_alignment_loss(
    region_means: Tensor,
    centroids: Tensor,
    present: Tensor,
    tau: float = 0.07,
    negatives: Literal["all", "present"] = "all",
) -> Tensor:
    """L_fca, Eq. 2 read as InfoNCE on L2-normalised vectors.

    For class n and group g the anchor is the group's feature mean r_{n,g}, the positive its own centroid V_g[n],
    the negatives the global centroids V_G[j] (mean over groups) of the other classes j != n: all K - 1 of them
    (`negatives="all"`) or only those present in the batch (`"present"`):

        loss_{n,g} = -log( exp(r.V_g[n] / tau) / (exp(r.V_g[n] / tau) + sum_{j != n} exp(r.V_G[j] / tau)) )

    averaged over the present classes and all groups.

    Args:
        region_means: `[G, K, D]` r_{n,g} (zero rows of absent classes are ignored).
        centroids: `[G, K, D]` V_1 .. V_G.
        present: `[K]` bool.
        tau: temperature.
        negatives: which other classes' global centroids are negatives.
    """
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    num_classes = centroids.shape[1]
    anchors = F.normalize(region_means.float(), dim=-1)
    centroids = centroids.float()
    positive = (anchors * F.normalize(centroids, dim=-1)).sum(-1) / tau  # [G, K]
    global_centroids = F.normalize(centroids.mean(0), dim=-1)  # V_G
    negative = torch.einsum("gkd,jd->gkj", anchors, global_centroids) / tau  # [G, K, K]
    own = torch.eye(num_classes, dtype=torch.bool, device=centroids.device)
    logits = torch.where(own, positive[..., None], negative)
    if negatives == "present":
        logits = logits.masked_fill(~(own | present[None, :]), float("-inf"))
    loss = torch.logsumexp(logits, dim=-1) - positive
    return _masked_mean(loss, present[None, :])


def centroid_pulling_loss(centroids: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """L_cos, Eq. 3: the G groups are split at random into two halves (sizes G // 2 and G - G // 2), each half is
    averaged to V_1, V_2 `[K, D]`, and the loss is the mean over classes of 1 - cos(V_1[k], V_2[k]).

    With one group there is nothing to pull: the loss is 0 (with a graph).
    """
    groups = centroids.shape[0]
    if groups < 2:
        return centroids.float().sum() * 0.0
    perm_device = generator.device if generator is not None else centroids.device
    perm = torch.randperm(groups, generator=generator, device=perm_device).to(centroids.device)
    first = centroids[perm[: groups // 2]].float().mean(0)
    second = centroids[perm[groups // 2 :]].float().mean(0)
    return (1.0 - F.cosine_similarity(first, second, dim=-1)).mean()


def centroid_enhancement(centroids: Tensor, region_means: Tensor) -> Tensor:
    """Eq. 4: V' = V + R - SG(R). Equal to V in value; its gradient reaches both V and R (straight-through)."""
    return centroids + region_means - region_means.detach()


def centroid_semantic_loss(centroid_logits: Tensor, present: Tensor) -> Tensor:
    """L_v: cross-entropy of each present class's (enhanced) centroids, classified by the dense-feature classifier,
    against their class.

    Args:
        centroid_logits: `[G, K, K]` logits of centroid (g, n) over the K classes.
        present: `[K]` bool; absent classes give no term.
    """
    groups, num_classes, _ = centroid_logits.shape
    target = torch.arange(num_classes, device=centroid_logits.device).expand(groups, num_classes)
    loss = F.cross_entropy(centroid_logits.float().permute(0, 2, 1), target, reduction="none")  # [G, K]
    return _masked_mean(loss, present[None, :])
