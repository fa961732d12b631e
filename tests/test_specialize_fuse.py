"""Specialize and Fuse: every target, relabelling and fusion rule against hand-written oracles."""

from __future__ import annotations

import copy
import csv
import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segcentroids.ops import fuse_level_map, fuse_pyramid, level_confusion, pyramid_targets, relabel_done_by_coarser
from segcentroids.ops.resample import resize_bilinear
from tests.references import loop_pyramid_targets

IGN = 255  # ignore


def grid(rows: list[str]) -> torch.Tensor:
    """A label map from whitespace-separated rows (`.` = ignore)."""
    return torch.tensor([[IGN if v == "." else int(v) for v in row.split()] for row in rows], dtype=torch.long)


# --------------------------------------------------------------------------------------------- pyramid targets
def test_all_same_8x8():
    labels = torch.full((1, 8, 8), 3)
    semantic, unity = pyramid_targets(labels, [8, 4, 2])
    assert [t.shape[-1] for t in semantic] == [1, 2, 4]
    for sem, uni in zip(semantic, unity):
        assert sem.dtype == torch.int64 and uni.dtype == torch.int64
        assert (sem == 3).all() and (uni == 1).all()


def test_pixel_checkerboard_8x8_is_mix_everywhere():
    labels = grid(["0 1 0 1 0 1 0 1", "1 0 1 0 1 0 1 0"] * 4)[None]
    semantic, unity = pyramid_targets(labels, [8, 4, 2])
    for sem, uni in zip(semantic, unity):
        assert (sem == IGN).all() and (uni == 0).all()


def test_block_checkerboard_8x8():
    labels = grid(["1 1 1 1 2 2 2 2"] * 4 + ["2 2 2 2 1 1 1 1"] * 4)[None]
    semantic, unity = pyramid_targets(labels, [8, 4, 2])
    assert semantic[0].tolist() == [[[IGN]]] and unity[0].tolist() == [[[0]]]
    assert semantic[1].tolist() == [[[1, 2], [2, 1]]] and unity[1].tolist() == [[[1, 1], [1, 1]]]
    assert semantic[2].tolist() == [[[1, 1, 2, 2], [1, 1, 2, 2], [2, 2, 1, 1], [2, 2, 1, 1]]]
    assert (unity[2] == 1).all()


LABELS_8 = [
    "0 0 0 0 1 1 1 1",
    "0 0 0 0 1 1 1 1",
    "0 0 0 0 1 1 2 2",
    "0 0 0 0 1 1 2 2",
    "5 5 . 5 . . 3 4",
    "5 5 5 5 . . 4 3",
    "5 5 5 5 6 6 6 6",
    "5 5 5 5 6 6 6 6",
]


def test_ignore_cells_8x8():
    semantic, unity = pyramid_targets(grid(LABELS_8)[None], [8, 4, 2])
    # stride 8: several labels (and ignore pixels) -> mix
    assert semantic[0].tolist() == [[[IGN]]] and unity[0].tolist() == [[[0]]]
    # stride 4: TL unity 0; TR mix; BL one ignore pixel -> semantic 5, unity ignore; BR mix with ignore -> mix
    assert semantic[1].tolist() == [[[0, IGN], [5, IGN]]]
    assert unity[1].tolist() == [[[1, 0], [IGN, 0]]]
    # stride 2: (2,1) one ignore pixel; (2,2) ignore only; (2,3) mix "3 4 / 4 3"
    assert semantic[2].tolist() == [[[0, 0, 1, 1], [0, 0, 1, 2], [5, 5, IGN, IGN], [5, 5, 6, 6]]]
    assert unity[2].tolist() == [[[1, 1, 1, 1], [1, 1, 1, 1], [1, IGN, IGN, 0], [1, 1, 1, 1]]]


LABELS_16 = (
    ["7 7 7 7 7 7 7 7 1 1 2 2 1 1 2 2", "7 7 7 7 7 7 7 7 1 1 2 2 1 1 2 2",
     "7 7 7 7 7 7 7 7 2 2 1 1 2 2 1 1", "7 7 7 7 7 7 7 7 2 2 1 1 2 2 1 1"] * 2
    + [". . . . . . . . 4 4 4 4 4 4 4 4"] * 7
    + [". . . . . . . . 4 4 4 4 4 4 4 ."]
)


def test_hand_drawn_16x16():
    labels = grid(LABELS_16)[None]
    assert labels.shape == (1, 16, 16)
    semantic, unity = pyramid_targets(labels, [16, 8, 4, 2])
    assert semantic[0].tolist() == [[[IGN]]] and unity[0].tolist() == [[[0]]]
    # quadrants: uniform 7 | 2x2 checkerboard of 1/2 | ignore only | 4 with one ignore pixel
    assert semantic[1].tolist() == [[[7, IGN], [IGN, 4]]]
    assert unity[1].tolist() == [[[1, 0], [IGN, IGN]]]
    assert semantic[2].tolist() == [[[7, 7, IGN, IGN], [7, 7, IGN, IGN], [IGN, IGN, 4, 4], [IGN, IGN, 4, 4]]]
    assert unity[2].tolist() == [[[1, 1, 0, 0], [1, 1, 0, 0], [IGN, IGN, 1, 1], [IGN, IGN, 1, IGN]]]
    checker = [[1, 2, 1, 2], [2, 1, 2, 1], [1, 2, 1, 2], [2, 1, 2, 1]]
    expected_sem = [[7] * 4 + checker[r] for r in range(4)] + [[IGN] * 4 + [4] * 4 for _ in range(4)]
    expected_sem[7][7] = 4
    expected_uni = [[1] * 8 for _ in range(4)] + [[IGN] * 4 + [1] * 4 for _ in range(4)]
    expected_uni[7][7] = IGN
    assert semantic[3].tolist() == [expected_sem] and unity[3].tolist() == [expected_uni]


