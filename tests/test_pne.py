"""PNE loss (Eq. 6-9): hand computations on written-out toys, a per-pair loop reference, edge cases, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segcentroids.losses import PNELoss
from segcentroids.ops import blocks
from tests.conftest import tiny_segmodel
from tests.references import loop_pne_loss


# --------------------------------------------------------------------------------------------------- the toy
def toy():
    """One image, 1 x 7 pixels, 3 classes; every set written out.

    labels [0, 0, 0, 1, 1, 2, 2], predictions [0, 0, 1, 1, 1, 2, 0]:
    S_{1,0} = {2} (positives P_{0,0} = {0, 1}, negatives N_{1,1} = {3, 4});
    S_{0,2} = {6} (positives P_{2,2} = {5}, negatives N_{0,0} = {0, 1}).
    Softmax scores of the positives: pixel 0 0.6, pixel 1 0.8, pixel 5 2/3.
    """
    e = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0], [0.8, -0.6], [0.0, -1.0], [0.6, -0.8]])
    scale = torch.tensor([2, 3, 1, 1, 1, 1, 1.0])[:, None]  # norms do not matter (cosine)
    embeddings = (e * scale).T.reshape(1, 2, 1, 7)
    l3, l8, l4 = math.log(3), math.log(8), math.log(4)
    logits = torch.tensor([[l3, 0, 0], [l8, 0, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 0, l4], [1, 0, 0]])
    logits = logits.T.reshape(1, 3, 1, 7)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2]).reshape(1, 1, 7)
    return embeddings, logits, labels


def toy_terms(tau=1.0, weights="normalized", form="pne"):
    """The two anchors' losses by hand: a2 = (0, 1) and a6 = (0.6, -0.8)."""
    # a2: positives e0 (cos 0), e1 (cos 0.8); negatives e3 (cos 0), e4 (cos -0.6)
    # a6: positive e5 twice (cos 0.8); negatives e0 (cos 0.6), e1 (cos -0.28)
    w2 = {"normalized": [0.6 / 0.7, 0.8 / 0.7], "raw": [0.6, 0.8], "none": [1, 1]}[weights]
    w6 = {"normalized": [1, 1], "raw": [2 / 3, 2 / 3], "none": [1, 1]}[weights]
    cases = [([0.0, 0.8], w2, [0.0, -0.6]), ([0.8, 0.8], w6, [0.6, -0.28])]
    out = []
    for pos, wts, neg in cases:
        neg_sum = sum(math.exp(s / tau) for s in neg)
        if form == "pne":
            out.append(math.log(1 + neg_sum / sum(wi * math.exp(s / tau) for wi, s in zip(wts, pos))))
        else:
            out.append(sum(wi * -math.log(math.exp(s / tau) / (math.exp(s / tau) + neg_sum))
                           for wi, s in zip(wts, pos)) / 2)
    return out


@pytest.mark.parametrize("tau", [1.0, 0.5])
@pytest.mark.parametrize("weights", ["normalized", "raw", "none"])
@pytest.mark.parametrize("form", ["pne", "infonce"])
@pytest.mark.parametrize("sampling", ["first", "random"])
def test_toy_by_hand(tau, weights, form, sampling):
    embeddings, logits, labels = toy()
    loss = PNELoss(temperature=tau, samples_per_set=2, positive_weight=weights, form=form, sampling=sampling)
    value = loss(embeddings, logits, labels, generator=torch.Generator().manual_seed(0))
    # each set is tiled to 2 samples of its single anchor: the mean over the 4 samples is the mean of the 2 terms
    assert value.item() == pytest.approx(sum(toy_terms(tau, weights, form)) / 2, rel=1e-6)


def test_first_sampling_cuts_in_raster_order():
    # class 0 pixels 0..2 are misclassified as 1; with S = 2 only pixels 0 and 1 are anchors
    e = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, -1.0]])
    embeddings = e.T.reshape(1, 2, 1, 5)
    logits = torch.tensor([[0, 1.0], [0, 1.0], [0, 1.0], [1.0, 0], [0, 1.0]]).T.reshape(1, 2, 1, 5)
    labels = torch.tensor([0, 0, 0, 0, 1]).reshape(1, 1, 5)
    value = PNELoss(samples_per_set=2, sampling="first", positive_weight="none")(embeddings, logits, labels)
    # positives: pixel 3 (1, 0) tiled; negatives: pixel 4 (0, -1) tiled
    a0 = math.log(1 + 2 * math.exp(-1) / (2 * math.exp(0)))
    a1 = math.log(1 + 2 * math.exp(0) / (2 * math.exp(1)))
    assert value.item() == pytest.approx((a0 + a1) / 2, rel=1e-6)
    capped = PNELoss(samples_per_set=2, sampling="first", max_anchor_set=2)(embeddings, logits, labels)
    assert capped.item() == 0.0
    assert PNELoss(samples_per_set=2, max_anchor_set=3)(embeddings, logits, labels).item() > 0


