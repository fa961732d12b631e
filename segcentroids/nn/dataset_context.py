"""MCIBI's modules with parameters: the dataset-level context aggregation (DCA, Eq. 11-14), the fuse F (Eq. 4) and
the two-layer 1x1 classification heads H1 / H2."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base.modules import Conv2dReLU
from torch import Tensor, nn

FUSES = ("concat", "add", "weighted_add")


class ClassHead(nn.Sequential):
    """H1 / H2 of MCIBI: 1x1 conv-BN-ReLU, dropout, 1x1 conv to `num_classes` logits."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, dropout: float = 0.1) -> None:
        super().__init__(Conv2dReLU(in_channels, channels, 1), nn.Dropout2d(dropout),
                         nn.Conv2d(channels, num_classes, 1))


class CrossAttention(nn.Module):
    """Attention of every query position over every key position (scaled dot product, one head).

    g_q, g_k: two 1x1 conv-BN-ReLU (in -> transform -> transform); g_v: one (key_in -> transform); g_o: one
    (transform -> out). Scale `transform ** -0.5`; with transform = C / 2 this is MCIBI's `sqrt(C / 2)` (Eq. 13).
    Queries and keys may have different spatial sizes; the output has the query's.
    """

    def __init__(self, query_channels: int, key_channels: int, transform_channels: int, out_channels: int) -> None:
        super().__init__()
        self.query = nn.Sequential(Conv2dReLU(query_channels, transform_channels, 1),
                                   Conv2dReLU(transform_channels, transform_channels, 1))
        self.key = nn.Sequential(Conv2dReLU(key_channels, transform_channels, 1),
                                 Conv2dReLU(transform_channels, transform_channels, 1))
        self.value = Conv2dReLU(key_channels, transform_channels, 1)
        self.out = Conv2dReLU(transform_channels, out_channels, 1)
        self.scale = transform_channels**-0.5

    def forward(self, queries: Tensor, keys: Tensor) -> Tensor:
        """`queries [B, Cq, h, w]`, `keys [B, Ck, h', w']` -> `[B, out, h, w]`."""
        batch, _, height, width = queries.shape
        query = self.query(queries).flatten(2).transpose(1, 2)  # B, hw, T
        key = self.key(keys).flatten(2).transpose(1, 2)  # B, h'w', T
        value = self.value(keys).flatten(2).transpose(1, 2)  # B, h'w', T
        # P = softmax(q k^T * scale) (Eq. 13), then P v: fused, the hw x h'w' relation is never stored
        context = F.scaled_dot_product_attention(query, key, value, scale=self.scale)
        return self.out(context.transpose(1, 2).reshape(batch, -1, height, width))  # g_o, Eq. 14


class DatasetContextAggregation(nn.Module):
    """A_bi (Eq. 2, 11-14): class probabilities W = softmax(H1(R)), coarse context C'_bi = W^T M per pixel, refined
    by attention with queries g_q(R) and keys/values g_k, g_v(C'_bi).

    `forward(R, memory)` returns `(H1 logits [B, K, h, w], C_bi [B, C, h, w])`. The memory is a constant here
    (no gradient reaches it; it is updated by momentum).
    """

    def __init__(self, channels: int, num_classes: int, transform_channels: int | None = None,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.classify = ClassHead(channels, num_classes, channels, dropout)  # H1, Eq. 11
        self.refine = CrossAttention(channels, channels, transform_channels or channels // 2, channels)

    def forward(self, features: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.classify(features)
        weights = torch.softmax(logits.float(), dim=1)  # W, Eq. 11
        coarse = torch.einsum("bkhw,kc->bchw", weights, memory.float()).to(features.dtype)  # C'_bi, Eq. 12
        return logits, self.refine(features, coarse)  # C_bi, Eq. 13-14


class ContextFusion(nn.Module):
    """F (Eq. 4): fuses R with the dataset-level context C_bi and, when the framework has one, the within-image
    context C_wi.

    `fuse="concat"` (paper default): 3x3 conv-BN-ReLU on `cat[R, C_bi]`; `"add"`: `R + C_bi`; `"weighted_add"`:
    per-pixel convex weights of R and C_bi predicted by a 1x1 conv on `cat[R, C_bi]` (Table 1). With C_wi (any
    spatial size): attention with queries from the fused map and keys/values from C_wi, upsampled to C_wi's size,
    then a 3x3 conv-BN-ReLU on `cat[C_wi, attention]` -> `channels`, at C_wi's resolution.
    """

    def __init__(self, channels: int, fuse: Literal["concat", "add", "weighted_add"] = "concat",
                 context_channels: int | None = None, transform_channels: int | None = None) -> None:
        super().__init__()
        if fuse not in FUSES:
            raise ValueError(f"fuse must be one of {list(FUSES)}, got {fuse!r}")
        self.fuse = fuse
        self.merge = None
        if fuse == "concat":
            self.merge = Conv2dReLU(2 * channels, channels, 3, padding=1)
        elif fuse == "weighted_add":
            self.merge = nn.Conv2d(2 * channels, 2, 1)
        self.within_attention = self.within_merge = None
        if context_channels is not None:
            self.within_attention = CrossAttention(channels, context_channels, transform_channels or channels // 2,
                                                   channels)
            self.within_merge = Conv2dReLU(context_channels + channels, channels, 3, padding=1)

    def forward(self, features: Tensor, beyond: Tensor, within: Tensor | None = None) -> Tensor:
        if self.fuse == "concat":
            fused = self.merge(torch.cat([features, beyond], dim=1))
        elif self.fuse == "add":
            fused = features + beyond
        else:
            weights = torch.softmax(self.merge(torch.cat([features, beyond], dim=1)), dim=1)
            fused = weights[:, :1] * features + weights[:, 1:] * beyond
        if self.within_attention is None:
            if within is not None:
                raise ValueError("ContextFusion was built without context_channels but got a within-image context")
            return fused
        if within is None:
            raise ValueError("ContextFusion was built with context_channels and needs the within-image context")
        attended = self.within_attention(fused, within)
        if attended.shape[-2:] != within.shape[-2:]:
            attended = F.interpolate(attended, size=within.shape[-2:], mode="bilinear", align_corners=False)
        return self.within_merge(torch.cat([within, attended], dim=1))