def test_targets_match_cell_loop_on_random_maps():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (2, 4, 4), generator=generator)
    labels = labels.repeat_interleave(4, -1).repeat_interleave(4, -2)  # blocky, so unity cells exist
    noise = torch.rand(labels.shape, generator=generator)
    labels[noise < 0.05] = IGN
    labels[noise > 0.97] = 2
    fast = pyramid_targets(labels, [8, 4, 2, 1])
    slow = loop_pyramid_targets(labels, [8, 4, 2, 1])
    for a, b in zip(fast[0] + fast[1], slow[0] + slow[1]):
        assert torch.equal(a, b)
    assert (fast[1][-1] != 0).all()  # stride 1: a pixel is never mix
    # strides that do not divide each other (pooled from the pixels again)
    labels = labels.repeat(1, 2, 2)[:, :24, :24]
    fast, slow = pyramid_targets(labels, [12, 8, 3]), loop_pyramid_targets(labels, [12, 8, 3])
    for a, b in zip(fast[0] + fast[1], slow[0] + slow[1]):
        assert torch.equal(a, b)


def test_targets_reject_bad_strides():
    with pytest.raises(ValueError, match="stride 3"):
        pyramid_targets(torch.zeros(1, 8, 8, dtype=torch.long), [3])
    with pytest.raises(ValueError, match="coarsest first"):
        pyramid_targets(torch.zeros(1, 8, 8, dtype=torch.long), [2, 4])


# -------------------------------------------------------------------------------------------------- relabel
def _relabel_case():
    """Level 1 (1x1) is GT mix but predicted unity (false positive); level 2 (2x2): TL true positive, TR GT unity
    predicted mix (false negative), BL GT mix predicted unity (false positive), BR false negative; last level =
    8x8 pixel labels."""
    semantic = [torch.tensor([[[IGN]]]), torch.tensor([[[1, 2], [IGN, 3]]]), torch.full((1, 8, 8), 9)]
    unity = [torch.tensor([[[0]]]), torch.tensor([[[1, 1], [0, 1]]])]
    probs = [torch.tensor([[[0.95]]]), torch.tensor([[[0.95, 0.5], [0.9, 0.2]]])]
    return semantic, unity, probs


def test_relabel_none_keeps_targets():
    semantic, unity, probs = _relabel_case()
    new_sem, new_uni = relabel_done_by_coarser(semantic, unity, probs, "none", 0.9)
    for a, b in zip(new_sem + new_uni, semantic + unity):
        assert torch.equal(a, b)


def test_relabel_gt_unity_ignores_descendants_of_gt_unity_cells():
    semantic, unity, probs = _relabel_case()
    new_sem, new_uni = relabel_done_by_coarser(semantic, unity, probs, "gt_unity", 0.9)
    expected = [[IGN] * 8 for _ in range(4)] + [[9] * 4 + [IGN] * 4 for _ in range(4)]
    assert new_sem[2].tolist() == [expected]
    # coarser levels keep their own targets
    assert new_sem[1].tolist() == [[[1, 2], [IGN, 3]]] and new_uni[1].tolist() == [[[1, 1], [0, 1]]]
    assert torch.equal(semantic[2], torch.full((1, 8, 8), 9))  # input untouched


def test_relabel_true_positive_ignores_only_descendants_of_true_positives():
    semantic, unity, probs = _relabel_case()
    new_sem, new_uni = relabel_done_by_coarser(semantic, unity, probs, "true_positive", 0.9)
    expected = [[IGN] * 4 + [9] * 4 for _ in range(4)] + [[9] * 8 for _ in range(4)]
    assert new_sem[2].tolist() == [expected]
    assert new_sem[1].tolist() == [[[1, 2], [IGN, 3]]] and new_uni[1].tolist() == [[[1, 1], [0, 1]]]
    # a higher training threshold turns the true positive into a false negative
    new_sem, _ = relabel_done_by_coarser(semantic, unity, probs, "true_positive", 0.99)
    assert (new_sem[2] == 9).all()


def test_relabel_coarse_true_positive_clears_every_finer_level_in_both_targets():
    semantic = [torch.tensor([[[4, 4]]]), torch.tensor([[[4, 4, 1, 1], [4, 4, 2, 2]]]), torch.full((1, 4, 8), 4)]
    unity = [torch.tensor([[[1, 0]]]), torch.tensor([[[1, 1, 1, 1], [1, 1, 1, 1]]])]
    probs = [torch.tensor([[[0.97, 0.1]]]), torch.ones(1, 2, 4)]
    new_sem, new_uni = relabel_done_by_coarser(semantic, unity, probs, "true_positive", 0.9)
    assert new_sem[0].tolist() == [[[4, 4]]] and new_uni[0].tolist() == [[[1, 0]]]
    assert new_sem[1].tolist() == [[[IGN, IGN, 1, 1], [IGN, IGN, 2, 2]]]
    assert new_uni[1].tolist() == [[[IGN, IGN, 1, 1], [IGN, IGN, 1, 1]]]
    assert new_sem[2].tolist() == [[[IGN] * 8] * 4]  # left half by level 1, right half by level 2


