"""MLSeg modules: the multi-label head xi (Eq. 1), the selected-label pixel classifier psi and the rank-adaptive
temperature (Eq. 3). Also the Segmenter mask-transformer decoder, which is psi over all classes."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

MULTILABEL_HEADS = ("tran_enc", "tran_dec", "gap_linear")
CLASSIFIERS = ("mask_transformer", "linear")
RANK_TEMPERATURES = ("layernorm", "shared", "per_rank", "shared_scale")
RankTemperatureMode = Literal["layernorm", "shared", "per_rank", "shared_scale"]


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")


def _tokens(features: Tensor) -> Tensor:
    """`[B, C, h, w]` -> `[B, h * w, C]`."""
    return features.flatten(2).transpose(1, 2)


class GroupWiseLinear(nn.Module):
    """One weight vector and one bias per class: `logit_k = <w_k, token_k> + b_k` for class tokens `[B, K, D]`."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        return (tokens * self.weight).sum(dim=-1) + self.bias


class MultiLabelHead(nn.Module):
    """xi of Eq. 1: image-level class scores and refined class tokens from pixel features.

    - `tran_enc` (paper default, Table 6 "1x TranEnc"): pixel features average-pooled to `pool_size x pool_size`,
      projected to `embed_dim`; [pooled tokens; K class tokens] go through one pre-LN transformer block; the class
      tokens -> LayerNorm -> a per-class linear layer give the K logits.
    - `tran_dec` ("2x TranDec", Query2Label-style): the class tokens query the pooled tokens through two pre-LN
      transformer decoder layers, then LayerNorm and the per-class linear layer.
    - `gap_linear` ("GAP+Linear"): global average pooling + a linear layer; the class tokens are the learnable
      class embeddings themselves.

    `forward(features [B, C, h, w]) -> (logits [B, K], class_tokens [B, K, embed_dim] | None)`; `gap_linear`
    with `class_tokens=False` (nobody reads them, e.g. under the linear psi) has no class embeddings and returns None.
    """

    def __init__(self, in_channels: int, num_classes: int, embed_dim: int,
                 head: Literal["tran_enc", "tran_dec", "gap_linear"] = "tran_enc", pool_size: int = 8,
                 num_heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.0, num_decoder_layers: int = 2,
                 class_tokens: bool = True) -> None:
        super().__init__()
        _check_choice("multilabel_head", head, MULTILABEL_HEADS)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.head = head
        self.num_classes = num_classes
        self.class_embed = None
        if head != "gap_linear" or class_tokens:
            self.class_embed = nn.Parameter(torch.empty(num_classes, embed_dim))
            nn.init.trunc_normal_(self.class_embed, std=0.02)
        if head == "gap_linear":
            self.fc = nn.Linear(in_channels, num_classes)
            return
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.proj = nn.Linear(in_channels, embed_dim)
        if head == "tran_enc":
            self.block = Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, proj_drop=dropout,
                               norm_layer=nn.LayerNorm)
        else:
            self.layers = nn.ModuleList(
                nn.TransformerDecoderLayer(embed_dim, num_heads, int(embed_dim * mlp_ratio), dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
                for _ in range(num_decoder_layers)
            )
        self.norm = nn.LayerNorm(embed_dim)
        self.classifier = GroupWiseLinear(num_classes, embed_dim)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        batch = features.shape[0]
        class_tokens = None if self.class_embed is None else self.class_embed.expand(batch, -1, -1)
        if self.head == "gap_linear":
            return self.fc(features.mean(dim=(2, 3))), class_tokens
        pixel_tokens = self.proj(_tokens(self.pool(features)))
        if self.head == "tran_enc":
            tokens = self.block(torch.cat([pixel_tokens, class_tokens], dim=1))
            class_tokens = tokens[:, pixel_tokens.shape[1]:]
        else:
            for layer in self.layers:
                class_tokens = layer(class_tokens, pixel_tokens)
        class_tokens = self.norm(class_tokens)
        return self.classifier(class_tokens), class_tokens


class RankTemperature(nn.Module):
    """Temperature over the kappa ranked scores of each pixel (Eq. 3), on `[B, k, h, w]` along dim 1.

    Two families, each with its rank-adaptive form (RA, Table 1) and its RA-off form (footnote 2: tau_1 = ... =
    tau_kappa), so that switching RA off changes nothing else:

    - `layernorm` (authors' code, RA): each pixel's k scores are standardised (LayerNorm without affine, eps 1e-5),
      then scaled by a per-rank weight (1 / tau_k, init 1) and shifted by a per-rank bias (init 0).
    - `shared` (RA off for `layernorm`): the same standardisation, then ONE weight (1 / tau, init 1) and ONE bias
      (init 0) for every rank.
    - `per_rank` (Eq. 3 literally, RA): score_k / tau_k with a learnable tau per rank, no standardisation.
    - `shared_scale` (RA off for `per_rank`): score_k / tau with one learnable tau (the old meaning of `shared`).

    `per_rank` and `shared_scale` learn 1 / tau, initialised to `1 / temperature_init`.
    """

    def __init__(self, num_ranks: int, mode: RankTemperatureMode = "layernorm", temperature_init: float = 0.1) -> None:
        super().__init__()
        _check_choice("rank_temperature", mode, RANK_TEMPERATURES)
        if temperature_init <= 0:
            raise ValueError(f"temperature_init must be > 0, got {temperature_init}")
        self.mode = mode
        if mode in ("layernorm", "shared"):
            # parameter names `norm.weight` / `norm.bias` in both: per rank [k] or shared [1]
            self.norm = nn.LayerNorm(num_ranks) if mode == "layernorm" else _SharedAffineNorm(num_ranks)
        else:
            size = num_ranks if mode == "per_rank" else 1
            self.inverse_temperature = nn.Parameter(torch.full((size,), 1.0 / temperature_init))

    def forward(self, scores: Tensor) -> Tensor:
        if self.mode in ("layernorm", "shared"):
            return self.norm(scores.movedim(1, -1)).movedim(-1, 1)
        return scores * self.inverse_temperature[None, :, None, None]


class _SharedAffineNorm(nn.Module):
    """LayerNorm over the last dimension (size `num_ranks`) with one weight and one bias shared by every entry."""

    def __init__(self, num_ranks: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_ranks = num_ranks
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (self.num_ranks,), eps=self.eps) * self.weight + self.bias


class MaskTransformer(nn.Module):
    """Segmenter's decoder on given class tokens: [pixel tokens; class tokens] -> `num_layers` pre-LN transformer
    blocks -> LayerNorm -> separate projections -> L2-normalised dot products `[B, k, h, w]` (cosines)."""

    def __init__(self, in_channels: int, embed_dim: int, num_layers: int = 2, num_heads: int = 8,
                 mlp_ratio: float = 4.0, dropout: float = 0.1) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.proj_pixels = nn.Linear(in_channels, embed_dim)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, proj_drop=dropout, norm_layer=nn.LayerNorm)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.proj_patch = nn.Linear(embed_dim, embed_dim, bias=False)
        self.proj_classes = nn.Linear(embed_dim, embed_dim, bias=False)

    def forward(self, features: Tensor, class_tokens: Tensor) -> Tensor:
        batch, _, height, width = features.shape
        num_pixels = height * width
        tokens = torch.cat([self.proj_pixels(_tokens(features)), class_tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        pixels = F.normalize(self.proj_patch(tokens[:, :num_pixels]), dim=-1)
        classes = F.normalize(self.proj_classes(tokens[:, num_pixels:]), dim=-1)
        scores = torch.bmm(classes, pixels.transpose(1, 2))  # [B, k, h * w]
        return scores.reshape(batch, -1, height, width)


class SelectedLabelClassifier(nn.Module):
    """psi of Eq. 3: pixel scores over the selected classes, in rank order, with the rank temperature.

    - `mask_transformer`: the Segmenter decoder over the selected class tokens (from xi, or this module's own
      class embeddings when `class_embed=True` and no tokens are given).
    - `linear`: a dot product of (dropout) pixel features with the selected classes' weight vectors plus bias.

    `forward(features [B, C, h, w], selected [B, k] | None, class_tokens [B, K, D] | None) -> [B, k, h, w]`;
    `selected=None` means all K classes in class order (then k = K).
    """

    def __init__(self, in_channels: int, num_classes: int, num_ranks: int,
                 classifier: Literal["mask_transformer", "linear"] = "mask_transformer",
                 rank_temperature: RankTemperatureMode = "layernorm",
                 embed_dim: int = 768, class_embed: bool = False, num_layers: int = 2, num_heads: int = 8,
                 mlp_ratio: float = 4.0, dropout: float = 0.1, temperature_init: float = 0.1) -> None:
        super().__init__()
        _check_choice("classifier", classifier, CLASSIFIERS)
        if not 1 <= num_ranks <= num_classes:
            raise ValueError(f"num_ranks must be in [1, num_classes={num_classes}], got {num_ranks}")
        self.classifier = classifier
        self.num_classes = num_classes
        self.num_ranks = num_ranks
        if classifier == "mask_transformer":
            self.mask_transformer = MaskTransformer(in_channels, embed_dim, num_layers, num_heads, mlp_ratio,
                                                    dropout)
            self.class_embed = nn.Parameter(torch.empty(num_classes, embed_dim)) if class_embed else None
            if self.class_embed is not None:
                nn.init.trunc_normal_(self.class_embed, std=0.02)
        else:
            self.dropout = nn.Dropout2d(dropout)
            self.weight = nn.Parameter(torch.empty(num_classes, in_channels))
            self.bias = nn.Parameter(torch.zeros(num_classes))
            nn.init.normal_(self.weight, std=0.01)
        self.temperature = RankTemperature(num_ranks, rank_temperature, temperature_init)

    def forward(self, features: Tensor, selected: Tensor | None = None,
                class_tokens: Tensor | None = None) -> Tensor:
        if self.classifier == "mask_transformer":
            if class_tokens is None:
                if self.class_embed is None:
                    raise ValueError("SelectedLabelClassifier: no class_tokens given and class_embed=False")
                class_tokens = self.class_embed.expand(features.shape[0], -1, -1)
            if selected is not None:
                index = selected[:, :, None].expand(-1, -1, class_tokens.shape[-1])
                class_tokens = class_tokens.gather(1, index)
            scores = self.mask_transformer(features, class_tokens)
        else:
            weight, bias = self.weight, self.bias
            features = self.dropout(features)
            if selected is None:
                scores = torch.einsum("kc,bchw->bkhw", weight, features) + bias[None, :, None, None]
            else:
                scores = torch.einsum("bkc,bchw->bkhw", weight[selected], features) + bias[selected][:, :, None, None]
        return self.temperature(scores)
