"""PNE loss: the positive-negative equal contrastive loss (Wang et al., Eq. 6-9).

Anchors are the misclassified pixels of an image. With individual anchor sets (IAS) the anchors of ground-truth
class k predicted as l form the set S_{l,k}; its positives are the correctly predicted pixels of class k (P_{k,k}) and,
with corresponding negatives (CN), its negatives are the correctly predicted pixels of class l (N_{l,l}). Every set is
sampled to exactly `samples_per_set` (S) members, so every set of every image is a fixed-size block, built with one
sort of the batch's pixels by set and gathers; the distinct anchors of a set are weighted by how often the sampling
repeats them and meet their set's S positives and S negatives in batched matmuls. Nothing loops over classes or pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segcentroids.losses.extra import ExtraLoss, LossContext
from segcentroids.nn.projection import ProjectionHead
from segcentroids.ops.blocks import block_products
from segcentroids.ops.resample import nearest_labels

_CHOICES = {
    "sampling": ("random", "first"),
    "positive_weight": ("normalized", "raw", "none"),
    "positive_score": ("softmax", "logit"),
    "empty_negatives": ("skip", "anchors"),
    "form": ("pne", "infonce"),
    "oversized_anchor_sets": ("skip", "sample"),
    "reduction": ("samples", "anchors"),
}
_KEY_BITS = 31  # random tie-break keys are drawn in [0, 2**31); set ids are shifted above them
_CHUNK = 16  # distinct anchors processed together against their set's positives and negatives


@dataclass
class _Predictions:
    """The batch's pixels at the feature resolution `h x w`, flattened to `[B, N]` (`N = h * w`)."""

    num_classes: int  # K
    label: Tensor  # [B, N], 0 where not valid
    pred: Tensor  # [B, N], argmax of the logits
    score: Tensor  # [B * N], w of Eq. 8 (max class probability, or max logit)
    valid: Tensor  # [B, N], labelled with a class in [0, K)
    correct: Tensor  # [B, N], valid and predicted as labelled: templates
    wrong: Tensor  # [B, N], valid and misclassified: anchors


@dataclass
class _SetIndex:
    """The set of every pixel, and the batch's pixels sorted by set (the one sort).

    Set ids: the templates (correct pixels) of (b, c), `b * K + c`, first, then the anchor sets, `num_templates`
    plus `(b * K + l) * K + k` (IAS) or `b * K + k`; pixels in no set get `num_sets`."""

    num_images: int  # B
    num_classes: int  # K
    counts: Tensor  # [num_sets + 1], members per set
    starts: Tensor  # [num_sets + 1], where each set begins in `order`
    order: Tensor  # [B * N], flat pixel indices `b * N + i` sorted by set (random or raster order within a set)
    num_templates: int
    num_sets: int

    def members(self, ids: Tensor, position: Tensor) -> Tensor:
        """Flat pixel indices of the members at `position` (cyclic: tiling) of sets `ids`."""
        n = self.counts[ids].clamp_min(1)[..., None]
        return self.order[(self.starts[ids][..., None] + position % n).clamp_max(self.order.numel() - 1)]


@dataclass
class _Templates:
    """The S sampled templates (correct pixels) of every (image, class) `b * K + c`: the positives P_{k,k} and the
    corresponding negatives N_{l,l}."""

    embeddings: Tensor  # [B*K, S, D], L2-normalised, no gradient
    weights: Tensor  # [B*K, S], the per-positive weights of Eq. 8
    ok: Tensor  # [B*K], the class has correct pixels in the image
    score_std: Tensor  # the sample std of w over the sampled templates (Table 7's "standard deviation")


@dataclass
class _AnchorSets:
    """Every anchor set: S_{l,k} (IAS, index `(b * K + l) * K + k`) or S_k (IAS off, `b * K + k`, pred -1)."""

    size: Tensor  # members
    image: Tensor
    pred: Tensor  # l
    cls: Tensor  # k
    qualifies: Tensor
    negatives_exist: Tensor | None  # CN: the set's negative set is not empty (None: CN off)
    union_share: Tensor | None  # IAS off + CN: each class's share of the union's pixels [B, K (set), K (l)]