def test_relabel_rejects_unknown_policy():
    semantic, unity, probs = _relabel_case()
    with pytest.raises(ValueError, match="'oracle'"):
        relabel_done_by_coarser(semantic, unity, probs, "oracle", 0.9)


# --------------------------------------------------------------------------------------------------- fusion
def _logits(probs: list[float], h: int, w: int) -> torch.Tensor:
    return torch.tensor(probs).log().view(1, -1, 1, 1).expand(1, len(probs), h, w).clone()


def test_fuse_known_answer():
    coarse = _logits([0.2, 0.8], 1, 1)
    middle = _logits([0.6, 0.4], 2, 2)  # spatially constant, so bilinear upsampling keeps it exact
    finest = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    finest_probs = torch.exp(finest) / torch.exp(finest).sum(1, keepdim=True)
    unity = [torch.tensor([[[0.5]]]), torch.tensor([[[0.95, 0.1], [0.9, 0.3]]])]
    fused = fuse_pyramid([coarse, middle, finest], unity, tau=0.9)
    assert fused.shape == (1, 2, 4, 4)
    # TL and BL quadrants from level 2 (>= tau, the level above is mix), TR and BR from the finest level
    expected = finest_probs.clone()
    expected[..., :2, :2] = torch.tensor([0.6, 0.4]).view(1, 2, 1, 1)
    expected[..., 2:, :2] = torch.tensor([0.6, 0.4]).view(1, 2, 1, 1)
    assert torch.allclose(fused, expected, atol=1e-6)
    level = fuse_level_map(unity, (4, 4), tau=0.9)
    assert level.tolist() == [[[1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 2, 2]]]
    # a coarse unity cell wins over everything finer
    unity[0] = torch.tensor([[[0.99]]])
    fused = fuse_pyramid([coarse, middle, finest], unity, tau=0.9)
    assert torch.allclose(fused, torch.tensor([0.2, 0.8]).view(1, 2, 1, 1).expand(1, 2, 4, 4), atol=1e-6)
    # nothing unity: the finest level
    fused = fuse_pyramid([coarse, middle, finest], [torch.zeros(1, 1, 1), torch.zeros(1, 2, 2)], tau=0.9)
    assert torch.allclose(fused, finest_probs, atol=1e-6)


def test_fuse_upsamples_coarse_probabilities_bilinearly():
    coarse = torch.tensor([[[[0.0, 2.0], [1.0, -1.0]]]]).repeat(1, 2, 1, 1) * torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    finest = torch.zeros(1, 2, 4, 4)
    fused = fuse_pyramid([coarse, finest], [torch.ones(1, 2, 2)], tau=0.9)
    p = torch.sigmoid(torch.tensor([[0.0, 2.0], [1.0, -1.0]]))  # softmax of (x, 0) for class 0
    # align_corners=False, factor 2: output pixel 1 samples 0.75 * p[0] + 0.25 * p[1] along each axis
    expected_11 = 0.75 * 0.75 * p[0, 0] + 0.75 * 0.25 * (p[0, 1] + p[1, 0]) + 0.25 * 0.25 * p[1, 1]
    assert math.isclose(fused[0, 0, 1, 1].item(), expected_11.item(), rel_tol=1e-5)
    assert math.isclose(fused[0, 0, 0, 0].item(), p[0, 0].item(), rel_tol=1e-5)
    assert torch.allclose(fused.sum(1), torch.ones(1, 4, 4))


@pytest.mark.parametrize("in_size,out_size", [((8, 8), (64, 64)), ((5, 7), (13, 22)), ((16, 12), (6, 5)),
                                              ((1, 3), (4, 4)), ((9, 9), (9, 9))])
def test_resize_bilinear_equals_interpolate(in_size, out_size):
    x = torch.randn(2, 3, *in_size, dtype=torch.float64, requires_grad=True)
    expected = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
    out = resize_bilinear(x, out_size)
    assert out.shape == expected.shape and out.is_contiguous()
    assert torch.allclose(out, expected, atol=1e-7)
    weights = torch.randn(expected.shape, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), x)
    assert torch.allclose(grad, expected_grad, atol=1e-7)


def test_resize_bilinear_keeps_float32_under_bf16_autocast():
    x = torch.rand(1, 4, 5, 6, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = resize_bilinear(x, (10, 12))
    assert out.dtype == torch.float32
    assert torch.allclose(out, F.interpolate(x, size=(10, 12), mode="bilinear", align_corners=False), atol=1e-6)


def test_fuse_under_autograd_gives_the_same_values_and_gradients():
    generator = torch.Generator().manual_seed(2)
    logits = [torch.randn(1, 3, s, s, generator=generator, requires_grad=True) for s in (2, 4, 8)]
    unity = [torch.rand(1, s, s, generator=generator) for s in (2, 4)]
    with torch.no_grad():
        expected = fuse_pyramid(logits, unity, 0.5)
    fused = fuse_pyramid(logits, unity, 0.5)
    assert torch.equal(fused, expected)
    fused.sum().backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in logits)