def toy_with_a_two_anchor_set():
    """The toy plus pixel 7: class 2 predicted as 0 with embedding (1, 0), so S_{0,2} = {6, 7}."""
    embeddings, logits, labels = toy()
    embeddings = torch.cat([embeddings, torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)], dim=3)
    logits = torch.cat([logits, torch.tensor([1.0, 0, 0]).reshape(1, 3, 1, 1)], dim=3)
    return embeddings, logits, torch.cat([labels, torch.tensor([2]).reshape(1, 1, 1)], dim=2)


@pytest.mark.parametrize("sampling", ["first", "random"])
def test_eq9_readings_by_hand(sampling):
    """Authors' reading (every set tiled or cut to S samples, sets above the cap skipped) vs the paper's (each
    misclassified pixel once; sets above the cap sampled down)."""
    a2, a6 = toy_terms()
    # a7 = (1, 0): positive e5 tiled twice (cos 0, weight 1); negatives N_{0,0}: e0 (cos 1), e1 (cos 0.6)
    a7 = math.log(1 + (math.exp(1) + math.exp(0.6)) / (2 * math.exp(0)))
    embeddings, logits, labels = toy_with_a_two_anchor_set()

    def value(**kw):
        loss = PNELoss(samples_per_set=2, sampling=sampling, **kw)
        return loss(embeddings, logits, labels, generator=torch.Generator().manual_seed(0)).item()

    assert value() == pytest.approx((2 * a2 + a6 + a7) / 4, rel=1e-6)  # S_{1,0}: a2 twice; S_{0,2}: a6, a7
    assert value(reduction="anchors") == pytest.approx((a2 + a6 + a7) / 3, rel=1e-6)
    assert value(max_anchor_set=1) == pytest.approx(a2, rel=1e-6)  # S_{0,2} skipped (authors)
    for reduction in ("samples", "anchors"):  # S_{0,2} sampled down to one of its pixels (paper)
        sampled = value(max_anchor_set=1, oversized_anchor_sets="sample", reduction=reduction)
        first = (a2 + a6) / 2
        assert sampled == pytest.approx(first, rel=1e-6) if sampling == "first" else \
            sampled in (pytest.approx(first, rel=1e-6), pytest.approx((a2 + a7) / 2, rel=1e-6))


def test_sampling_down_takes_random_members():
    """With `oversized_anchor_sets="sample"` and random sampling, the kept member of an oversized set varies with
    the generator: both members of S_{0,2} are drawn over seeds."""
    embeddings, logits, labels = toy_with_a_two_anchor_set()
    loss = PNELoss(samples_per_set=2, max_anchor_set=1, oversized_anchor_sets="sample")
    values = {round(loss(embeddings, logits, labels, generator=torch.Generator().manual_seed(seed)).item(), 6)
              for seed in range(20)}
    assert len(values) == 2


