"""Loop references: the oracles of the vectorised code, each written once, here.

An oracle is the slow, obviously-correct version of a vectorised op or loss: a Python loop over images, classes,
cells or pairs that follows the rule as the paper (or docs/methods) states it, with no batching trick to get wrong.
The tests check the library against these on random inputs (values and gradients), and the benchmarks time the
library against the same functions (`benchmarks/kernels.py` and each method's benchmark import them from here;
`benchmarks/repo_root.py` puts the repository root on `sys.path` for that).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from segcentroids.nn.memory import WEIGHT_EPS

IGNORE = 255


# ------------------------------------------------------------------------------------- MCIBI: the feature memory
def loop_memory_update(memory: torch.Tensor, initialized: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                momentum: float, weighting: str, resolution: str, ignore_index: int = 255):
    """`FeatureMemory.update` (MCIBI Eq. 6-10) as a per-class loop (the authors' way): features upsampled to the
    labels (or labels nearest-downsampled to the features), Eq. 8-10 per class present, Eq. 6; first sight = class
    mean. Returns the new (memory, initialized); the inputs are left unchanged."""
    memory, initialized = memory.clone(), initialized.clone()
    if resolution == "label":
        grid = F.interpolate(features.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    else:
        grid = features.float()
        labels = F.interpolate(labels[:, None].float(), size=features.shape[-2:], mode="nearest")[:, 0].long()
    pixels = grid.permute(0, 2, 3, 1).reshape(-1, grid.shape[1])
    flat = labels.reshape(-1)
    for k in range(memory.shape[0]):
        members = pixels[flat == k]
        if len(members) == 0:
            continue
        if initialized[k] == 0:
            memory[k] = members.mean(0)
            initialized[k] = 1
            continue
        if weighting == "cosine":
            similarity = F.cosine_similarity(members, memory[k].expand_as(members), dim=1)
            weights = (1 - similarity).clamp_min(0) + WEIGHT_EPS
        else:
            weights = torch.ones(len(members))
        target = (weights[:, None] * members).sum(0) / weights.sum()
        memory[k] = (1 - momentum) * memory[k] + momentum * target
    return memory, initialized


def loop_image_class_means(features, labels, num_classes, resolution):
    """`FeatureMemory.image_class_means`: per image and class, the mean of the (upsampled) features over the class's
    pixels, one at a time."""
    if resolution == "label":
        grid = F.interpolate(features.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    else:
        grid = features.float()
        labels = F.interpolate(labels[:, None].float(), size=features.shape[-2:], mode="nearest")[:, 0].long()
    means = torch.zeros(features.shape[0], num_classes, features.shape[1])
    present = torch.zeros(features.shape[0], num_classes, dtype=torch.bool)
    for b in range(features.shape[0]):
        for k in range(num_classes):
            mask = labels[b] == k
            if mask.any():
                means[b, k] = grid[b][:, mask].mean(1)
                present[b, k] = True
    return means, present


# ----------------------------------------------------------------------- MVSC: grouped class means and L_fca
def loop_grouped_class_means(features: torch.Tensor, labels: torch.Tensor, group: torch.Tensor, groups: int,
                             classes: int) -> torch.Tensor:
    """`ops.grouped_class_means` for given groups: one masked mean per (class, group), looping over classes, in the
    features' dtype; a group left empty by a present class takes the class mean, an absent class stays 0."""
    flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    labels, group = labels.reshape(-1), group.reshape(-1)
    means = flat.new_zeros(groups, classes, flat.shape[1])
    for k in range(classes):
        in_class = labels == k
        if in_class.any():
            for g in range(groups):
                selected = in_class & (group == g)
                means[g, k] = flat[selected].mean(0) if selected.any() else flat[in_class].mean(0)
    return means


def loop_fca_loss(region, centroids, present, tau, negatives):
    """`feature_centroid_alignment_loss` (MVSC L_fca) in float64, one (class, group) term at a time; `present` is a
    list of booleans."""
    r = region.double().numpy()
    v = centroids.double().numpy()
    vg = v.mean(0)
    unit = lambda x: x / max(np.linalg.norm(x), 1e-12)  # noqa: E731
    terms = []
    G, K, _ = v.shape
    for n in range(K):
        if not present[n]:
            continue
        for g in range(G):
            ri = unit(r[g, n])
            pos = math.exp(ri @ unit(v[g, n]) / tau)
            neg = sum(math.exp(ri @ unit(vg[j]) / tau) for j in range(K)
                      if j != n and (negatives == "all" or present[j]))
            terms.append(-math.log(pos / (pos + neg)))
    return sum(terms) / len(terms)


# ------------------------------------------------------------------------ Specialize and Fuse: pyramid targets
def loop_pyramid_targets(labels: torch.Tensor, strides: list[int], ignore: int = IGNORE):
    """`ops.pyramid_targets` as a per-cell loop: the pyramid ground truth rules (METHODS.md section 2)."""
    semantic, unity = [], []
    b, h, w = labels.shape
    for s in strides:
        sem = torch.full((b, h // s, w // s), ignore, dtype=torch.long)
        uni = torch.full((b, h // s, w // s), ignore, dtype=torch.long)
        for n in range(b):
            for i in range(h // s):
                for j in range(w // s):
                    cell = labels[n, i * s : (i + 1) * s, j * s : (j + 1) * s].flatten().tolist()
                    values = {v for v in cell if v != ignore}
                    if len(values) == 1:
                        sem[n, i, j] = next(iter(values))
                    if len(values) > 1:
                        uni[n, i, j] = 0  # several labels: mix, whatever the ignore pixels
                    elif ignore not in cell:
                        uni[n, i, j] = 1
        semantic.append(sem)
        unity.append(uni)
    return semantic, unity


# ------------------------------------------------------------------------------------------------ PNE: Eq. 6-9
def loop_pne_loss(embeddings, logits, labels, *, samples_per_set, max_anchor_set=None, temperature=1.0,
                  positive_weight="normalized", positive_score="softmax", empty_negatives="skip", form="pne",
                  individual_anchor_sets=True, corresponding_negatives=True, oversized_anchor_sets="skip",
                  reduction="samples", ignore_index=255):
    """`PNELoss(sampling="first")` as a per-image, per-pair loop (raster order); the anchors of a pair are handled
    together. An anchor set above `max_anchor_set` is skipped or cut to its first `max_anchor_set` members; its
    anchors are then tiled or cut to S (`reduction="samples"`) or taken once each (`"anchors"`); the loss is the mean
    over every anchor row."""
    B, D, h, w = embeddings.shape
    K, S, tau = logits.shape[1], samples_per_set, temperature
    if labels.shape[-2:] != (h, w):
        labels = labels[:, :: labels.shape[-2] // h, :: labels.shape[-1] // w]
    emb = embeddings / embeddings.norm(dim=1, keepdim=True)
    terms = []
    for b in range(B):
        E, y, lg = emb[b].flatten(1).T, labels[b].flatten(), logits[b].flatten(1).detach()
        pred = lg.argmax(0)
        score = lg.softmax(0).max(0).values if positive_score == "softmax" else lg.max(0).values.clamp_min(1e-6)
        valid = (y != ignore_index) & (y >= 0) & (y < K)

        def pick(mask):
            idx = torch.nonzero(mask).flatten()
            return idx[torch.arange(S) % len(idx)] if len(idx) else None

        def templates(c, E=E, y=y, pred=pred, valid=valid):
            idx = pick(valid & (y == c) & (pred == c))
            return None if idx is None else E[idx].detach()

        for k in range(K):
            pos_idx = pick(valid & (y == k) & (pred == k))
            if individual_anchor_sets:
                sets = [(p, valid & (y == k) & (pred == p)) for p in range(K) if p != k]
            else:
                sets = [(None, valid & (y == k) & (pred != k))]
            for predicted, mask in sets:
                n = int(mask.sum())
                oversized = max_anchor_set is not None and n > max_anchor_set
                if n == 0 or pos_idx is None or (oversized and oversized_anchor_sets == "skip"):
                    continue
                a_idx = torch.nonzero(mask).flatten()[:max_anchor_set if oversized else n]
                if reduction == "samples":
                    a_idx = a_idx[torch.arange(S) % len(a_idx)]
                anchors, positives = E[a_idx], E[pos_idx].detach()
                wts = score[pos_idx]
                if positive_weight == "normalized":
                    wts = wts / wts.mean()
                elif positive_weight == "none":
                    wts = torch.ones_like(wts)
                if not corresponding_negatives:
                    pools = [templates(c) for c in range(K) if c != k]
                    pools = [p for p in pools if p is not None]
                    if pools:
                        candidates = torch.cat(pools)
                        centre = anchors.detach().mean(0)
                        centre = centre / centre.norm()
                        set_negatives = candidates[(candidates @ centre).topk(S).indices]
                    else:
                        set_negatives = None
                if corresponding_negatives and not individual_anchor_sets:
                    # the pooled set shares the union of N_{l,l} over the classes its pixels were predicted as;
                    # each class's S templates weigh its share of the union's pixels
                    union = {int(c): int((valid & (y == c) & (pred == c)).sum()) for c in pred[mask].unique()}
                    union = {c: n for c, n in union.items() if n > 0}
                    if union:
                        neg_sum = sum(n / sum(union.values()) * (anchors @ templates(c).T / tau).exp().sum(1)
                                      for c, n in union.items())
                    elif empty_negatives == "skip":
                        continue
                    else:
                        neg_sum = (anchors @ anchors.detach().T / tau).exp().sum(1)
                else:
                    negatives = templates(predicted) if corresponding_negatives else set_negatives
                    if negatives is None and empty_negatives == "skip":
                        continue
                    sn = anchors @ (anchors.detach() if negatives is None else negatives).T / tau  # [A, S]
                    neg_sum = sn.exp().sum(1)
                sp = anchors @ positives.T / tau  # [A, S]
                if form == "pne":
                    terms.append(torch.log(1 + neg_sum / (wts * sp.exp()).sum(1)))
                else:
                    ratio = sp.exp() / (sp.exp() + neg_sum[:, None])
                    terms.append((wts * -torch.log(ratio)).sum(1) / S)
    return torch.cat(terms).mean() if terms else embeddings.sum() * 0


# -------------------------------------------------------------------------------------------------- metrics
def loop_segmentation_scores(preds: list[np.ndarray], targets: list[np.ndarray], k: int, ignore: int = IGNORE
                             ) -> dict:
    """mmsegmentation's IoU / Acc / mIoU / mAcc / aAcc (`SegmentationMetrics`) by per-pixel counting in NumPy,
    written without a confusion matrix."""
    inter, area_pred, area_label = np.zeros(k), np.zeros(k), np.zeros(k)
    for p, t in zip(preds, targets):
        valid = t != ignore
        p, t = p[valid], t[valid]
        for c in range(k):
            inter[c] += np.sum((p == c) & (t == c))
            area_pred[c] += np.sum(p == c)
            area_label[c] += np.sum(t == c)
    union = area_pred + area_label - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, np.nan) * 100
        acc = np.where(area_label > 0, inter / area_label, np.nan) * 100
    aacc = inter.sum() / area_label.sum() * 100 if area_label.sum() > 0 else np.nan
    return {"IoU": iou, "Acc": acc, "mIoU": np.nanmean(iou), "mAcc": np.nanmean(acc), "aAcc": aacc}