def test_fuse_rejects_wrong_level_count():
    with pytest.raises(ValueError, match="one unity level fewer"):
        fuse_pyramid([torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 2, 2)], [], tau=0.9)


def test_level_confusion_hand_case():
    labels = torch.tensor([[[0, 1, 1, IGN]]])
    level_map = torch.tensor([[[0, 0, 1, 1]]])
    level_preds = torch.tensor([[[[0, 0, 1, 1]], [[1, 1, 1, 0]]]])  # [B=1, L=2, 1, 4]
    confusion = level_confusion(level_preds, level_map, labels, num_classes=2)
    assert confusion.shape == (2, 2, 2, 2)
    # pixels assigned to level 0: (gt 0, pred by level 0 = 0), (gt 1, pred 0); by level 1: (0 -> 1), (1 -> 1)
    assert confusion[0, 0].tolist() == [[1, 0], [1, 0]]
    assert confusion[0, 1].tolist() == [[0, 1], [0, 1]]
    # assigned to level 1: only pixel 2 is valid (gt 1); level 0 predicts 1, level 1 predicts 1
    assert confusion[1, 0].tolist() == [[0, 0], [0, 1]] and confusion[1, 1].tolist() == [[0, 0], [0, 1]]


# ---------------------------------------------------------------------------------------------------- heads
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from segcentroids.nn import PyramidPool, SemanticPyramidHead, UnityHead  # noqa: E402
from segcentroids.nn.pyramid_heads import ContextAggregation, average_pool, average_pyramid  # noqa: E402


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 2, 7, 6), (1, 1, 6, 5)])
@pytest.mark.parametrize("factor", [2, 3])
def test_average_pool_equals_avg_pool2d(shape, factor):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    expected = F.avg_pool2d(x, factor)
    out = average_pool(x, factor)
    assert out.shape == expected.shape and torch.allclose(out, expected, atol=1e-6)
    weights = torch.randn(expected.shape)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), x)
    assert torch.allclose(grad, expected_grad, atol=1e-6)


@pytest.mark.parametrize("factors", [[8, 4, 2, 1], [8, 2, 1], [12, 8, 4, 1], [6, 3]])
def test_average_pyramid_equals_pooling_the_finest_map(factors):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 48, 48)
    for factor, level in zip(factors, average_pyramid(x, factors), strict=True):
        assert torch.allclose(level, F.avg_pool2d(x, factor) if factor > 1 else x, atol=1e-5)


def test_pyramid_pool_gives_110_tokens():
    x = torch.randn(2, 4, 16, 16)
    tokens = PyramidPool()(x)
    assert tokens.shape == (2, 4, 110)
    assert torch.allclose(tokens[..., 0], x.mean(dim=(2, 3)), atol=1e-6)  # the 1x1 grid is the global mean
    assert torch.allclose(tokens[..., -1], x[..., 14:, 14:].mean(dim=(2, 3)), atol=1e-6)  # last 8x8 bin: 2x2 pixels


