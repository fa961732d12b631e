"""Heads of Specialize and Fuse (ICCV 2021, Sec. 4): the unity head and the semantic pyramid head with the
coarse-to-fine contextual module (and the ANL baselines of Table 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONTEXTS = ("none", "anl", "anl_multi", "coarse_to_fine")
OUTPUTS = ("single", "pyramid")


def _conv_bn_relu(in_channels: int, out_channels: int, dims: int = 2) -> nn.Sequential:
    conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
    return nn.Sequential(conv(in_channels, out_channels, 1, bias=False), norm(out_channels), nn.ReLU(inplace=True))


def _check_factors(factors: list[int]) -> None:
    decreasing = all(a > b for a, b in zip(factors, factors[1:]))
    if not factors or factors[-1] != 1 or not decreasing:
        raise ValueError(f"level factors must be strictly decreasing and end with 1 (the finest level), got {factors}")


def average_pool(x: Tensor, factor: int) -> Tensor:
    """`F.avg_pool2d(x, factor)`; a 2x2 pool of an even-sized map is computed as two strided sums, several times
    faster on CPU than the NCHW pooling kernel (2 x 512 x 64 x 64, one thread: 14 -> 2.6 ms forward, 37 -> 22 ms
    with the backward)."""
    b, c, h, w = x.shape
    if factor != 2 or h % 2 or w % 2:
        return F.avg_pool2d(x, factor)
    rows = x.reshape(b, c, h // 2, 2, w)
    rows = rows[:, :, :, 0] + rows[:, :, :, 1]
    cols = rows.view(b, c, h // 2, w // 2, 2)
    return (cols[..., 0] + cols[..., 1]) * 0.25


def average_pyramid(finest: Tensor, factors: list[int]) -> list[Tensor]:
    """`AvgPool(finest, f)` for every factor f (1 = `finest` itself), in the order given. A level whose factor is a
    multiple of a finer one is pooled from that smaller map (the mean of equal block means is the block mean), so
    the finest map is read once."""
    levels = {1: finest}
    for factor in sorted(set(factors)):
        if factor > 1:
            base = max(f for f in levels if factor % f == 0)
            levels[factor] = average_pool(levels[base], factor // base)
    return [levels[f] for f in factors]


class PyramidPool(nn.Module):
    """Adaptive average pooling to `sizes` x `sizes` grids, flattened and concatenated: `[B, C, sum(s^2)]` tokens
    (1, 3, 6, 8 -> 110 tokens, Eq. 6)."""

    def __init__(self, sizes: tuple[int, ...] = (1, 3, 6, 8)) -> None:
        super().__init__()
        self.sizes = tuple(sizes)

    @property
    def num_tokens(self) -> int:
        return sum(s * s for s in self.sizes)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([F.adaptive_avg_pool2d(x, s).flatten(2) for s in self.sizes], dim=2)


class UnityHead(nn.Module):
    """Unity pyramid (Sec. 4.1, Fig. 2b): per level, how close every finest-grid embedding is to its cell centroid,
    min-pooled over the cell.

    `X_u = Conv1x1(X)`; `centroid_l = Conv1x1_c(AvgPool(X_u, k_l))`, nearest-upsampled; `diff_l = Conv1x1_p(X_u) -
    centroid_l`; `p_l = sigmoid(Conv1x1_o(diff_l))`; `U_l = MinPool(p_l, k_l)`. The centroid, pixel and output convs
    are shared by all levels.
    """

    def __init__(self, in_channels: int, cell_factors: list[int], unity_channels: int = 64) -> None:
        """
        Args:
            in_channels: D, channels of the backbone feature at the finest level.
            cell_factors: cell size of each unity level in finest-grid cells, coarsest first (e.g. [8, 4, 2]).
            unity_channels: D_u.
        """
        super().__init__()
        if not cell_factors or any(f < 2 for f in cell_factors):
            raise ValueError(f"unity cell_factors must be >= 2, got {cell_factors}")
        self.cell_factors = list(cell_factors)
        self.reduce = nn.Conv2d(in_channels, unity_channels, 1)
        self.centroid = nn.Conv2d(unity_channels, unity_channels, 1)
        self.pixel = nn.Conv2d(unity_channels, unity_channels, 1)
        self.output = nn.Conv2d(unity_channels, 1, 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        """`[B, D, h, w]` -> unity probabilities `[B, h / k_l, w / k_l]` per level, coarsest first."""
        x_u = self.reduce(x)
        # Conv1x1_o is linear: Conv1x1_o(pixel - centroid) = Conv1x1_o(pixel) - W_o centroid. It runs once on the
        # finest grid and on each level's coarse centroids; no level builds a D_u-channel difference map.
        pixel_score = self.output(self.pixel(x_u))  # [B, 1, h, w], with the bias
        unity = []
        for k, pooled in zip(self.cell_factors, average_pyramid(x_u, self.cell_factors)):
            centroid_score = F.conv2d(self.centroid(pooled), self.output.weight)  # [B, 1, h / k, w / k]
            centroid_score = centroid_score.float().repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
            prob = torch.sigmoid(pixel_score.float() - centroid_score)  # float32: no bf16 cancellation
            unity.append(-F.max_pool2d(-prob, k).squeeze(1))  # min pooling
        return unity


class ContextAggregation(nn.Module):
    """CA (Eq. 8-9, Fig. 2d): attention with queries from the feature map and keys/values from context tokens, then
    `Conv1x1-BN-ReLU(concat(attended, X))`. With the tokens `PyramidPool(X)` it is the ANL block (APNB) of [34]."""

    def __init__(self, channels: int, key_channels: int | None = None) -> None:
        super().__init__()
        key_channels = key_channels or channels // 2
        self.query = _conv_bn_relu(channels, key_channels)
        self.key = _conv_bn_relu(channels, key_channels, dims=1)
        self.value = nn.Conv1d(channels, channels, 1)
        self.aggregate = _conv_bn_relu(2 * channels, channels)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x `[B, C, h, w]`, context tokens `[B, C, N]` -> refined `[B, C, h, w]`.

        Eq. 9's Conv1x1 on `concat(X_att, X)` is `W_att X_att + W_x X`, and `X_att = v softmax(k^T q / sqrt(Ck))`
        (Eq. 8, channels first) is linear in v: W_att is applied to the N value tokens instead of the h*w attended
        pixels, and the product is accumulated straight into `W_x X`. Same result and parameters, C*C fewer
        multiply-adds per pixel (N = 110 tokens) and no pixel-sized transpose.
        """
        b, c, h, w = x.shape
        conv, norm, relu = self.aggregate
        weight_attended, weight_x = conv.weight[:, :c], conv.weight[:, c:]
        query = self.query(x).flatten(2)  # [B, Ck, hw]
        key = self.key(context)  # [B, Ck, N]
        key = key * key.shape[1] ** -0.5  # the scale on the N keys rather than the h*w queries
        attention = torch.softmax(torch.bmm(key.transpose(1, 2), query), dim=1)  # [B, N, hw], Eq. 8
        value = F.conv1d(self.value(context), weight_attended[..., 0])  # W_att v: [B, C, N]
        mixed = torch.baddbmm(F.conv2d(x, weight_x).flatten(2), value, attention)  # W_x X + W_att X_att, Eq. 9
        return relu(norm(mixed.view(b, c, h, w)))


