"""Asymmetric loss (ASL, Ben-Baruch et al. 2020) for multi-label image classification, as used by MLSeg."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AsymmetricLoss(nn.Module):
    """Asymmetric focusing with a probability margin on the negatives, on logits and multi-hot targets.

    With p = sigmoid(logit) and the shifted negative probability p_m = max(p - clip, 0):

        L+ = (1 - p) ** gamma_pos * log(p)          for positives (target 1)
        L- = p_m ** gamma_neg * log(1 - p_m)        for negatives (target 0)
        loss = -mean over batch and classes of (y * L+ + (1 - y) * L-)

    Logarithms are of probabilities clamped below at `eps`. Computed in float32 whatever the input dtype.
    `focal_grad=False` treats the focusing factors as constants (no gradient through them), as in the
    reference implementation's `disable_torch_grad_focal_loss`.
    """

    def __init__(self, gamma_neg: float = 2.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-5,
                 focal_grad: bool = True) -> None:
        super().__init__()
        for key, value in (("gamma_neg", gamma_neg), ("gamma_pos", gamma_pos), ("clip", clip)):
            if value < 0:
                raise ValueError(f"AsymmetricLoss: {key} must be >= 0, got {value}")
        if not 0 < eps < 1:
            raise ValueError(f"AsymmetricLoss: eps must be in (0, 1), got {eps}")
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.focal_grad = focal_grad

    def forward(self, logits: Tensor, targets: Tensor, row_weights: Tensor | None = None) -> Tensor:
        """`logits [B, K]`, `targets [B, K]` in {0, 1} -> scalar loss; with `row_weights [B]` the mean over classes
        of each row, averaged over the rows with those weights."""
        if logits.shape != targets.shape:
            raise ValueError(f"AsymmetricLoss: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} "
                             f"must have the same shape")
        targets = targets.float()
        prob = torch.sigmoid(logits.float())
        prob_neg = 1.0 - prob
        if self.clip > 0:
            prob_neg = (prob_neg + self.clip).clamp(max=1.0)  # 1 - p_m
        log_pos = torch.log(prob.clamp(min=self.eps))
        log_neg = torch.log(prob_neg.clamp(min=self.eps))
        loss = targets * log_pos + (1.0 - targets) * log_neg
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            with torch.set_grad_enabled(self.focal_grad and torch.is_grad_enabled()):
                # scalar exponents: pow's gradient at a zero base stays finite (0 for exponent 0)
                weight = targets * (1.0 - prob) ** self.gamma_pos + (1.0 - targets) * (1.0 - prob_neg) ** self.gamma_neg
                loss = loss * weight
        if row_weights is None:
            return -loss.mean()
        row_weights = row_weights.float()
        return -(loss.mean(dim=1) * row_weights).sum() / row_weights.sum()