@dataclass
class _Chunks:
    """The P qualifying anchor sets (`pairs`), their distinct anchors cut into Q chunks of C."""

    pairs: Tensor  # [P], the qualifying anchor sets, ordered by image
    per_image: int  # the most qualifying sets in one image
    chunk_pair: Tensor  # [Q], index into `pairs`
    chunk_set: Tensor  # [Q], the anchor set
    slot: Tensor  # [Q, C], the member of the set
    multiplicity: Tensor  # [Q, C], how often the sampling repeats the member; 0 marks padding
    anchor_pixels: Tensor  # [Q, C], flat pixel indices
    slots: int  # C times the most chunks of one set: every slot is below it
    image: Tensor  # [Q]
    cls: Tensor  # [Q], k
    pred: Tensor  # [Q], l (-1 with IAS off)


def _rows(pixels: Tensor, flat: Tensor) -> Tensor:
    """L2-normalised embeddings of flat pixel indices `b * N + i` of `pixels` [B * N, D]."""
    return F.normalize(pixels.index_select(0, flat.reshape(-1)).reshape(*flat.shape, pixels.shape[1]), dim=-1)


def _masked_std(values: Tensor, mask: Tensor) -> Tensor:
    """Sample standard deviation of `values` where `mask` holds (0 for fewer than two), without a host sync."""
    count = mask.sum()
    mean = torch.where(mask, values, 0).sum() / count.clamp_min(1)
    return (torch.where(mask, values - mean, 0).square().sum() / (count - 1).clamp_min(1)).sqrt()


def _union_share(predictions: _Predictions, sets: _SetIndex, template_ok: Tensor) -> tuple[Tensor, Tensor]:
    """IAS off + CN: the pooled set S_k shares one negative set, the union of N_{l,l} over the classes l its pixels
    were predicted as; each class weighs its share of the union's pixels [B, K (set), K (l)]. Also whether the union
    is not empty [B * K]."""
    B, K = sets.num_images, sets.num_classes
    image = torch.arange(B, device=template_ok.device)[:, None]
    label, pred, wrong = predictions.label, predictions.pred, predictions.wrong
    predicted_as = torch.zeros(B * K * K, dtype=torch.long, device=template_ok.device).scatter_add_(
        0, ((image * K + label) * K + pred).reshape(-1), wrong.reshape(-1).long())  # no host sync
    union = (predicted_as.reshape(B, K, K) > 0) & template_ok.reshape(B, 1, K)
    union_pixels = torch.where(union, sets.counts[:sets.num_templates].reshape(B, 1, K), 0)
    union_share = union_pixels / union_pixels.sum(dim=2, keepdim=True).clamp_min(1)
    return union_share, union.any(dim=2).reshape(B * K)