def test_empty_negatives():
    # S_{1,0} = {pixel 2}, but no pixel of class 1 is predicted correctly: N_{1,1} is empty
    e = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
    embeddings = e.T.reshape(1, 2, 1, 4)
    logits = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [1.0, 0]]).T.reshape(1, 2, 1, 4)
    labels = torch.tensor([0, 0, 0, 1]).reshape(1, 1, 4)
    skip = PNELoss(samples_per_set=2, positive_weight="none", empty_negatives="skip")
    value = skip(embeddings.requires_grad_(), logits, labels)
    assert value.item() == 0.0 and value.requires_grad
    anchors = PNELoss(samples_per_set=2, positive_weight="none", empty_negatives="anchors")
    # negatives are the anchor set itself: pixel 2 twice (cos 1)
    expected = math.log(1 + 2 * math.exp(1) / (math.exp(0) + math.exp(0.8)))
    assert anchors(embeddings, logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_individual_anchor_sets_and_corresponding_negatives_by_hand():
    # class 0: pixel 2 predicted 1, pixel 3 predicted 2; class 1 correct at 4, class 2 correct at 5
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, -1.0], [-0.6, 0.8]])
    embeddings = e.T.reshape(1, 2, 1, 6)
    preds = [0, 0, 1, 2, 1, 2]
    logits = F.one_hot(torch.tensor(preds), 3).float().T.reshape(1, 3, 1, 6)
    labels = torch.tensor([0, 0, 0, 0, 1, 2]).reshape(1, 1, 6)
    kw = dict(samples_per_set=2, positive_weight="none", sampling="first")
    # positives for both anchors: pixels 0, 1 = (1, 0)
    # IAS + CN: a2 = (0, 1) against N_{1,1} = {4}: cos -1; a3 = (0.6, 0.8) against N_{2,2} = {5}: cos 0.28
    a2 = math.log(1 + 2 * math.exp(-1) / (2 * math.exp(0)))
    a3 = math.log(1 + 2 * math.exp(0.28) / (2 * math.exp(0.6)))
    assert PNELoss(**kw)(embeddings, logits, labels).item() == pytest.approx((a2 + a3) / 2, rel=1e-6)
    # IAS off + CN: one pooled set {2, 3} of class 0, predicted as 1 and 2, shares the union N_{1,1} + N_{2,2} =
    # {4, 5}; each class's S = 2 templates weigh its share of the union's pixels, 1/2
    u2 = math.log(1 + (math.exp(-1) + math.exp(0.8)) / 2)
    u3 = math.log(1 + (math.exp(-0.8) + math.exp(0.28)) / (2 * math.exp(0.6)))
    pooled = PNELoss(individual_anchor_sets=False, **kw)(embeddings, logits, labels)
    assert pooled.item() == pytest.approx((u2 + u3) / 2, rel=1e-6)
    # a 7th pixel, class 2 predicted 2 at (0.8, -0.6): union {4, 5, 6}, shares 1/3 (class 1) and 2/3 (class 2)
    e7 = torch.cat([e, torch.tensor([[0.8, -0.6]])])
    labels7 = torch.tensor([0, 0, 0, 0, 1, 2, 2]).reshape(1, 1, 7)
    logits7 = F.one_hot(torch.tensor([*preds, 2]), 3).float().T.reshape(1, 3, 1, 7)
    v2 = math.log(1 + (2 * math.exp(-1) / 3 + 2 * (math.exp(0.8) + math.exp(-0.6)) / 3) / 2)
    v3 = math.log(1 + (2 * math.exp(-0.8) / 3 + 2 * (math.exp(0.28) + math.exp(0)) / 3) / (2 * math.exp(0.6)))
    pooled = PNELoss(individual_anchor_sets=False, **kw)(e7.T.reshape(1, 2, 1, 7), logits7, labels7)
    assert pooled.item() == pytest.approx((v2 + v3) / 2, rel=1e-6)
    # IAS off + CN off: negatives are the 2 templates (of 4: pixel 4 twice, pixel 5 twice) closest to the mean
    # anchor (0.3, 0.9): pixel 5 (cos 0.54 / |.|) beats pixel 4 (cos -0.9 / |.|), so both negatives are pixel 5
    b2 = math.log(1 + 2 * math.exp(0.8) / (2 * math.exp(0)))
    b3 = math.log(1 + 2 * math.exp(0.28) / (2 * math.exp(0.6)))
    hard = PNELoss(individual_anchor_sets=False, corresponding_negatives=False, **kw)(embeddings, logits, labels)
    assert hard.item() == pytest.approx((b2 + b3) / 2, rel=1e-6)