def test_unity_head_matches_scalar_loop():
    head = UnityHead(1, [4, 2], unity_channels=1)
    with torch.no_grad():
        for conv in (head.reduce, head.centroid, head.pixel):
            conv.weight.fill_(1.0)
            conv.bias.zero_()
        head.output.weight.fill_(-3.0)
        head.output.bias.fill_(2.0)
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    unity = head(x)
    assert [u.shape for u in unity] == [(1, 1, 1), (1, 2, 2)]
    for u, k in zip(unity, [4, 2]):
        for i in range(4 // k):
            for j in range(4 // k):
                cell = x[0, 0, i * k : (i + 1) * k, j * k : (j + 1) * k]
                expected = min(1 / (1 + math.exp(-(-3.0 * (v - cell.mean().item()) + 2.0))) for v in cell.flatten())
                assert math.isclose(u[0, i, j].item(), expected, rel_tol=1e-5)


def test_unity_head_is_the_papers_formula_with_many_channels():
    """`p_l = sigmoid(Conv_o(Conv_p(X_u) - up(Conv_c(AvgPool(X_u, k)))))`, `U_l = MinPool(p_l, k)`, written out with
    random weights and D_u = 6 (the head computes Conv_o once on the finest grid), with the input's gradient."""
    torch.manual_seed(0)
    head = UnityHead(5, [4, 2], unity_channels=6)
    x = torch.randn(2, 5, 8, 8, requires_grad=True)
    x_u = head.reduce(x)
    expected = []
    for k in (4, 2):
        centroid = head.centroid(F.avg_pool2d(x_u, k)).repeat_interleave(k, 2).repeat_interleave(k, 3)
        prob = torch.sigmoid(head.output(head.pixel(x_u) - centroid))
        expected.append(-F.max_pool2d(-prob, k)[:, 0])
    unity = head(x)
    for ours, ref in zip(unity, expected, strict=True):
        torch.testing.assert_close(ours, ref)
    weights = [torch.randn_like(u) for u in unity]
    ours_grad = torch.autograd.grad(sum((u * w).sum() for u, w in zip(unity, weights)), x)[0]
    ref_grad = torch.autograd.grad(sum((u * w).sum() for u, w in zip(expected, weights)), x)[0]
    torch.testing.assert_close(ours_grad, ref_grad)


def test_context_aggregation_is_attention_then_concat_conv():
    torch.manual_seed(0)
    block = ContextAggregation(4, key_channels=2).eval()
    x, context = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 5)
    q = block.query(x).flatten(2)[0].T  # [9, 2]
    k = block.key(context)[0].T  # [5, 2]
    v = block.value(context)[0].T  # [5, 4]
    weights = torch.exp(q @ k.T / math.sqrt(2))
    attended = (weights / weights.sum(1, keepdim=True)) @ v  # [9, 4]
    expected = block.aggregate(torch.cat([attended.T.reshape(1, 4, 3, 3), x], 1))
    assert torch.allclose(block(x, context), expected, atol=1e-5)


def test_context_aggregation_training_graph_matches_concat_then_conv():
    """W_att applied to the value tokens (Eq. 9 folded into Eq. 8) gives the outputs and gradients of attention then
    concat then conv, in training mode (batch statistics)."""
    torch.manual_seed(0)
    block = ContextAggregation(6, key_channels=3).train()
    reference = copy.deepcopy(block)
    x, context = torch.randn(2, 6, 4, 5, requires_grad=True), torch.randn(2, 6, 7)
    q = reference.query(x).flatten(2).transpose(1, 2)
    k = reference.key(context).transpose(1, 2)
    v = reference.value(context).transpose(1, 2)
    attended = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(3), dim=-1) @ v  # [2, 20, 6]
    expected = reference.aggregate(torch.cat([attended.transpose(1, 2).reshape(2, 6, 4, 5), x], 1))
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, *reference.parameters()])
    out = block(x, context)
    grads = torch.autograd.grad(out.square().sum(), [x, *block.parameters()])
    assert torch.allclose(out, expected, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert torch.allclose(grad, expected_grad, atol=1e-4)


HEAD_OPTIONS = [(c, o) for c in ("none", "anl", "anl_multi", "coarse_to_fine") for o in ("single", "pyramid")
                if (c, o) != ("anl_multi", "single")]


@pytest.mark.parametrize("context,output", HEAD_OPTIONS)
def test_semantic_head_options_forward_backward(context, output):
    torch.manual_seed(0)
    head = SemanticPyramidHead(8, 3, [4, 2, 1], channels=16, context=context, output=output)
    logits = head(torch.randn(2, 8, 16, 16))
    sizes = [(4, 4), (8, 8), (16, 16)] if output == "pyramid" else [(16, 16)]
    assert [tuple(y.shape) for y in logits] == [(2, 3, *s) for s in sizes]
    sum(y.square().mean() for y in logits).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


def test_coarse_to_fine_context_reaches_finer_levels():
    """The finest output depends on the coarse levels' refined features through the context tokens (CU)."""
    torch.manual_seed(0)
    head = SemanticPyramidHead(8, 3, [4, 2, 1], channels=16, context="coarse_to_fine").eval()
    x = torch.randn(1, 8, 16, 16)
    base = head(x)[-1]
    with torch.no_grad():
        head.update[0].update[0].weight.mul_(2.0)  # CU of level 1 feeds levels 2 and 3
    changed = head(x)
    assert torch.allclose(changed[0], head(x)[0]) and not torch.allclose(changed[-1], base)


def test_semantic_head_rejects_bad_options():
    with pytest.raises(ValueError, match="context"):
        SemanticPyramidHead(8, 3, [2, 1], context="ocr")
    with pytest.raises(ValueError, match="anl_multi"):
        SemanticPyramidHead(8, 3, [2, 1], context="anl_multi", output="single")


# --------------------------------------------------------------------------------------------------- method
from segcentroids.methods import SpecializeFuse  # noqa: E402
from segcentroids.methods.specialize_fuse import (  # noqa: E402
    format_level_table,
    format_per_class_levels,
    level_report,
    per_class_level_report,
)


class TinySeg(nn.Module):
    """A SegModel stand-in: one stride-4 conv (not tests.conftest.tiny_segmodel: the hand-computed losses and fusion
    rules below want a model that is near-free and whose features are a single conv)."""

    out_channels, output_stride, aux_channels, encoder_channels = 8, 4, 8, [3, 8]

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)

    def forward(self, images):
        features = self.conv(images)
        return {"encoder": [images, features], "decoder": features}


def _method(**kwargs) -> SpecializeFuse:
    torch.manual_seed(0)
    options = dict(segmodel=TinySeg(), num_classes=3, dropout=0.0, semantic_channels=8, unity_channels=4)
    return SpecializeFuse(**{**options, **kwargs})


def _nll(logits: torch.Tensor, target: int) -> torch.Tensor:
    return -logits.float().log_softmax(1)[:, target].mean()


def test_loss_eq1_all_unity_by_hand():
    method = _method(train_tau=1.0)  # no prediction reaches 1: nothing is relabelled
    images, labels = torch.randn(2, 3, 32, 32), torch.full((2, 32, 32), 2)
    _, semantic, unity = method.pyramid(images)
    ce = [_nll(y, 2) for y in semantic[:-1]]
    ce.append(_nll(F.interpolate(semantic[-1], size=(32, 32), mode="bilinear", align_corners=False), 2))
    bce = [-u.log().mean() for u in unity]
    _, losses = method.training_outputs(images, labels)
    assert set(losses) == {"ce", "unity"}
    assert torch.allclose(losses["ce"], sum(ce) / 4, atol=1e-5)
    assert torch.allclose(losses["unity"], sum(bce) / 3, atol=1e-5)
    # gt_unity: the coarsest cell is unity, every finer level is done by coarser and contributes 0
    method.relabel = "gt_unity"
    _, losses = method.training_outputs(images, labels)
    assert torch.allclose(losses["ce"], ce[0] / 4, atol=1e-5)
    assert torch.allclose(losses["unity"], bce[0] / 3, atol=1e-5)