class PNELoss(nn.Module):
    """Positive-negative equal contrastive loss, Eq. 9, with the ablation switches of the paper.

    Called as `loss(embeddings [B, D, h, w], logits [B, K, h, w], labels [B, H, W] or [B, h, w], generator=None)`;
    labels are nearest-resampled to `h x w`, predictions are the argmax of `logits`. Embeddings are L2-normalised
    here; channels-last embeddings (as `ProjectionHead` gives them) are read without a copy. Gradients reach the
    anchors only: positives, negatives, weights and the logits are detached.

    Args:
        temperature: tau of Eq. 6-9.
        sampling: "random" (paper: a random order of each set, reproducible with `generator`) or "first" (authors'
            code: raster order). Either way a set of n members is tiled or cut to exactly `samples_per_set`.
        samples_per_set: members taken from every anchor, positive and negative set.
        max_anchor_set: the anchor-set cap ("|S| < 200"): larger sets are skipped or sampled down to it, see
            `oversized_anchor_sets`; None keeps every set whole.
        oversized_anchor_sets: a set above `max_anchor_set` is "skip"ped (authors' code) or "sample"d: a random
            (or, with "first", raster-order) `max_anchor_set` of its members are its anchors (the paper's "at most
            200 misclassified pixels").
        reduction: "samples" (authors' code): every anchor set is tiled or cut to `samples_per_set` anchor samples
            and the loss is their mean, so every set weighs the same; "anchors" (the paper's 1/|S| of Eq. 9): every
            anchor of a set (up to the cap) counts once and the loss is the mean over misclassified pixels.
        positive_weight: per-positive weight of Eq. 8: "normalized" (w / mean w over the sampled positives, paper),
            "raw" (w, authors' code) or "none" (Eq. 6).
        positive_score: what w is: "softmax" (max class probability, paper) or "logit" (max raw score, Table 7's
            "PW w/o softmax"; clamped at 1e-6 so that the weighted sum stays positive).
        empty_negatives: a set whose negative set is empty is "skip"ped (its anchors add nothing and are not
            counted) or contrasted with its own anchors as negatives ("anchors", authors' code).
        form: "pne" (Eq. 6/8) or "infonce" (the asymmetric Eq. 1, per-positive weights as a weighted mean).
        individual_anchor_sets: IAS; off = the misclassified pixels of class k form one set whatever they were
            predicted as, which (CN on) shares one negative set: the union of N_{l,l} over those predicted classes.
        corresponding_negatives: CN; off = the negatives of a set are the `samples_per_set` correctly predicted
            pixels of other classes most similar (cosine) to the set's mean anchor, among the sampled templates of
            every other class.
        ignore_index: label of pixels left out (labels outside `[0, K)` are left out too).
    """

    def __init__(
        self,
        temperature: float = 1.0,
        sampling: str = "random",
        samples_per_set: int = 100,
        max_anchor_set: int | None = 199,
        positive_weight: str = "normalized",
        positive_score: str = "softmax",
        empty_negatives: str = "skip",
        form: str = "pne",
        individual_anchor_sets: bool = True,
        corresponding_negatives: bool = True,
        oversized_anchor_sets: str = "skip",
        reduction: str = "samples",
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        for key, value in (("sampling", sampling), ("positive_weight", positive_weight),
                           ("positive_score", positive_score), ("empty_negatives", empty_negatives), ("form", form),
                           ("oversized_anchor_sets", oversized_anchor_sets), ("reduction", reduction)):
            if value not in _CHOICES[key]:
                raise ValueError(f"{key} must be one of {_CHOICES[key]}, got {value!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if samples_per_set < 1:
            raise ValueError(f"samples_per_set must be >= 1, got {samples_per_set}")
        if max_anchor_set is not None and max_anchor_set < 1:
            raise ValueError(f"max_anchor_set must be >= 1 or None, got {max_anchor_set}")
        self.temperature = float(temperature)
        self.sampling = sampling
        self.samples_per_set = int(samples_per_set)
        self.max_anchor_set = max_anchor_set
        self.positive_weight = positive_weight
        self.positive_score = positive_score
        self.empty_negatives = empty_negatives
        self.form = form
        self.individual_anchor_sets = bool(individual_anchor_sets)
        self.corresponding_negatives = bool(corresponding_negatives)
        self.oversized_anchor_sets = oversized_anchor_sets
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, embeddings: Tensor, logits: Tensor, labels: Tensor,
                generator: torch.Generator | None = None) -> Tensor:
        """The loss (a float32 scalar; 0 with a graph when no set qualifies)."""
        return self.compute(embeddings, logits, labels, generator)[0]

    def compute(self, embeddings: Tensor, logits: Tensor, labels: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss and its diagnostics (`pairs`: anchor sets that contributed, `anchors`: distinct anchor pixels
        used, `anchor_share`: anchors / labelled pixels, `weight_std`: the std of the positive scores w over the
        sampled templates, Table 7's "standard deviation"), all tensors (no host sync besides the set count)."""
        if embeddings.ndim != 4 or logits.ndim != 4 or embeddings.shape[0] != logits.shape[0] \
                or embeddings.shape[-2:] != logits.shape[-2:]:
            raise ValueError(f"embeddings [B, D, h, w] and logits [B, K, h, w] must share B, h, w; got "
                             f"{tuple(embeddings.shape)} and {tuple(logits.shape)}")
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self._compute(embeddings.float(), logits.detach().float(), labels, generator)

    # ------------------------------------------------------------------------------------------------- the sets
    def _compute(self, embeddings: Tensor, logits: Tensor, labels: Tensor,
                 generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        # [B * N, D], rows contiguous (a view of channels-last embeddings, else one copy): the sampled pixels are
        # gathered as whole rows, and only they are normalised
        pixels = embeddings.permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
        with torch.no_grad():
            predictions = self._predictions(logits, labels)
            sets = self._sort_into_sets(predictions, generator)
            templates = self._templates(pixels, sets, predictions.score)
            anchor_sets = self._qualifying_sets(predictions, sets, templates.ok)
            chunks = self._anchor_chunks(sets, anchor_sets)
        anchors = _rows(pixels, chunks.anchor_pixels)  # [Q, C, D], the only tensor with a gradient
        positive_sim, positive_weights = self._positives(anchors, sets, templates, chunks)
        log_negatives, negative_ok = self._log_negatives(anchors, pixels, sets, templates, anchor_sets, chunks)
        per_anchor = self._per_anchor(positive_sim, positive_weights, log_negatives)
        loss, stats = self._weighted_mean(per_anchor, negative_ok, chunks, predictions.valid)
        return loss, {**stats, "weight_std": templates.score_std}

    def _predictions(self, logits: Tensor, labels: Tensor) -> _Predictions:
        """Labels nearest-resampled to the feature resolution, predictions, their scores w and which are right."""
        B, K, h, w = logits.shape
        N = h * w
        labels = nearest_labels(labels, (h, w)).reshape(B, N)
        valid = (labels >= 0) & (labels < K) & (labels != self.ignore_index)
        label = torch.where(valid, labels, 0)
        if self.positive_score == "softmax":
            score, pred = logits.softmax(dim=1).max(dim=1)
        else:
            score, pred = logits.max(dim=1)
            score = score.clamp_min(1e-6)
        score, pred = score.reshape(B * N), pred.reshape(B, N)
        correct = valid & (pred == label)
        return _Predictions(K, label, pred, score, valid, correct, valid & ~correct)

    def _sort_into_sets(self, predictions: _Predictions, generator: torch.Generator | None) -> _SetIndex:
        """Every pixel's set id, the sets' sizes and the one sort of the batch's pixels by set."""
        B, K, device = predictions.label.shape[0], predictions.num_classes, predictions.label.device
        label, pred, correct, wrong = predictions.label, predictions.pred, predictions.correct, predictions.wrong
        image = torch.arange(B, device=device)[:, None]
        # set ids: templates (correct pixels) of (b, c) first, then anchor sets (b, l, k) or (b, k)
        num_templates = B * K
        anchor_set = (image * K + pred) * K + label if self.individual_anchor_sets else image * K + label
        num_sets = num_templates + (B * K * K if self.individual_anchor_sets else B * K)
        set_id = torch.where(correct, image * K + label,
                             torch.where(wrong, num_templates + anchor_set, num_sets)).reshape(-1)
        counts = torch.zeros(num_sets + 1, dtype=torch.long, device=device)
        counts.scatter_add_(0, set_id, torch.ones_like(set_id))
        starts = counts.cumsum(0) - counts
        if self.sampling == "first":
            order = torch.sort(set_id, stable=True).indices
        else:
            keys = torch.randint(0, 2**_KEY_BITS, set_id.shape, generator=generator, device=device)
            order = torch.sort((set_id << _KEY_BITS) + keys, stable=True).indices
        return _SetIndex(B, K, counts, starts, order, num_templates, num_sets)

    def _templates(self, pixels: Tensor, sets: _SetIndex, score: Tensor) -> _Templates:
        """The S sampled templates of every (image, class) and their per-positive weights (Eq. 8)."""
        samples = torch.arange(self.samples_per_set, device=pixels.device)
        template_pixels = sets.members(torch.arange(sets.num_templates, device=pixels.device), samples)  # [B*K, S]
        template_ok = sets.counts[:sets.num_templates] > 0
        templates = _rows(pixels, template_pixels)  # [B*K, S, D]
        weights = score[template_pixels]  # [B*K, S]
        score_std = _masked_std(weights, template_ok[:, None].expand_as(weights))
        if self.positive_weight == "normalized":
            weights = weights / weights.mean(dim=1, keepdim=True)
        elif self.positive_weight == "none":
            weights = torch.ones_like(weights)
        return _Templates(templates, weights, template_ok, score_std)

    def _qualifying_sets(self, predictions: _Predictions, sets: _SetIndex, template_ok: Tensor) -> _AnchorSets:
        """Each anchor set's image and classes, whether its negative set exists and whether it qualifies."""
        B, K, device = sets.num_images, sets.num_classes, template_ok.device
        # which anchor sets qualify: members (at most max_anchor_set unless sampled down) and a non-empty positive set
        set_size = sets.counts[sets.num_templates:sets.num_sets]
        if self.individual_anchor_sets:
            set_image = torch.arange(B, device=device).repeat_interleave(K * K)
            set_pred = torch.arange(K, device=device).repeat_interleave(K).repeat(B)
            set_class = torch.arange(K, device=device).repeat(B * K)
        else:
            set_image = torch.arange(B, device=device).repeat_interleave(K)
            set_pred = torch.full_like(set_image, -1)
            set_class = torch.arange(K, device=device).repeat(B)
        qualifies = (set_size > 0) & template_ok[set_image * K + set_class]
        if self.max_anchor_set is not None and self.oversized_anchor_sets == "skip":
            qualifies &= set_size <= self.max_anchor_set
        union_share = negatives_exist = None
        if self.corresponding_negatives and not self.individual_anchor_sets:
            union_share, negatives_exist = _union_share(predictions, sets, template_ok)
        elif self.corresponding_negatives:
            negatives_exist = template_ok[set_image * K + set_pred]  # N_{l,l} of each set S_{l,k}
        if self.empty_negatives == "skip" and negatives_exist is not None:
            qualifies &= negatives_exist
        return _AnchorSets(set_size, set_image, set_pred, set_class, qualifies, negatives_exist, union_share)

    def _anchor_counts(self, set_size: Tensor) -> tuple[Tensor, Tensor]:
        """Per anchor set: n, the members it is sampled from (cut to the cap with `oversized_anchor_sets="sample"`),
        and its distinct anchors: min(n, S) when tiled or cut to S samples (`reduction="samples"`), else n."""
        members = set_size
        if self.max_anchor_set is not None and self.oversized_anchor_sets == "sample":
            members = set_size.clamp_max(self.max_anchor_set)
        return members, members.clamp_max(self.samples_per_set) if self.reduction == "samples" else members

    def _anchor_chunks(self, sets: _SetIndex, anchor_sets: _AnchorSets) -> _Chunks:
        """The qualifying sets' distinct anchors, in chunks of C, with their multiplicities (the one host sync)."""
        S = self.samples_per_set
        C = min(_CHUNK, S) if self.reduction == "samples" else _CHUNK
        qualifies, device = anchor_sets.qualifies, anchor_sets.size.device
        members, distinct = self._anchor_counts(anchor_sets.size)
        # The distinct anchors of a set stand for its anchor samples with multiplicities (a set of n < S members
        # tiled to S samples repeats some), and are processed in chunks of C against the set's S positives /
        # negatives.
        chunks = torch.where(qualifies, (distinct + C - 1) // C, 0)
        # the one host sync: the numbers of qualifying sets and of chunks size the blocks below (padding to all
        # B*K*K sets instead costs B*K^2*S^2 similarities, 14 GB for ADE20K's 150 classes at batch 16)
        P, Q, per_image, most_chunks = torch.stack([qualifies.sum(), chunks.sum(),
                                                    qualifies.reshape(sets.num_images, -1).sum(dim=1).max(),
                                                    chunks.max()]).tolist()
        pairs = torch.nonzero_static(qualifies, size=P).squeeze(1)
        pair_chunks = chunks[pairs]
        chunk_pair = torch.repeat_interleave(torch.arange(P, device=device), pair_chunks, output_size=Q)
        first_chunk = (pair_chunks.cumsum(0) - pair_chunks)[chunk_pair]
        slot = ((torch.arange(Q, device=device) - first_chunk) * C)[:, None] + torch.arange(C, device=device)
        chunk_set = pairs[chunk_pair]
        n, used = members[chunk_set][:, None], (slot < distinct[chunk_set][:, None]).long()  # 0 marks padding
        if self.reduction == "samples":  # member j of a set of n < S members is sampled (S - 1 - j) // n + 1 times
            multiplicity = torch.where(n >= S, 1, (S - 1 - slot) // n.clamp_min(1) + 1) * used
        else:  # every anchor once (Eq. 9's 1/|S|)
            multiplicity = used
        anchor_pixels = sets.members(sets.num_templates + chunk_set, slot)  # [Q, C]
        return _Chunks(pairs, per_image, chunk_pair, chunk_set, slot, multiplicity, anchor_pixels, C * most_chunks,
                       anchor_sets.image[chunk_set], anchor_sets.cls[chunk_set], anchor_sets.pred[chunk_set])

    def _positives(self, anchors: Tensor, sets: _SetIndex, templates: _Templates,
                   chunks: _Chunks) -> tuple[Tensor, Tensor]:
        """Each anchor's similarities / tau to its set's S positives P_{k,k} `[Q, C, S]` and their weights
        `[Q, 1, S]`."""
        positive_ids = chunks.image * sets.num_classes + chunks.cls
        positive_weights = templates.weights[positive_ids][:, None, :]  # [Q, 1, S]
        positive_sim = block_products(anchors, templates.embeddings, positive_ids)
        if self.temperature != 1:
            positive_sim = positive_sim / self.temperature
        return positive_sim, positive_weights

    def _log_negatives(self, anchors: Tensor, pixels: Tensor, sets: _SetIndex, templates: _Templates,
                       anchor_sets: _AnchorSets, chunks: _Chunks) -> tuple[Tensor, Tensor]:
        """The log of each anchor's sum over its set's negatives, `log sum_n exp(a.n / tau)` `[Q, C]`, and whether
        it counts `[Q, C]` (its set has negatives, or `empty_negatives="anchors"` stands in for them)."""
        tau = self.temperature
        if not self.corresponding_negatives:
            negatives, negative_ok = self._hard_negatives(anchors, sets, templates, anchor_sets, chunks)
            log_negatives = (anchors @ negatives.transpose(1, 2) / tau).logsumexp(dim=-1)  # [Q, C]
        else:
            negative_ok = anchor_sets.negatives_exist[chunks.chunk_set][:, None].expand_as(chunks.multiplicity)
            if self.individual_anchor_sets:
                # IAS + CN (Eq. 9): the set S_{l,k} is contrasted with N_{l,l}; chunks are ordered by (b, l, k)
                negative_ids = chunks.image * sets.num_classes + chunks.pred
                negative_sim = block_products(anchors, templates.embeddings, negative_ids, ids_sorted=True)
                log_negatives = (negative_sim / tau if tau != 1 else negative_sim).logsumexp(dim=-1)
            else:
                log_negatives = self._union_negatives(anchors, chunks, templates.embeddings, anchor_sets.union_share)
        if self.empty_negatives == "anchors":
            # the set's own S (tiled) anchor samples, detached like every template, stand in for missing negatives
            # (authors' code)
            samples = torch.arange(self.samples_per_set, device=anchors.device)
            own = _rows(pixels, sets.members(sets.num_templates + chunks.chunk_set, samples)).detach()
            log_negatives = torch.where(negative_ok, log_negatives,
                                        (anchors @ own.transpose(1, 2) / tau).logsumexp(dim=-1))
            negative_ok = torch.ones_like(negative_ok)
        return log_negatives, negative_ok

    def _per_anchor(self, positive_sim: Tensor, positive_weights: Tensor, log_negatives: Tensor) -> Tensor:
        """The loss of each anchor `[Q, C]`: Eq. 8 (`form="pne"`) or Eq. 1 (`"infonce"`)."""
        if self.form == "pne":
            # Eq. 8: log(1 + sum_n exp(a.n/tau) / sum_p w_p/w_bar exp(a.p/tau)), computed in log space
            log_positives = (positive_sim + positive_weights.log()).logsumexp(dim=-1)
            return F.softplus(log_negatives - log_positives)
        # Eq. 1: mean over positives of -log(exp(a.p) / (exp(a.p) + sum_n exp(a.n))), weighted by w_p/w_bar
        per_positive = torch.logaddexp(positive_sim, log_negatives[..., None]) - positive_sim
        return (per_positive * positive_weights).sum(dim=-1) / self.samples_per_set

    @staticmethod
    def _weighted_mean(per_anchor: Tensor, negative_ok: Tensor, chunks: _Chunks,
                       valid: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss, the mean over anchor samples weighted by multiplicity, and the diagnostics."""
        # Eq. 9: mean over the anchor samples of all sets (`reduction="samples"`) or over the anchors (`"anchors"`)
        counted = torch.where(negative_ok, chunks.multiplicity, 0)
        loss = torch.where(counted > 0, per_anchor * counted, 0.0).sum() / counted.sum().clamp_min(1)
        with torch.no_grad():
            used = (counted > 0).sum(dim=1)
            num_anchors = used.sum().float()
            contributed = torch.zeros(chunks.pairs.numel(), dtype=used.dtype, device=used.device).index_add_(
                0, chunks.chunk_pair, used) > 0
            stats = {
                "pairs": contributed.sum().float(),
                "anchors": num_anchors,
                "anchor_share": num_anchors / valid.sum().clamp_min(1),
            }
        return loss, stats

    def _hard_negatives(self, anchors: Tensor, sets: _SetIndex, templates: _Templates, anchor_sets: _AnchorSets,
                        chunks: _Chunks) -> tuple[Tensor, Tensor]:
        """CN off: per set, the S templates of other classes most similar (cosine) to the set's mean anchor sample.

        The set centres of an image meet its K * S templates in one batched product, `[B, per_image, K * S]`
        (`per_image`: the most qualifying sets in one image; pairs are ordered by image). Returns the negatives of
        each chunk `[Q, S, D]` and whether its set has any `[Q, C]`."""
        pairs, chunk_pair, multiplicity = chunks.pairs, chunks.chunk_pair, chunks.multiplicity
        template_ok = templates.ok
        S, D = templates.embeddings.shape[1:]
        B, K, P = sets.num_images, sets.num_classes, pairs.numel()
        device = anchors.device
        with torch.no_grad():
            weighted = (anchors.detach() * multiplicity[..., None]).sum(dim=1)
            centre = F.normalize(torch.zeros(P, D, device=device).index_add_(0, chunk_pair, weighted), dim=-1)
            pair_image, pair_class = anchor_sets.image[pairs], anchor_sets.cls[pairs]
            sets_in_image = torch.zeros(B, dtype=torch.long, device=device).scatter_add_(
                0, pair_image, torch.ones_like(pair_image))
            position = torch.arange(P, device=device) - (sets_in_image.cumsum(0) - sets_in_image)[pair_image]
            centres = centre.new_zeros(B, chunks.per_image, D).index_put_((pair_image, position), centre)
            every = templates.embeddings.reshape(B, K * S, D)
            hardness = (centres @ every.transpose(1, 2))[pair_image, position]  # [P, K*S]
            other = template_ok.reshape(B, K)[pair_image] & (torch.arange(K, device=device) != pair_class[:, None])
            hardness = hardness.reshape(P, K, S).masked_fill(~other[..., None], float("-inf")).reshape(P, K * S)
            chosen = pair_image[:, None] * (K * S) + hardness.topk(min(S, K * S), dim=1).indices
            negatives = templates.embeddings.reshape(B * K * S, D).index_select(0, chosen[chunk_pair].reshape(-1))
        return negatives.reshape(-1, S, D), other.any(dim=1)[chunk_pair][:, None].expand_as(multiplicity)

    def _union_negatives(self, anchors: Tensor, chunks: _Chunks, templates: Tensor, union_share: Tensor) -> Tensor:
        """IAS off + CN: the pooled set S_k of an image shares one negative set, the union U of N_{l,l} over the
        classes l its pixels were predicted as. Its S negatives are represented by each such class's S templates
        weighted by the class's share of U's pixels, `sum_l (|N_l| / |U|) sum_s exp(a.t_{l,s} / tau)`: the expected
        sum over S uniform draws from U, so |N| = |P| = S still holds (Eq. 7).

        The pooled sets of an image (at most K, L = `chunks.slots` anchor slots each) meet all its templates in one
        `[B, K * L, K * S]` product (Cityscapes' 19 classes, L = 112: 32 M similarities at batch 8; an ablation-only
        path). Returns the log of that negative sum per anchor `[Q, C]`."""
        S, D = templates.shape[1:]
        B, K = union_share.shape[:2]
        L, slot = chunks.slots, chunks.slot
        image, cls = chunks.image[:, None].expand_as(slot), chunks.cls[:, None].expand_as(slot)
        dense = anchors.new_zeros(B, K, L, D).index_put((image, cls, slot), anchors)  # one slot per (b, k, j)
        every = dense.reshape(B, K * L, D) @ templates.reshape(B, K * S, D).transpose(1, 2) / self.temperature
        # classes outside the union get a finite log weight far below any |a.t / tau| <= 1 / tau (exp underflows to 0;
        # an empty union keeps finite gradients)
        outside = -(1e4 + 2 / self.temperature)
        log_share = torch.where(union_share > 0, union_share.log(), outside)[:, :, None, :, None]  # [B, K, 1, K, 1]
        log_sum = (every.reshape(B, K, L, K, S) + log_share).flatten(3).logsumexp(dim=-1)  # [B, K, L]
        return log_sum[image, cls, slot]


class PNEObjective(ExtraLoss):
    """PNE as a plug-in objective: a projection head on a method's features and `alpha * PNELoss` (Eq. 4).

    Any method adds it from YAML under `model.init_args.extra_losses`; `segcentroids.methods.PNE` is the Baseline
    with this objective. The head runs in training only. Per step it logs `train/pne/pairs` (anchor sets that
    contributed), `train/pne/anchors` (distinct anchor pixels) and `train/pne/anchor_share` (anchors / labelled
    pixels at the feature resolution), as tensors (no host sync).

    Args:
        alpha: weight of the PNE term (Eq. 4; paper 1.3).
        tau: temperature (paper 1).
        embed_dim: channels of the projected embedding (256).
        feature: key of the method's training outputs the head reads (`"decoder"`: the classifier's input in
            Baseline).
        in_channels: channels of that feature; None = the method's `feature_channels`, the channels of `decoder`
            (e.g. MCIBI's `memory_channels`); set it when `feature` names another output.
        seed: with `sampling="random"` the sets are shuffled by a generator seeded from (seed, global step), so a
            run, and a resumed run, repeats.
        sampling, samples_per_set, max_anchor_set, positive_weight, positive_score, empty_negatives, form,
        individual_anchor_sets, corresponding_negatives, oversized_anchor_sets, reduction: see `PNELoss`.
    """

    def __init__(
        self,
        alpha: float = 1.3,
        tau: float = 1.0,
        embed_dim: int = 256,
        feature: str = "decoder",
        in_channels: int | None = None,
        sampling: Literal["random", "first"] = "random",
        samples_per_set: int = 100,
        max_anchor_set: int | None = 199,
        positive_weight: Literal["normalized", "raw", "none"] = "normalized",
        positive_score: Literal["softmax", "logit"] = "softmax",
        empty_negatives: Literal["skip", "anchors"] = "skip",
        form: Literal["pne", "infonce"] = "pne",
        individual_anchor_sets: bool = True,
        corresponding_negatives: bool = True,
        oversized_anchor_sets: Literal["skip", "sample"] = "skip",
        reduction: Literal["samples", "anchors"] = "samples",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if alpha < 0:
            raise ValueError(f"PNEObjective: alpha must be >= 0, got {alpha}")
        if embed_dim < 1:
            raise ValueError(f"PNEObjective: embed_dim must be >= 1, got {embed_dim}")
        self.loss = PNELoss(
            temperature=tau, sampling=sampling, samples_per_set=samples_per_set, max_anchor_set=max_anchor_set,
            positive_weight=positive_weight, positive_score=positive_score, empty_negatives=empty_negatives,
            form=form, individual_anchor_sets=individual_anchor_sets,
            corresponding_negatives=corresponding_negatives, oversized_anchor_sets=oversized_anchor_sets,
            reduction=reduction,
        )
        self.weights = {"pne": alpha}
        self.embed_dim = embed_dim
        self.feature = feature
        self.in_channels = in_channels
        self.seed = seed
        self.projection: ProjectionHead | None = None
        self.context: LossContext | None = None

    def build(self, context: LossContext) -> None:
        """Build the projection head for the method's features; keep the context for logging and the step."""
        channels = self.in_channels if self.in_channels is not None else context.feature_channels
        self.projection = ProjectionHead(channels, self.embed_dim)
        self.loss.ignore_index = context.ignore_index
        self.context = context

    def forward(self, outputs: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        if self.projection is None or self.context is None:
            raise RuntimeError("PNEObjective.build(context) must be called before forward")
        if self.feature not in outputs or "logits" not in outputs:
            raise KeyError(f"PNEObjective needs outputs[{self.feature!r}] and outputs['logits']; got {list(outputs)}")
        features, logits = outputs[self.feature], outputs["logits"].detach()
        expected = self.projection[0].in_channels
        if features.shape[1] != expected:
            raise ValueError(f"PNEObjective: outputs[{self.feature!r}] has {features.shape[1]} channels but the "
                             f"projection head was built for {expected}; set in_channels={features.shape[1]}")
        if logits.shape[-2:] != features.shape[-2:]:
            logits = F.interpolate(logits.float(), size=features.shape[-2:], mode="bilinear", align_corners=False)
        generator = torch.Generator(device=features.device)
        generator.manual_seed((self.seed << 32) + self.context.step())
        loss, stats = self.loss.compute(self.projection(features), logits, labels, generator)
        for name, value in stats.items():
            self.context.log(f"train/pne/{name}", value, labels.shape[0])
        return {"pne": loss}