def random_case(seed, B=2, K=4, h=6, w=7, D=5, accuracy=0.6, ignore=0.1, scale=1, never_right=None):
    """Random labels, predictions right with probability `accuracy`; class `never_right` is never predicted
    correctly and every misclassified pixel of class 0 is predicted as it (so the anchor sets predicted as it, and
    class 0's pooled set, have no corresponding negatives)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (B, h, w), generator=g)
    flip = torch.rand(B, h, w, generator=g) > accuracy
    preds = torch.where(flip, torch.randint(0, K, (B, h, w), generator=g), labels)
    if never_right is not None:
        preds = torch.where((preds == never_right) & (labels == never_right), (never_right + 1) % K, preds)
        preds = torch.where((labels == 0) & (preds != 0), never_right, preds)
    logits = torch.randn(B, K, h, w, generator=g) + 4 * F.one_hot(preds, K).permute(0, 3, 1, 2)
    labels[torch.rand(B, h, w, generator=g) < ignore] = 255
    if scale > 1:
        labels = labels.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    embeddings = torch.randn(B, D, h, w, generator=g)
    return embeddings, logits, labels


OPTIONS = [
    {},
    {"form": "infonce"},
    {"positive_weight": "raw", "temperature": 0.3},
    {"positive_weight": "none", "max_anchor_set": 3},
    {"positive_score": "logit"},
    {"empty_negatives": "anchors"},
    {"individual_anchor_sets": False},
    {"individual_anchor_sets": False, "empty_negatives": "anchors"},
    {"corresponding_negatives": False},
    {"individual_anchor_sets": False, "corresponding_negatives": False, "form": "infonce"},
    {"corresponding_negatives": False, "empty_negatives": "anchors"},
    # the paper's reading of Eq. 9: sets above the cap sampled down, the mean over misclassified pixels
    {"reduction": "anchors"},
    {"oversized_anchor_sets": "sample", "max_anchor_set": 2},
    {"oversized_anchor_sets": "sample", "max_anchor_set": 5, "reduction": "anchors"},
    {"reduction": "anchors", "individual_anchor_sets": False},
    {"reduction": "anchors", "corresponding_negatives": False, "form": "infonce"},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("samples_per_set,D", [(3, 5), (8, 8)])
def test_matches_per_pair_loop(options, samples_per_set, D, monkeypatch):
    """Value and gradient; the third case has a class never predicted right (empty negative sets). S = D = 8 takes
    the grouped template products on a CPU (aligned rows; counted below), S = 3, D = 5 the copy + bmm path."""
    grouped_calls = []
    product = blocks._GroupedProduct.apply
    monkeypatch.setattr(blocks._GroupedProduct, "apply", lambda *a: grouped_calls.append(1) or product(*a))
    for seed in range(3):
        embeddings, logits, labels = random_case(seed, scale=2 if seed == 1 else 1, D=D,
                                                 never_right=3 if seed == 2 else None)
        kw = {"samples_per_set": samples_per_set, "max_anchor_set": None, **options}
        ours_input, ref_input = embeddings.clone().requires_grad_(), embeddings.double().requires_grad_()
        ours = PNELoss(sampling="first", **kw)(ours_input, logits, labels)
        ref = loop_pne_loss(ref_input, logits.double(), labels, **kw)
        assert ours.item() == pytest.approx(ref.item(), abs=1e-5, rel=1e-5)
        assert ref.item() > 0  # the random cases do have qualifying sets
        ours.backward(), ref.backward()
        torch.testing.assert_close(ours_input.grad, ref_input.grad.float(), atol=1e-5, rtol=1e-4)
    if D == 5:
        assert not grouped_calls
    elif options.get("individual_anchor_sets", True):  # IAS gives at least as many chunks as the B*K = 8 blocks
        assert grouped_calls


def test_channels_last_and_contiguous_embeddings_give_the_same_loss():
    embeddings, logits, labels = random_case(0, D=8)
    losses, grads = [], []
    for layout in (torch.contiguous_format, torch.channels_last):
        x = embeddings.clone(memory_format=layout).requires_grad_()
        loss = PNELoss(sampling="first", samples_per_set=8, max_anchor_set=None)(x, logits, labels)
        loss.backward()
        losses.append(loss), grads.append(x.grad)
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_loop_cases_exercise_both_eq9_readings():
    """The loop comparison's cases have sets above a cap of 2 and sets of different sizes: the readings differ."""
    embeddings, logits, labels = random_case(1)
    kw = {"samples_per_set": 3, "sampling": "first"}
    skip = PNELoss(max_anchor_set=2, **kw)(embeddings, logits, labels)
    sample = PNELoss(max_anchor_set=2, oversized_anchor_sets="sample", **kw)(embeddings, logits, labels)
    samples = PNELoss(max_anchor_set=None, **kw)(embeddings, logits, labels)
    anchors = PNELoss(max_anchor_set=None, reduction="anchors", **kw)(embeddings, logits, labels)
    assert abs(skip.item() - sample.item()) > 1e-3 and abs(samples.item() - anchors.item()) > 1e-3


