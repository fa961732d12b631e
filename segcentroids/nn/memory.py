"""FeatureMemory: a K x C memory of dataset-level class representations updated by momentum (MCIBI Eq. 6, 8-10)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from segcentroids.ops.resample import bilinear_taps, nearest_labels, replicate_pad_end

WEIGHTINGS = ("cosine", "mean")
RESOLUTIONS = ("label", "feature")
INITS = ("first_batch_mean", "random_pixel")
COSINE_EPS = 1e-8
"""Norm floor of the cosine similarity (as `F.cosine_similarity`)."""
WEIGHT_EPS = 1e-6
"""Added to every weight `1 - s` of Eq. 10, so that a class whose pixels all point along its memory row takes their
plain mean instead of 0 / 0."""


def global_statistics(sums: Tensor, totals: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class sums `[K, C]` and totals `[K]` added over all processes with one all-reduce (unchanged in a single
    process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return sums, totals
    packed = torch.cat([sums, totals[:, None]], dim=1)
    dist.all_reduce(packed)
    return packed[:, :-1], packed[:, -1]


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"FeatureMemory: {name} must be one of {list(allowed)}, got {value!r}")


def image_class_means(features: Tensor, labels: Tensor, num_classes: int, ignore_index: int,
                      resolution: Literal["label", "feature"] = "label") -> tuple[Tensor, Tensor]:
    """Plain mean of each class's pixel features in each image: `[B, K, C]` (float32, zero where absent) and the
    presence mask `[B, K]`. `"label"`: features `[B, C, h, w]` upsampled (bilinear) to the labels `[B, H, W]`;
    `"feature"`: labels nearest-downsampled to the features. One `index_add_` over rows `b * K + k`, no loop over
    classes (labels outside `[0, K)` are left out)."""
    if resolution == "label":
        features = F.interpolate(features.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    else:
        labels = nearest_labels(labels, tuple(features.shape[-2:]))
    batch, channels = features.shape[:2]
    rows = batch * num_classes
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    image = torch.arange(batch, device=labels.device)[:, None, None]
    row = torch.where(valid, labels + image * num_classes, rows).reshape(-1)  # the last row collects the rest
    pixels = features.float().permute(0, 2, 3, 1).reshape(-1, channels)
    sums = pixels.new_zeros(rows + 1, channels).index_add_(0, row, pixels)[:rows]
    counts = torch.bincount(row, minlength=rows + 1)[:rows].to(sums.dtype)
    means = sums / counts.clamp_min(1.0)[:, None]
    return means.view(batch, num_classes, channels), (counts > 0).view(batch, num_classes)


class FeatureMemory(nn.Module):
    """Dataset-level class representations `memory [K, C]` with per-class `initialized` flags (float32 buffers).

    `update(features, labels, momentum)` (no grad, float32) implements MCIBI's moving average (Eq. 6)

        M_k <- (1 - m) * M_k + m * T_k,   T_k = sum_i w_i R_i / sum_i w_i   over the pixels i of class k (Eq. 8),

    with `w_i = 1 - cos(R_i, M_k)` (Eq. 9-10, `weighting="cosine"`) or `w_i = 1` (`"mean"`). A class seen for the
    first time is set to the plain mean of its pixels (`init="first_batch_mean"`, the authors' code) or to one random
    pixel of it (`"random_pixel"`, the paper), without momentum. Classes absent from the batch and ignore pixels never
    touch the memory.

    `update_resolution="label"` uses the features bilinearly upsampled to the label size (paper and authors' code),
    computed exactly through the adjoint of the upsampling, so the `[B, C, H, W]` map is never built;
    `"feature"` nearest-downsamples the labels to the feature grid instead (cheaper).

    Under `torch.distributed`, the per-class weighted sums and weight totals are all-reduced before the one update,
    so every rank applies the same update, equal to the single-process update on the global batch.
    """

    memory: Tensor
    initialized: Tensor
    momentum: Tensor

    def __init__(
        self,
        num_classes: int,
        channels: int,
        weighting: Literal["cosine", "mean"] = "cosine",
        update_resolution: Literal["label", "feature"] = "label",
        init: Literal["first_batch_mean", "random_pixel"] = "first_batch_mean",
        ignore_index: int = 255,
        momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if num_classes < 1 or channels < 1:
            raise ValueError(f"FeatureMemory: num_classes and channels must be >= 1, got {num_classes}, {channels}")
        _check("weighting", weighting, WEIGHTINGS)
        _check("update_resolution", update_resolution, RESOLUTIONS)
        _check("init", init, INITS)
        self.num_classes = num_classes
        self.channels = channels
        self.weighting = weighting
        self.update_resolution = update_resolution
        self.init = init
        self.ignore_index = ignore_index
        self.register_buffer("memory", torch.zeros(num_classes, channels, dtype=torch.float32))
        self.register_buffer("initialized", torch.zeros(num_classes, dtype=torch.float32))
        self.register_buffer("momentum", torch.tensor(float(momentum)))  # m of Eq. 6, set by a MomentumSchedule

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, channels={self.channels}, weighting={self.weighting!r}, "
                f"update_resolution={self.update_resolution!r}, init={self.init!r}")

    # ----------------------------------------------------------------------------------------------------- update
    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, momentum: float | Tensor | None = None) -> None:
        """One moving-average step (Eq. 6) from `features [B, C, h, w]` and `labels [B, H, W]` with momentum m
        (None: the `momentum` buffer)."""
        if features.ndim != 4 or features.shape[1] != self.channels:
            raise ValueError(f"FeatureMemory: features must be [B, {self.channels}, h, w], got {tuple(features.shape)}")
        if labels.ndim != 3 or labels.shape[0] != features.shape[0]:
            raise ValueError(f"FeatureMemory: labels must be [B, H, W] with B={features.shape[0]}, "
                             f"got {tuple(labels.shape)}")
        sums, totals = global_statistics(*self.class_statistics(features.detach().float(), labels))
        self.apply_statistics(sums, totals, self.momentum if momentum is None else momentum)

    @torch.no_grad()
    def image_class_means(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Plain mean of each class's pixel features in each image, at the update resolution: `[B, K, C]` (zero
        where absent) and the presence mask `[B, K]` (bool). For an initialisation pass, not a training step.

        One `class_statistics` call of a plain (`"mean"`, uninitialised) memory of B * K rows: class k of image b is
        row `b * K + k`, ignore pixels are -1."""
        K = self.num_classes
        valid = labels != self.ignore_index
        if bool((valid & ((labels < 0) | (labels >= K))).any()):  # one check per batch of the pass
            raise ValueError(f"FeatureMemory: labels must be in [0, {K}) or {self.ignore_index}")
        return image_class_means(features.detach(), labels, K, self.ignore_index, self.update_resolution)

    @torch.no_grad()
    def initialize_from_sums(self, sums: Tensor, counts: Tensor) -> None:
        """Sets every class counted in any process to `sums [K, C] / counts [K]` (added over all processes) and marks
        it initialised; the other rows are left as they are."""
        sums, counts = global_statistics(sums.float(), counts.float())
        present = counts > 0
        rows = sums / counts.clamp_min(1.0)[:, None]
        self.memory.copy_(torch.where(present[:, None], rows, self.memory))
        self.initialized.copy_(torch.maximum(self.initialized, present.float()))

    def apply_statistics(self, sums: Tensor, totals: Tensor, momentum: float | Tensor) -> None:
        """Eq. 6 from the (global) per-class weighted sums `[K, C]` and weight totals `[K]`."""
        present = totals > 0
        target = sums / totals.clamp_min(torch.finfo(torch.float32).tiny)[:, None]  # T_k, Eq. 10
        blended = (1.0 - momentum) * self.memory + momentum * target  # Eq. 6
        new = torch.where(self.initialized[:, None] > 0, blended, target)  # first sight: no momentum
        self.memory.copy_(torch.where(present[:, None], new, self.memory))
        self.initialized.copy_(torch.maximum(self.initialized, present.float()))

    def class_statistics(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Per-class `sum_i w_i R_i` `[K, C]` and `sum_i w_i` `[K]` of this process's batch (float32).

        Pixel weights: `1 - cos(R_i, M_k) + eps` for initialised classes under cosine weighting, 1 otherwise (class
        mean); with `init="random_pixel"`, an uninitialised class puts weight 1 on one random pixel only.
        """
        if self.update_resolution == "feature":
            return self._statistics_at_features(features, labels)
        return self._statistics_at_labels(features, labels)

    def _pixel_weights(self, classes: Tensor, valid: Tensor, cosine: Tensor | None) -> Tensor:
        """Weights of Eq. 10 for flat pixels with class `classes`, validity `valid`, similarity to their row."""
        weights = valid.float()
        class_initialized = self.initialized[classes] > 0
        if cosine is not None:
            cosine_weights = (1.0 - cosine).clamp_min(0.0) + WEIGHT_EPS
            weights = torch.where(class_initialized, cosine_weights * weights, weights)
        if self.init == "random_pixel":
            weights = torch.where(class_initialized, weights, self._random_pixel(classes, valid).float())
        return weights

    def _random_pixel(self, classes: Tensor, valid: Tensor) -> Tensor:
        """One pixel per class chosen at random (the same one on every rank: the global maximum of random keys)."""
        keys = torch.rand(classes.shape, device=classes.device).masked_fill(~valid, -1.0)
        best = torch.full((self.num_classes,), -1.0, device=classes.device)
        best = best.scatter_reduce(0, classes, keys, reduce="amax")
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(best, op=dist.ReduceOp.MAX)
        return valid & (keys == best[classes])

    def _split_labels(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Flat class indices (ignore -> 0) and the validity mask."""
        valid = labels != self.ignore_index
        return torch.where(valid, labels, torch.zeros_like(labels)).reshape(-1), valid.reshape(-1)

    def _statistics_at_features(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Labels nearest-downsampled to the feature grid; one feature vector per labelled cell."""
        batch, channels, h, w = features.shape
        classes, valid = self._split_labels(nearest_labels(labels, (h, w)))
        pixels = features.permute(0, 2, 3, 1).reshape(-1, channels)  # [N, C]
        cosine = None
        if self.weighting == "cosine":
            rows = self.memory[classes]  # [N, C]
            norms = pixels.norm(dim=1).clamp_min(COSINE_EPS) * rows.norm(dim=1).clamp_min(COSINE_EPS)
            cosine = (pixels * rows).sum(dim=1) / norms  # Eq. 9
        weights = self._pixel_weights(classes, valid, cosine)
        sums = features.new_zeros(self.num_classes, channels).index_add_(0, classes, pixels * weights[:, None])
        totals = features.new_zeros(self.num_classes).index_add_(0, classes, weights)
        return sums, totals

    def _statistics_at_labels(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Features bilinearly upsampled to the label size, without building the upsampled map.

        Upsampled pixel p is `U_p = sum_j a_pj f_q(p,j)` over its four taps. Then `U_p . M_k` is the same
        combination of the feature-grid products `f_q . M_k`, `|U_p|^2` combines the products of neighbouring
        feature vectors, and `sum_p w_p [y_p = k] U_p = sum_q G_kq f_q` with `G_kq = sum_p w_p a_pj [y_p = k]`
        scattered from the pixels onto the feature grid (the adjoint of the upsampling).
        """
        batch, _, h, w = features.shape
        height, width = labels.shape[-2:]
        padded = replicate_pad_end(features)  # [B, C, h+1, w+1]
        cells = (h + 1) * (w + 1)
        index, tap_weight = bilinear_taps((h, w), (height, width), features.device)  # [4, H, W]
        index = index.reshape(4, 1, -1)  # [4, 1, HW]
        tap_weight = tap_weight.reshape(4, 1, -1)
        classes, valid = self._split_labels(labels)  # [B*H*W]
        classes_bp = classes.view(batch, -1)
        # flat position (class, tap cell) of each pixel's four taps in a [B, K * cells] grid: [B, 4 * HW]
        tap_cells = (classes_bp[None] * cells + index).permute(1, 0, 2).reshape(batch, -1)
        flat = padded.flatten(2)  # [B, C, cells]
        cosine = None
        if self.weighting == "cosine":
            # products of the tap features with the memory row of each pixel's class
            products = torch.einsum("bcq,kc->bkq", flat, self.memory).reshape(batch, -1)  # [B, K*cells]
            dots = (tap_weight * products.gather(1, tap_cells).view(batch, 4, -1).permute(1, 0, 2)).sum(0)
            sq_norm = self._upsampled_sq_norm(padded, index, tap_weight)  # [B, HW]
            row_norm = self.memory.norm(dim=1)[classes_bp]
            cosine = dots / (sq_norm.clamp_min(0).sqrt().clamp_min(COSINE_EPS) * row_norm.clamp_min(COSINE_EPS))
            cosine = cosine.reshape(-1)
        weights = self._pixel_weights(classes, valid, cosine).view(batch, -1)  # [B, HW]
        tap_values = (tap_weight * weights[None]).permute(1, 0, 2).reshape(batch, -1)
        grid_weights = features.new_zeros(batch, self.num_classes * cells).scatter_add_(1, tap_cells, tap_values)
        sums = torch.einsum("bkq,bcq->kc", grid_weights.view(batch, self.num_classes, cells), flat)
        totals = features.new_zeros(self.num_classes).index_add_(0, classes, weights.reshape(-1))
        return sums, totals

    @staticmethod
    def _upsampled_sq_norm(padded: Tensor, index: Tensor, tap_weight: Tensor) -> Tensor:
        """`|U_p|^2` of every upsampled pixel from the Gram entries of its 2 x 2 tap neighbourhood `[B, HW]`."""
        batch, _, rows, cols = padded.shape
        # products of neighbouring feature vectors on the padded grid, indexed by the upper/left one
        gram = padded.new_zeros(5, batch, rows, cols)
        gram[0] = (padded * padded).sum(1)  # self
        gram[1, :, :, :-1] = (padded[..., :-1] * padded[..., 1:]).sum(1)  # (y, x) . (y, x+1)
        gram[2, :, :-1, :] = (padded[..., :-1, :] * padded[..., 1:, :]).sum(1)  # (y, x) . (y+1, x)
        gram[3, :, :-1, :-1] = (padded[..., :-1, :-1] * padded[..., 1:, 1:]).sum(1)  # (y, x) . (y+1, x+1)
        gram[4, :, :-1, :-1] = (padded[..., :-1, 1:] * padded[..., 1:, :-1]).sum(1)  # (y, x+1) . (y+1, x)
        gram = gram.flatten(2)  # [5, B, cells]

        def at(kind: int, flat_index: Tensor) -> Tensor:
            return gram[kind].gather(1, flat_index.expand(batch, -1))

        top_left, top_right, bottom_left, _ = index  # [1, HW] each
        w00, w01, w10, w11 = tap_weight
        sq = sum(weight**2 * at(0, ix) for weight, ix in zip(tap_weight, index))
        sq = sq + 2 * w00 * w01 * at(1, top_left) + 2 * w10 * w11 * at(1, bottom_left)
        sq = sq + 2 * w00 * w10 * at(2, top_left) + 2 * w01 * w11 * at(2, top_right)
        sq = sq + 2 * w00 * w11 * at(3, top_left) + 2 * w01 * w10 * at(4, top_left)
        return sq
