"""MVSC: Multi-group Visual Semantic Centroid for semantic segmentation (Chen et al.).

G groups of learnable class centroids live in the space of the decoder features (the classifier's input). In each
training step every present class's pixels are split at random into G groups whose means r_{n,g} are aligned with
the centroids (L_fca, Eq. 2); the groups of centroids are pulled together (L_cos, Eq. 3); the centroids, made
data-dependent by the straight-through enhancement V' = V + R - SG(R) (Eq. 4), go through the dense classifier and are
classified as their class (L_v). Total loss Eq. 5. The centroids are training-only: inference is the Baseline's.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from segcentroids.losses.centroid import (
    NEGATIVES,
    centroid_enhancement,
    centroid_pulling_loss,
    centroid_semantic_loss,
    feature_centroid_alignment_loss,
)
from segcentroids.methods.base import Baseline
from segcentroids.nn.centroids import Centroids
from segcentroids.ops.grouping import grouped_class_means

_SEED_STRIDE = 1_000_003  # separates the random streams of different seeds, steps and ranks


class MVSC(Baseline):
    """Baseline + multi-group visual semantic centroids (training only).

    Args:
        groups: number of centroid groups G (Table 3: 1, 2, 4, 8).
        tau: InfoNCE temperature of L_fca.
        lambda_f: weight of L_fca (Eq. 5), the loss term `feature_alignment`.
        lambda_c: weight of L_cos (Eq. 5), the loss term `centroid_pulling`.
        lambda_v: weight of L_v (Eq. 5), the loss term `semantic_projection`.
        negatives: L_fca negatives: the global centroids of `"all"` other classes or only of those `"present"` in
            the batch.
        feature_alignment: use L_fca (Table 2 column L_fca).
        centroid_pulling: use L_cos (Table 2 column L_cos).
        semantic_projection: use L_v, the centroids classified by the dense classifier (Table 2 column L_v).
        centroid_enhancement: classify V' = V + R - SG(R) instead of V in L_v (Table 2 column CE).
        centroid_std: std of the centroids' truncated-normal init.
        seed: seed of the per-step random grouping and halving; step t on rank r always draws the same split.
    """

    def __init__(
        self,
        groups: int = 4,
        tau: float = 0.07,
        lambda_f: float = 0.1,
        lambda_c: float = 1.0,
        lambda_v: float = 0.05,
        negatives: Literal["all", "present"] = "all",
        feature_alignment: bool = True,
        centroid_pulling: bool = True,
        semantic_projection: bool = True,
        centroid_enhancement: bool = True,
        centroid_std: float = 0.02,
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if groups < 1:
            raise ValueError(f"MVSC: groups must be >= 1, got {groups}")
        if tau <= 0:
            raise ValueError(f"MVSC: tau must be > 0, got {tau}")
        if negatives not in NEGATIVES:
            raise ValueError(f"MVSC: negatives must be one of {NEGATIVES}, got {negatives!r}")
        for key, value in (("lambda_f", lambda_f), ("lambda_c", lambda_c), ("lambda_v", lambda_v)):
            if value < 0:
                raise ValueError(f"MVSC: {key} must be >= 0, got {value}")
        self.groups = groups
        self.tau = tau
        self.negatives = negatives
        self.feature_alignment = feature_alignment
        self.centroid_pulling = centroid_pulling
        self.semantic_projection = semantic_projection
        self.use_enhancement = centroid_enhancement
        self.seed = seed
        self.centroids: Centroids | None = None
        if feature_alignment or centroid_pulling or semantic_projection:
            self.centroids = Centroids(groups, self.num_classes, self.segmodel.out_channels, std=centroid_std)
        self.loss_weights.update({"feature_alignment": lambda_f, "centroid_pulling": lambda_c,
                                  "semantic_projection": lambda_v})
        self._generator: torch.Generator | None = None

    def step_generator(self, device: torch.device) -> torch.Generator:
        """The generator of this training step, seeded from (seed, global step, rank): no host sync, repeatable."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        step_seed = ((self.seed * _SEED_STRIDE + self.global_step) * _SEED_STRIDE + self.global_rank) % 2**63
        return self._generator.manual_seed(step_seed)

    def method_losses(self, outputs: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        """The Baseline's `ce` and, per switch, `feature_alignment` (L_fca, Eq. 2), `centroid_pulling` (L_cos,
        Eq. 3) and `semantic_projection` (L_v, Eq. 4 and the dense classifier)."""
        losses = super().method_losses(outputs, labels)
        if self.centroids is None:
            return losses
        features = outputs["decoder"]
        generator = self.step_generator(features.device)
        centroids = self.centroids()
        with torch.autocast(device_type=features.device.type, enabled=False):
            if self.feature_alignment or self.semantic_projection:
                # Eq. 1 and Sec. 3.2: per-class pixels split into G random groups, averaged -> r_{n,g}
                region_means, present = grouped_class_means(
                    features.float(), labels, self.groups, generator, self.ignore_index, self.num_classes
                )
            if self.feature_alignment:  # Eq. 2
                losses["feature_alignment"] = feature_centroid_alignment_loss(
                    region_means, centroids, present, self.tau, self.negatives
                )
            if self.centroid_pulling:  # Eq. 3
                losses["centroid_pulling"] = centroid_pulling_loss(centroids, generator)
        if self.semantic_projection:
            # Eq. 4, then the same classifier as the dense features, CE against the centroid's class (L_v)
            projected = centroid_enhancement(centroids, region_means) if self.use_enhancement else centroids
            groups, num_classes, dim = projected.shape
            centroid_logits = self.classify(projected.reshape(groups * num_classes, dim, 1, 1))
            losses["semantic_projection"] = centroid_semantic_loss(
                centroid_logits.reshape(groups, num_classes, num_classes), present
            )
        return losses