@pytest.mark.parametrize("individual_anchor_sets", [True, False])
def test_loop_cases_exercise_empty_negatives(individual_anchor_sets):
    """The loop comparison's third case has anchor sets without negatives: "skip" and "anchors" differ there."""
    embeddings, logits, labels = random_case(2, never_right=3)
    kw = {"samples_per_set": 3, "max_anchor_set": None, "individual_anchor_sets": individual_anchor_sets}
    skip = PNELoss(sampling="first", empty_negatives="skip", **kw)(embeddings, logits, labels)
    anchors = PNELoss(sampling="first", empty_negatives="anchors", **kw)(embeddings, logits, labels)
    assert abs(skip.item() - anchors.item()) > 1e-3


@pytest.mark.parametrize("individual_anchor_sets", [True, False])
def test_hard_negatives_with_no_other_class_templates_match_the_loop(individual_anchor_sets):
    """CN off and only class 0 ever predicted right: no set has negatives. "skip" gives 0 (with a graph),
    "anchors" contrasts each set with its own anchors; value and gradient match the loop."""
    g = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 3, (2, 6, 7), generator=g)
    right = torch.rand(2, 6, 7, generator=g) < 0.5
    preds = torch.where(labels == 0, torch.where(right, 0, 1 + (torch.rand(2, 6, 7, generator=g) < 0.5).long()), 0)
    logits = torch.randn(2, 3, 6, 7, generator=g) + 4 * F.one_hot(preds, 3).permute(0, 3, 1, 2)
    embeddings = torch.randn(2, 5, 6, 7, generator=g)
    kw = {"samples_per_set": 3, "max_anchor_set": None, "corresponding_negatives": False,
          "individual_anchor_sets": individual_anchor_sets}
    skip = PNELoss(sampling="first", empty_negatives="skip", **kw)(embeddings.requires_grad_(), logits, labels)
    assert skip.item() == 0.0 and skip.requires_grad
    ours_input, ref_input = embeddings.detach().clone().requires_grad_(), embeddings.detach().double().requires_grad_()
    ours = PNELoss(sampling="first", empty_negatives="anchors", **kw)(ours_input, logits, labels)
    ref = loop_pne_loss(ref_input, logits.double(), labels, empty_negatives="anchors", **kw)
    assert ref.item() > 0 and ours.item() == pytest.approx(ref.item(), abs=1e-5, rel=1e-5)
    ours.backward(), ref.backward()
    torch.testing.assert_close(ours_input.grad, ref_input.grad.float(), atol=1e-5, rtol=1e-4)


def test_random_sampling_is_seeded_and_equals_first_when_sets_tile_exactly():
    embeddings, logits, labels = random_case(0, B=3, K=5, h=8, w=8)
    loss = PNELoss(samples_per_set=4, max_anchor_set=None)
    one = loss(embeddings, logits, labels, generator=torch.Generator().manual_seed(1))
    again = loss(embeddings, logits, labels, generator=torch.Generator().manual_seed(1))
    other = loss(embeddings, logits, labels, generator=torch.Generator().manual_seed(2))
    assert one.item() == again.item() and one.item() != other.item()
    # with S a multiple of every set's size, any order tiles each member equally often: same value as "first"
    S = 60  # every set of a 6-pixel image has 1..6 members
    big_random = PNELoss(samples_per_set=S, max_anchor_set=None, sampling="random")
    big_first = PNELoss(samples_per_set=S, max_anchor_set=None, sampling="first")
    e, lg, lb = random_case(4, B=1, K=3, h=2, w=3, ignore=0.0)
    assert big_random(e, lg, lb, torch.Generator().manual_seed(3)).item() == pytest.approx(
        big_first(e, lg, lb).item(), rel=1e-5)


def test_labels_are_nearest_downsampled():
    embeddings, logits, labels = random_case(5, scale=4)
    loss = PNELoss(sampling="first", samples_per_set=4)
    assert loss(embeddings, logits, labels).item() == loss(embeddings, logits, labels[:, ::4, ::4]).item()


def make_grad_case():
    embeddings, logits, labels = toy()
    return embeddings.clone().requires_grad_(), logits.clone().requires_grad_(), labels


def test_gradient_reaches_anchors_only():
    embeddings, logits, labels = make_grad_case()
    PNELoss(samples_per_set=2)(embeddings, logits, labels).backward()
    norms = embeddings.grad[0, :, 0].norm(dim=0)
    assert norms[2] > 0 and norms[6] > 0  # the anchors
    assert torch.all(norms[[0, 1, 3, 4, 5]] == 0)  # positives and negatives are templates
    assert logits.grad is None


