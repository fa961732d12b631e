"""PNE: Positive-Negative Equal contrastive loss for semantic segmentation (Wang et al.).

`CE + alpha * PNE` (Eq. 4): the Baseline with `segcentroids.losses.PNEObjective` (projection head + `PNELoss`,
Eq. 6-9) composed on. Inference is the Baseline's: the head runs in training only.
"""

from __future__ import annotations

from typing import Literal

from segcentroids.losses.pne import PNEObjective
from segcentroids.methods.base import Baseline


class PNE(Baseline):
    """Baseline + the PNE loss on the decoder features (paper: alpha = 1.3, tau = 1).

    Args:
        alpha: weight of the PNE loss (Eq. 4, Table 8).
        tau: temperature (Eq. 6-9, Table 8).
        embed_dim: channels of the projection head's output.
        sampling, samples_per_set, max_anchor_set, positive_weight, positive_score, empty_negatives, form,
        individual_anchor_sets, corresponding_negatives, oversized_anchor_sets, reduction, seed: see
        `PNEObjective` / `PNELoss` (Tables 5-7; the last two choose the authors' or the paper's reading of Eq. 9).
        **kwargs: Baseline arguments (`segmodel`, `num_classes`, `optim`, `extra_losses`, ...).
    """

    def __init__(
        self,
        alpha: float = 1.3,
        tau: float = 1.0,
        embed_dim: int = 256,
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
        **kwargs,
    ) -> None:
        objective = PNEObjective(
            alpha=alpha, tau=tau, embed_dim=embed_dim, sampling=sampling, samples_per_set=samples_per_set,
            max_anchor_set=max_anchor_set, positive_weight=positive_weight, positive_score=positive_score,
            empty_negatives=empty_negatives, form=form, individual_anchor_sets=individual_anchor_sets,
            corresponding_negatives=corresponding_negatives, oversized_anchor_sets=oversized_anchor_sets,
            reduction=reduction, seed=seed,
        )
        kwargs["extra_losses"] = [objective, *(kwargs.get("extra_losses") or [])]
        super().__init__(**kwargs)