def test_loss_true_positive_relabelling_and_clamping():
    method = _method()
    with torch.no_grad():
        method.unity_head.output.bias.fill_(30.0)  # every cell predicted unity (probability 1.0 in float32)
    images = torch.randn(2, 3, 32, 32)
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[..., 16:] = 1  # coarsest cell (32) mix, level 2 (16): two columns of unity cells, all true positives
    _, semantic, unity = method.pyramid(images)
    nll = -semantic[1].log_softmax(1)  # [2, 3, 2, 2]: left column class 0, right column class 1
    ce_level2 = torch.cat([nll[:, 0, :, :1], nll[:, 1, :, 1:]], -1).mean()
    bce_level1 = -torch.log(1 - torch.tensor(1 - 1e-6))  # GT mix predicted 1.0: clamped (float32), finite
    bce_level2 = -unity[1].clamp(max=1 - 1e-6).log().mean()
    _, losses = method.training_outputs(images, labels)
    assert torch.allclose(losses["ce"], ce_level2 / 4, atol=1e-5)
    assert torch.allclose(losses["unity"], (bce_level1 + bce_level2) / 3, rtol=1e-4)
    assert torch.isfinite(losses["unity"])


def test_all_ignore_batch_gives_finite_zero_losses_with_graph():
    method = _method()
    _, losses = method.training_outputs(torch.randn(2, 3, 32, 32), torch.full((2, 32, 32), IGN))
    total = losses["ce"] + losses["unity"]
    assert total.item() == 0.0 and total.requires_grad


def test_single_output_is_plain_ce():
    method = _method(output="single", context="none")
    assert method.unity_head is None and method.fusion == "finest"
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    _, losses = method.training_outputs(images, labels)
    assert set(losses) == {"ce"}
    assert torch.allclose(losses["ce"], method.seg_loss(method.pyramid(images)[1][-1], labels), atol=1e-6)


@pytest.mark.parametrize("bias,level", [(30.0, 0), (-30.0, -1)])
def test_forward_returns_log_of_fused_probabilities(bias, level):
    method = _method()
    with torch.no_grad():
        method.unity_head.output.bias.fill_(bias)
    method.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = method(images)
        semantic = method.pyramid(images)[1]
    assert out.shape == (2, 3, 8, 8)
    expected = semantic[level].log_softmax(1).expand(2, 3, 8, 8)  # all unity: the 1x1 coarsest cell; none: finest
    assert torch.allclose(out, expected, atol=1e-5)


def test_finest_inference_skips_the_unity_head():
    calls = []
    for fusion, expected in (("finest", 0), ("fuse", 1)):
        method = _method(fusion=fusion).eval()
        calls.clear()
        method.unity_head.register_forward_hook(lambda *args: calls.append(1))
        with torch.no_grad():
            method(torch.randn(1, 3, 32, 32))
        assert len(calls) == expected


def test_padding_to_the_coarsest_stride_and_crop_back():
    method = _method()
    images, labels = method._pad(torch.randn(1, 3, 36, 44), torch.zeros(1, 36, 44, dtype=torch.long))
    assert images.shape[-2:] == (64, 64) and labels.shape[-2:] == (64, 64)
    assert (labels[:, 36:] == IGN).all() and (labels[..., 44:] == IGN).all() and (labels[:, :36, :44] == 0).all()
    _, losses = method.training_outputs(torch.randn(2, 3, 36, 44), torch.randint(0, 3, (2, 36, 44)))
    assert all(torch.isfinite(v) for v in losses.values())
    method.eval()
    with torch.no_grad():
        assert method(torch.randn(1, 3, 36, 44)).shape == (1, 3, 9, 11)  # multiple of the feature stride
        assert method(torch.randn(1, 3, 37, 45)).shape == (1, 3, 37, 45)  # else at the image size


def test_two_levels_4_and_32():
    method = _method(num_levels=2, strides=[32, 4])
    assert method.unity_head.cell_factors == [8] and len(method.semantic_head.classify) == 2
    _, losses = method.training_outputs(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)))
    sum(losses.values()).backward()
    assert method.strides == [32, 4] and _method().strides == [32, 16, 8, 4]


@pytest.mark.parametrize("key,value", [("context", "ocr"), ("output", "multi"), ("relabel", "oracle"),
                                       ("fusion", "mean"), ("tau", 1.5),
                                       ("train_tau", 0.0), ("strides", [32, 16, 8]), ("num_levels", 0)])
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        _method(**{key: value})