@pytest.mark.parametrize("case", ["all_correct", "no_positives", "all_ignore", "single_class"])
def test_edge_cases_give_zero_with_a_graph(case):
    embeddings, logits, labels = make_grad_case()
    if case == "all_correct":
        logits = F.one_hot(labels[:, 0], 3).permute(0, 2, 1)[:, :, None].float().requires_grad_()
    elif case == "no_positives":
        logits = F.one_hot((labels[:, 0] + 1) % 3, 3).permute(0, 2, 1)[:, :, None].float().requires_grad_()
    elif case == "all_ignore":
        labels = torch.full_like(labels, 255)
    else:
        labels = torch.zeros_like(labels)
        logits = F.one_hot(torch.tensor([[0, 0, 0, 0, 0, 0, 1]]), 3).permute(0, 2, 1)[:, :, None].float()
    loss, stats = PNELoss(samples_per_set=2).compute(embeddings, logits, labels)
    assert loss.item() == 0.0 and loss.requires_grad and torch.isfinite(loss)
    loss.backward()
    assert torch.all(embeddings.grad == 0)
    assert stats["pairs"].item() == 0 and stats["anchors"].item() == 0


def test_diagnostics():
    embeddings, logits, labels = toy()
    _, stats = PNELoss(samples_per_set=2).compute(embeddings, logits, labels)
    assert stats["pairs"].item() == 2 and stats["anchors"].item() == 2
    assert stats["anchor_share"].item() == pytest.approx(2 / 7)
    # Table 7's "standard deviation": the std of w over the sampled templates, S = 2 of each class (class 2 tiled)
    p = math.e / (math.e + 2)  # pixels 3 and 4: logits (0, 1, 0)
    scores = [0.6, 0.8, p, p, 2 / 3, 2 / 3]
    mean = sum(scores) / 6
    assert stats["weight_std"].item() == pytest.approx(math.sqrt(sum((w - mean) ** 2 for w in scores) / 5), rel=1e-5)


def test_float32_under_autocast():
    embeddings, logits, labels = random_case(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = PNELoss(sampling="first", samples_per_set=3)(embeddings.bfloat16(), logits.bfloat16(), labels)
    assert value.dtype == torch.float32 and torch.isfinite(value)


@pytest.mark.parametrize("key,value", [("sampling", "all"), ("positive_weight", "softmax"), ("form", "nce"),
                                       ("empty_negatives", "zero"), ("temperature", 0.0), ("samples_per_set", 0),
                                       ("max_anchor_set", 0), ("positive_score", "prob"),
                                       ("oversized_anchor_sets", "cut"), ("reduction", "mean")])
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        PNELoss(**{key: value})


# ---------------------------------------------------------------------------------- method and plug-in objective
def _batch(K=4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 64, 64, generator=g), torch.randint(0, K, (2, 64, 64), generator=g)


def test_pne_method_losses_weights_and_gradients():
    from segcentroids.methods import PNE

    model = PNE(segmodel=tiny_segmodel(seed=0), num_classes=4, samples_per_set=8, max_anchor_set=None)
    assert model.loss_weights["pne"] == 1.3 and model.extra_losses[0].loss.temperature == 1.0
    outputs, losses = model.training_outputs(*_batch())
    (pne,) = [extra(outputs, _batch()[1]) for extra in model.extra_losses]
    assert set(pne) == {"pne"} and pne["pne"].item() > 0
    pne["pne"].backward()
    assert model.extra_losses[0].projection[0].weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.segmodel.parameters())
    assert all(p.grad is None for p in model.classifier.parameters())  # the logits get no PNE gradient


def test_pne_inference_is_the_baselines():
    from segcentroids.methods import PNE, Baseline

    baseline = Baseline(segmodel=tiny_segmodel(seed=0), num_classes=4)
    pne = PNE(segmodel=tiny_segmodel(seed=1), num_classes=4)
    missing, unexpected = pne.load_state_dict(baseline.state_dict(), strict=False)
    assert not unexpected and missing and all(key.startswith("extra_losses.") for key in missing)
    baseline.eval(), pne.eval()
    pne.extra_losses[0].projection.forward = None  # the head must not run at inference
    images = _batch()[0]
    with torch.no_grad():
        assert torch.equal(baseline(images), pne(images))