class ContextUpdate(nn.Module):
    """CU (Eq. 10-11, Fig. 2e): `theta_l = Conv1x1-BN-ReLU(concat(PyramidPool(X'_l), theta_{l-1}))`, same tokens."""

    def __init__(self, channels: int, pool: PyramidPool) -> None:
        super().__init__()
        self.pool = pool
        self.update = _conv_bn_relu(2 * channels, channels, dims=1)

    def forward(self, refined: Tensor, context: Tensor) -> Tensor:
        return self.update(torch.cat([self.pool(refined), context], dim=1))


class ANLBlock(nn.Module):
    """Asymmetric non-local block [34]: CA with the map's own pyramid-pooled tokens as keys and values."""

    def __init__(self, channels: int, pool: PyramidPool) -> None:
        super().__init__()
        self.pool = pool
        self.attend = ContextAggregation(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.attend(x, self.pool(x))


class SemanticPyramidHead(nn.Module):
    """Semantic pyramid (Sec. 4.2, Fig. 2c) with the Table 6 options.

    `X^(L) = Conv1x1(X)`; `X^(l) = AvgPool(X^(L), 2^(L-l))` (Eq. 3, here any factor list); optional context;
    `Y^(l) = ConvBlock^(l)(X'^(l))` (Eq. 7).

    context: `none` (X' = X), `anl` (one ANL block on X^(L) before pooling), `anl_multi` (an ANL block per level),
    `coarse_to_fine` (Eq. 4-6, 8-11: theta^(0) = PyramidPool(X^(L)), CA then CU from coarse to fine).
    output: `pyramid` (all levels) or `single` (the finest level only; `coarse_to_fine` still runs the coarse
    feature levels to carry context, `anl_multi` is undefined and refused).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        level_factors: list[int],
        channels: int = 512,
        context: str = "coarse_to_fine",
        output: str = "pyramid",
        pool_sizes: tuple[int, ...] = (1, 3, 6, 8),
        dropout: float = 0.1,
    ) -> None:
        """
        Args:
            in_channels: D.
            level_factors: pooling factor of each level relative to the finest, coarsest first, ending with 1.
            channels: D_s.
        """
        super().__init__()
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if output == "single" and context == "anl_multi":
            raise ValueError("context='anl_multi' needs output='pyramid' (Table 6 has no single-output ANL-multi)")
        _check_factors(list(level_factors))
        self.context, self.output = context, output
        feature_factors = list(level_factors) if output == "pyramid" or context == "coarse_to_fine" else [1]
        self.feature_factors = feature_factors
        self.project = _conv_bn_relu(in_channels, channels)
        pool = PyramidPool(pool_sizes)
        self.pool = pool
        n = len(feature_factors)
        self.anl = ANLBlock(channels, pool) if context == "anl" else None
        self.anl_multi = nn.ModuleList(ANLBlock(channels, pool) for _ in range(n)) if context == "anl_multi" else None
        if context == "coarse_to_fine":
            self.aggregate = nn.ModuleList(ContextAggregation(channels) for _ in range(n))
            self.update = nn.ModuleList(ContextUpdate(channels, pool) for _ in range(n - 1))
        num_outputs = n if output == "pyramid" else 1
        self.classify = nn.ModuleList(
            nn.Sequential(_conv_bn_relu(channels, channels), nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))
            for _ in range(num_outputs)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        """`[B, D, h, w]` -> class logits per output level, coarsest first (one tensor for `output="single"`)."""
        finest = self.project(x)
        if self.anl is not None:
            finest = self.anl(finest)
        features = average_pyramid(finest, self.feature_factors)  # Eq. 3
        if self.anl_multi is not None:
            features = [block(feature) for block, feature in zip(self.anl_multi, features)]
        elif self.context == "coarse_to_fine":
            context = self.pool(finest)  # Eq. 6
            refined = []
            for level, feature in enumerate(features):
                refined.append(self.aggregate[level](feature, context))  # Eq. 4, 8-9
                if level < len(self.update):
                    context = self.update[level](refined[-1], context)  # Eq. 5, 10-11
            features = refined
        if self.output == "single":
            features = features[-1:]
        return [block(feature) for block, feature in zip(self.classify, features)]  # Eq. 7