def test_level_outputs_and_report():
    method = _method()
    with torch.no_grad():
        method.unity_head.output.bias.fill_(-30.0)
    images = torch.randn(2, 3, 32, 32)
    level, preds, fused = method.level_outputs(images, (32, 32))
    assert level.shape == (2, 32, 32) and (level == 3).all() and preds.shape == (2, 4, 32, 32)
    with torch.no_grad():  # the fused column is the whole-image prediction the evaluation makes
        assert torch.equal(fused, method.infer(images, (32, 32)).argmax(1))
    confusion = torch.zeros(2, 2, 2, 2, dtype=torch.long)
    confusion[0, 0] = torch.tensor([[3, 1], [0, 4]])  # 8 pixels assigned to level 1, predicted by level 1
    confusion[0, 1] = torch.tensor([[4, 0], [0, 4]])
    confusion[1, 0] = torch.tensor([[0, 0], [2, 0]])  # 2 pixels assigned to level 2, class 0 absent
    confusion[1, 1] = torch.tensor([[0, 0], [0, 2]])
    report = level_report(confusion)
    assert report["share"] == pytest.approx([80.0, 20.0])
    # mIoU[predicting][assigned]: level 1 on its pixels: IoU0 = 3/4, IoU1 = 4/5
    assert report["mIoU"][0][0] == pytest.approx(100 * (0.75 + 0.8) / 2)
    assert report["mIoU"][1][0] == pytest.approx(100.0)
    assert report["mIoU"][0][1] == pytest.approx(0.0)  # class 0 predicted, absent: IoU0 = 0, IoU1 = 0
    assert report["mIoU"][1][1] == pytest.approx(100.0)  # class 0 absent from both: left out
    assert "| share % | 80.00 | 20.00 |" in format_level_table(report)


def test_fig3_per_class_report_hand_case():
    """Per-class IoU of each level over all pixels (the assigned levels summed) and of the fused output, by hand."""
    confusion = torch.zeros(2, 2, 3, 3, dtype=torch.long)  # [assigned, predicting, gt, pred]
    confusion[0, 0] = torch.tensor([[2, 0, 0], [1, 1, 0], [0, 0, 0]])
    confusion[1, 0] = torch.tensor([[0, 0, 0], [0, 2, 0], [0, 0, 0]])
    confusion[0, 1] = torch.tensor([[1, 1, 0], [0, 2, 0], [0, 0, 0]])
    confusion[1, 1] = torch.tensor([[0, 0, 0], [0, 1, 1], [0, 0, 0]])
    fused = torch.tensor([[2, 0, 0], [0, 4, 0], [0, 0, 0]])
    report = per_class_level_report(confusion, fused, ["a", "b", "c"])
    # level 1 over all pixels: [[2,0,0],[1,3,0],[0,0,0]] -> a 2/3, b 3/4, c absent from both (NaN)
    # level 2 over all pixels: [[1,1,0],[0,3,1],[0,0,0]] -> a 1/2, b 3/5, c predicted once, never true: 0
    assert report["levels"][0][:2] == pytest.approx([200 / 3, 75.0]) and math.isnan(report["levels"][0][2])
    assert report["levels"][1] == pytest.approx([50.0, 60.0, 0.0])
    assert report["fused"][:2] == pytest.approx([100.0, 100.0]) and math.isnan(report["fused"][2])
    markdown, table = format_per_class_levels(report)
    rows = list(csv.reader(io.StringIO(table)))
    assert rows[0] == ["class", "fused", "level 1", "level 2", "level 1 - fused", "level 2 - fused"]
    assert rows[1] == ["a", "100.00", "66.67", "50.00", "-33.33", "-50.00"]
    assert rows[3] == ["c", "", "", "0.00", "", ""]
    assert "| b | 100.00 | 75.00 | 60.00 | -25.00 | -40.00 |" in markdown