PAPER_MODELS = {  # the paper's model families with small encoders (Tables 2-4: HRNetV2, OCRNet, UPerNet + Swin)
    "hrnetv2": {"arch": "hrnetv2", "encoder_name": "tu-hrnet_w18_small", "decoder_channels": None},
    "ocrnet_hrnet": {"arch": "ocr", "encoder_name": "tu-hrnet_w18_small", "output_stride": 4, "decoder_channels": 32,
                     "num_classes": 4},
    "upernet_swin": {"arch": "upernet", "encoder_name": "tu-swin_tiny_patch4_window7_224", "decoder_channels": 32,
                     "encoder_kwargs": {"img_size": [64, 64], "window_size": 2}},
}


@pytest.mark.parametrize("name", list(PAPER_MODELS))
def test_pne_on_the_papers_models(name):
    """PNE trains on each family (a PNE gradient reaches the encoder) and infers exactly as the Baseline."""
    from segcentroids.methods import PNE, Baseline
    from segcentroids.models import SegModel

    def build(method):
        torch.manual_seed(0)
        return method(segmodel=SegModel(encoder_weights=None, **PAPER_MODELS[name]), num_classes=4)

    model, baseline = build(PNE), build(Baseline)
    images, labels = _batch()
    outputs, _ = model.training_outputs(images, labels)
    pne = model.extra_losses[0](outputs, labels)["pne"]
    assert torch.isfinite(pne) and pne > 0
    pne.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.segmodel.encoder.parameters())
    assert model.classifier[1].weight.grad is None  # the logits are detached in the loss
    baseline.load_state_dict(model.state_dict(), strict=False)
    model.eval(), baseline.eval()
    with torch.no_grad():
        assert torch.equal(model(images), baseline(images))


def test_extra_losses_need_their_own_term_names():
    from segcentroids.losses import PNEObjective
    from segcentroids.losses.extra import ExtraLoss
    from segcentroids.methods import PNE, Baseline

    with pytest.raises(ValueError, match=r"PNEObjective names its loss terms \['pne'\]"):
        PNE(segmodel=tiny_segmodel(seed=0), num_classes=4, extra_losses=[PNEObjective()])

    class ShadowsCE(ExtraLoss):  # declares no weight, returns a term the method computes
        def forward(self, outputs, labels):
            return {"ce": outputs["logits"].sum() * 0}

    model = Baseline(segmodel=tiny_segmodel(seed=0), num_classes=4, extra_losses=[ShadowsCE()])
    images, labels = _batch()
    with pytest.raises(ValueError, match=r"ShadowsCE returned loss terms \['ce'\]"):
        model.training_step({"image": images, "mask": labels}, 0)


def test_objective_plugs_into_any_method_and_checks_channels():
    from segcentroids.losses import PNEObjective
    from segcentroids.methods import Baseline

    model = Baseline(segmodel=tiny_segmodel(seed=0), num_classes=4,
                     extra_losses=[PNEObjective(alpha=0.5, samples_per_set=4)])
    assert model.loss_weights["pne"] == 0.5
    images, labels = _batch()
    outputs, _ = model.training_outputs(images, labels)
    assert torch.isfinite(model.extra_losses[0](outputs, labels)["pne"])
    wrong = Baseline(segmodel=tiny_segmodel(seed=0), num_classes=4, extra_losses=[PNEObjective(in_channels=7)])
    with pytest.raises(ValueError, match="in_channels=32"):
        wrong.extra_losses[0](outputs, labels)
    with pytest.raises(ValueError, match="alpha"):
        PNEObjective(alpha=-1.0)


def test_random_sampling_repeats_per_step():
    from segcentroids.losses import PNEObjective
    from segcentroids.methods import Baseline

    model = Baseline(segmodel=tiny_segmodel(seed=0), num_classes=4, extra_losses=[PNEObjective(samples_per_set=4)])
    images, labels = _batch()
    model.train()
    outputs, _ = model.training_outputs(images, labels)
    outputs = {k: v.detach() for k, v in outputs.items()}
    objective = model.extra_losses[0].eval()  # BN in eval: the same embeddings twice
    assert objective(outputs, labels)["pne"].item() == objective(outputs, labels)["pne"].item()


def test_diagnostics_are_logged(tmp_path):
    import lightning as L

    from segcentroids.methods import PNE

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            images, labels = _batch()
            return {"image": images[i], "mask": labels[i], "name": str(i)}

    model = PNE(segmodel=tiny_segmodel(seed=0), num_classes=4, samples_per_set=8, max_anchor_set=None)
    trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, torch.utils.data.DataLoader(Data(), batch_size=2))
    metrics = trainer.callback_metrics
    assert metrics["train/pne/pairs"] > 0 and metrics["train/pne/anchors"] > 0
    assert 0 < metrics["train/pne/anchor_share"] <= 1
    assert 0 <= metrics["train/pne/weight_std"] <= 0.5  # softmax scores lie in [1/K, 1]