def _numpy_iou(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class IoU in percent from a numpy confusion matrix (ignore 255 left out; NaN for an absent class)."""
    valid = labels != 255
    cm = np.bincount(num_classes * labels[valid] + preds[valid], minlength=num_classes**2).reshape(num_classes, -1)
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, 100 * tp / union, np.nan)


def test_fig3_per_class_iou_of_each_level_equals_a_numpy_confusion_matrix():
    """Two test batches through the method's evaluation hooks: each level's and the fused per-class IoU equal a
    numpy confusion matrix of the saved predictions; the CSV holds them, the PNG opens."""
    from PIL import Image

    method = _method(level_analysis=True, num_levels=3)
    method.trainer = SimpleNamespace(strategy=SimpleNamespace(reduce=lambda t, reduce_op: t), is_global_zero=True,
                                     logger=None)
    generator = torch.Generator().manual_seed(0)
    saved = []
    method.eval()
    with torch.no_grad():
        for _ in range(2):
            images = torch.randn(2, 3, 32, 32, generator=generator)
            labels = torch.randint(0, 3, (2, 32, 32), generator=generator)
            labels[:, :4] = 255
            preds, extras = method.evaluation_outputs(images, labels, "test")
            method.update_method_metrics("test", labels, {"preds": preds, **extras})
            saved.append((labels.numpy(), extras["level_preds"].numpy(), extras["level_fused"].numpy()))
    scores = method.method_scores("test")
    report = scores.records["levels_per_class"][0]
    labels = np.concatenate([s[0] for s in saved])
    for level in range(3):
        level_preds = np.concatenate([s[1][:, level] for s in saved])
        np.testing.assert_allclose(report["levels"][level], _numpy_iou(labels, level_preds, 3), rtol=1e-9)
    fused = _numpy_iou(labels, np.concatenate([s[2] for s in saved]), 3)
    np.testing.assert_allclose(report["fused"], fused, rtol=1e-9)
    rows = list(csv.DictReader(io.StringIO(scores.files["levels_per_class.csv"])))
    for k, row in enumerate(rows):
        for level in range(3):
            expected = report["levels"][level][k]
            assert row[f"level {level + 1}"] == ("" if math.isnan(expected) else f"{expected:.2f}")
    with Image.open(io.BytesIO(scores.files["levels_per_class.png"])) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
        image.verify()


# -------------------------------------------------------------------------------------------------- configs
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from segcentroids.cli import main as cli_main  # noqa: E402
from tests.conftest import segmodel_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "configs/experiments/specialize_fuse").glob("*.yaml"))
ABLATIONS = sorted((ROOT / "configs/ablations/specialize_fuse").glob("*.yaml"))
TINY = {"trainer": {"accelerator": "cpu", "devices": 1, "strategy": "auto", "sync_batchnorm": False},
        "model": {"init_args": {"semantic_channels": 32, "segmodel": {"init_args": {"encoder_weights": None}}}}}
TINY_DATA = {"data": {"init_args": {"crop_size": [64, 64], "scale": None, "test_scale": None}}}  # paper crops -> 64
TINY_ENCODERS = {"tu-hrnet_w48": "tu-hrnet_w18_small", "tu-hrnet_w32": "tu-hrnet_w18_small", "resnet101": "resnet18"}


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_config_fast_dev_run(config, tmp_path):
    encoder = segmodel_args(config)["encoder_name"]
    tiny, tiny_data = tmp_path / "tiny.yaml", tmp_path / "tiny_data.yaml"
    tiny.write_text(yaml.safe_dump(TINY))
    tiny_data.write_text(yaml.safe_dump(TINY_DATA))
    data = str(ROOT / "configs/data/synthetic_tiny.yaml")
    cli_main(["fit", "--config", str(config), "--config", str(tiny), "--data", data, "--config", str(tiny_data),
              "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}",
              f"--model.init_args.segmodel.init_args.encoder_name={TINY_ENCODERS.get(encoder, encoder)}"])


def test_level_analysis_in_test_writes_table_9_and_the_level_map(tmp_path):
    config = ROOT / "configs/experiments/specialize_fuse/fpn_r18_sf_synthetic.yaml"
    cli_main(["test", "--config", str(config), "--data", str(ROOT / "configs/data/synthetic_tiny.yaml"),
              "--trainer.limit_test_batches=1", f"--trainer.default_root_dir={tmp_path}",
              "--model.init_args.semantic_channels=16", "--model.init_args.level_analysis=true"])
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (record,) = (tmp_path / "eval").glob("test-untrained-*")
    report = json.loads((record / "metrics/test_levels.json").read_text())
    assert len(report["share"]) == 4 and sum(report["share"]) == pytest.approx(100.0)
    assert len(report["mIoU"]) == 4 and all(len(row) == 4 for row in report["mIoU"])
    events = EventAccumulator(str(record), size_guidance={"images": 0}).Reload()
    assert "test/level_map" in events.Tags()["images"]
    # Fig. 3: the per-class table and its plot; under whole-image single-scale inference the fused column is the
    # evaluated prediction, so it equals the per-class IoU the run's own metric (torchmetrics' path) wrote
    from PIL import Image

    per_class = json.loads((record / "metrics/test_levels_per_class.json").read_text())
    assert len(per_class["levels"]) == 4 and len(per_class["fused"]) == len(per_class["classes"])
    main_iou = json.loads((record / "metrics/test.json").read_text())["IoU"]
    with (record / "metrics/test_levels_per_class.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [row["class"] for row in rows] == list(main_iou)
    for row in rows:
        expected = main_iou[row["class"]]
        assert (row["fused"] == "") if expected is None else float(row["fused"]) == pytest.approx(expected, abs=6e-3)
    assert (record / "metrics/test_levels_per_class.md").read_text().startswith("| class | fused | level 1 |")
    with Image.open(record / "metrics/test_levels_per_class.png") as image:
        assert image.format == "PNG"
        image.verify()


@pytest.mark.parametrize("table", ABLATIONS, ids=lambda p: p.stem)
def test_ablation_rows_are_constructor_switches(table):
    spec = yaml.safe_load(table.read_text())
    assert all((ROOT / base).is_file() for base in spec["base"])
    names = {row["name"] for row in spec["rows"]}
    assert spec["paper"] and set(spec["paper"]) <= names and spec["baseline"] in names
    for row in spec["rows"]:
        kwargs, class_path = {}, None
        for arg in spec["overrides"] + row["overrides"]:
            key, value = arg.split("=", 1)
            if key == "--model.class_path":  # the state-of-the-art tables' Baseline rows
                class_path = value
            elif not key.startswith("--model.init_args.inference"):  # the test protocol (paper_tables runs it)
                kwargs[key.removeprefix("--model.init_args.")] = yaml.safe_load(value)
        if class_path is not None:
            assert class_path == "segcentroids.methods.Baseline" and not kwargs, row
            continue
        method = _method(**kwargs)
        _, losses = method.training_outputs(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)))
        assert all(torch.isfinite(v) for v in losses.values())