# ---------------------------------------------------------------------------------------------------- configs
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "experiments" / "pne").glob("*.yaml"))
ABLATIONS = sorted((ROOT / "configs" / "ablations" / "pne").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_fast_dev_run(config, tmp_path):
    import json

    from segcentroids.cli import main
    from tests.conftest import segmodel_args, tiny_segmodel_args

    # the whole SegModel is replaced by a tiny one of the same arch (an `...encoder_weights=null` override reaches
    # SegModel as the string "None")
    arch = segmodel_args(config)["arch"]
    tiny = tiny_segmodel_args(arch, encoder_kwargs=None)
    if arch in ("deeplabv3", "ocr"):
        tiny["output_stride"] = 32  # undilated: the paper's stride 8 makes resnet18 several times slower on CPU
    if arch == "ocr":
        tiny["num_classes"] = 8
    segmodel = json.dumps({"class_path": "segcentroids.models.SegModel", "init_args": tiny})
    main(["fit", "--config", str(config), "--data", str(ROOT / "configs/data/synthetic_tiny.yaml"),
          "--trainer.fast_dev_run=true", "--trainer.accelerator=cpu", "--trainer.devices=1",
          f"--trainer.default_root_dir={tmp_path}", f"--model.init_args.segmodel={segmodel}",
          "--model.init_args.inference.mode=whole"])  # 512 x 1024 slide windows would pad the 64 x 64 images


@pytest.mark.parametrize("table", ABLATIONS, ids=[t.stem for t in ABLATIONS])
def test_ablation_tables_are_pne_overrides(table):
    import inspect

    import yaml

    from segcentroids.losses import PNEObjective, offline_context
    from segcentroids.methods import PNE

    spec = yaml.safe_load(table.read_text())
    assert all((ROOT / base).is_file() for base in spec["base"])
    names = [row["name"] for row in spec["rows"]]
    assert len(set(names)) == len(names) and spec["baseline"] in names
    # every row carries the paper's number, except our rows reading Eq. 9 as written (no such row in the paper)
    assert set(spec["paper"]) == {name for name in names if "(Eq. 9 as written)" not in name}
    arguments = inspect.signature(PNE.__init__).parameters
    images, labels = _batch()
    model = PNE(segmodel=tiny_segmodel(seed=0), num_classes=4)
    outputs, _ = model.training_outputs(images, labels)
    outputs = {key: value.detach() for key, value in outputs.items()}
    for row in spec["rows"]:
        if row["overrides"] == ["--model.class_path=segcentroids.methods.Baseline"]:
            continue  # Tables 2-4: the framework without PNE
        kwargs = {}
        for override in row["overrides"]:
            key, value = override.removeprefix("--model.init_args.").split("=")
            if key.startswith("segmodel."):
                continue  # the encoder rows (R101) are SegModel arguments
            assert key in arguments, override
            kwargs[key] = yaml.safe_load(value)
        objective = PNEObjective(samples_per_set=8, **kwargs)  # PNE passes its arguments on by the same names
        objective.build(offline_context(model.feature_channels, model.num_classes))
        assert torch.isfinite(objective(outputs, labels)["pne"])


def test_projection_head_is_conv_bn_relu_conv_with_channels_last_output():
    """The head's last 1x1 conv runs as a per-image product (rows = pixels): the same values and gradients as the
    convolutions written out, and embeddings whose pixels are contiguous rows (the loss gathers them without a
    copy)."""
    from segcentroids.nn import ProjectionHead

    torch.manual_seed(0)
    head = ProjectionHead(6, embed_dim=12)
    x = torch.randn(2, 6, 5, 7, requires_grad=True)
    ours = head(x)
    first, norm, _, last = head
    ref = F.conv2d(F.relu(norm(F.conv2d(x, first.weight))), last.weight, last.bias)
    torch.testing.assert_close(ours, ref)
    assert ours.shape == (2, 12, 5, 7) and ours.is_contiguous(memory_format=torch.channels_last)
    weights = torch.randn_like(ref)
    grads = torch.autograd.grad((ours * weights).sum(), [x, first.weight, last.weight, last.bias])
    ref_grads = torch.autograd.grad((ref * weights).sum(), [x, first.weight, last.weight, last.bias])
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)
