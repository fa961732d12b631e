"""MVSC: grouping op, centroids, the four loss terms, the method, its configs and its inference graph."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch

from segcentroids.losses.centroid import (
    centroid_enhancement,
    centroid_pulling_loss,
    centroid_semantic_loss,
    feature_centroid_alignment_loss,
)
from segcentroids.nn.centroids import Centroids
from segcentroids.ops.grouping import grouped_class_means, random_class_groups
from tests.conftest import tiny_segmodel
from tests.references import loop_fca_loss, loop_grouped_class_means


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _labels(seed: int = 0, shape=(2, 9, 11), num_classes: int = 5, ignore_frac: float = 0.1) -> torch.Tensor:
    g = _gen(seed)
    labels = torch.randint(0, num_classes, shape, generator=g)
    labels[torch.rand(shape, generator=g) < ignore_frac] = 255
    return labels


# ------------------------------------------------------------------------------------------------ grouping
@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
def test_random_groups_cover_each_class_exactly_once_in_near_equal_parts(groups):
    labels = _labels(1, num_classes=4)
    labels[labels == 3] = 255  # class 3 absent
    group = random_class_groups(labels, groups, num_classes=4, generator=_gen(0))
    assert group.shape == labels.shape
    assert torch.equal(group == -1, labels == 255)  # ignored pixels in no group, every valid pixel in one
    lab, grp = labels.numpy().ravel(), group.numpy().ravel()
    for k in range(4):
        members = grp[lab == k]
        assert ((members >= 0) & (members < groups)).all()
        sizes = np.bincount(members, minlength=groups)
        assert sizes.sum() == (lab == k).sum()
        if sizes.sum():
            assert sizes.max() - sizes.min() <= 1


def test_random_groups_are_random_and_reproducible():
    labels = _labels(2, shape=(2, 16, 16), num_classes=3, ignore_frac=0.0)
    a = random_class_groups(labels, 4, 3, generator=_gen(5))
    b = random_class_groups(labels, 4, 3, generator=_gen(5))
    c = random_class_groups(labels, 4, 3, generator=_gen(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # not a spatial split: each group of class 0 spans both images
    for g in range(4):
        in_group = (a == g) & (labels == 0)
        assert in_group[0].any() and in_group[1].any()


def test_random_groups_ignore_out_of_range_labels():
    labels = torch.tensor([[0, 1, 7, 255]])
    group = random_class_groups(labels, 2, num_classes=2, generator=_gen(0))
    assert group[0, 2] == -1 and group[0, 3] == -1 and (group[0, :2] >= 0).all()
    assert torch.equal(group, random_class_groups(labels.int(), 2, num_classes=2, generator=_gen(0)))


@pytest.mark.parametrize("groups", [1, 3, 4])
def test_grouped_class_means_match_loop_reference(groups):
    labels = _labels(3, num_classes=5)
    labels[labels == 2] = 255
    features = torch.randn(2, 6, 9, 11, generator=_gen(1))
    means, present = grouped_class_means(features, labels, groups, _gen(7), num_classes=5)
    group = random_class_groups(labels, groups, 5, generator=_gen(7))
    assert means.shape == (groups, 5, 6)
    assert present.tolist() == [True, True, False, True, True]
    expected = loop_grouped_class_means(features.double(), labels, group, groups, 5)
    np.testing.assert_allclose(means.double().numpy(), expected.numpy(), atol=1e-5)


def test_grouped_class_means_single_group_is_class_mean_and_infers_num_classes():
    labels = _labels(4, num_classes=3, ignore_frac=0.3)
    features = torch.randn(2, 4, 9, 11, generator=_gen(2))
    means, present = grouped_class_means(features, labels, 1, None)
    feats = features.permute(0, 2, 3, 1).reshape(-1, 4).numpy()
    for k in range(3):
        np.testing.assert_allclose(means[0, k].numpy(), feats[labels.reshape(-1).numpy() == k].mean(0), atol=1e-5)
    assert present.all() and means.shape[1] == 3


def test_grouped_class_means_downsample_labels_nearest():
    labels = _labels(5, shape=(1, 16, 20), num_classes=4)
    features = torch.randn(1, 3, 8, 10, generator=_gen(3))
    means, _ = grouped_class_means(features, labels, 1, None, num_classes=4)
    expected, _ = grouped_class_means(features, labels[:, ::2, ::2], 1, None, num_classes=4)
    torch.testing.assert_close(means, expected)


def test_grouped_class_means_small_class_and_gradient():
    labels = torch.full((1, 4, 4), 0)
    labels[0, 0, 0] = 1  # class 1 has one pixel: groups 1..3 are empty and take the class mean
    features = torch.randn(1, 2, 4, 4, generator=_gen(4), requires_grad=True)
    means, present = grouped_class_means(features, labels, 4, _gen(0), num_classes=3)
    assert present.tolist() == [True, True, False]
    for g in range(4):
        torch.testing.assert_close(means[g, 1], features[0, :, 0, 0])
    assert torch.equal(means[:, 2], torch.zeros(4, 2))
    means.sum().backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


def test_grouped_class_means_all_ignore_is_finite():
    labels = torch.full((1, 4, 4), 255)
    means, present = grouped_class_means(torch.randn(1, 2, 4, 4), labels, 4, _gen(0), num_classes=3)
    assert not present.any() and torch.equal(means, torch.zeros(4, 3, 2))


# ------------------------------------------------------------------------------------------------ centroids
def test_centroids_shape_init_and_global_mean():
    torch.manual_seed(0)
    centroids = Centroids(4, 150, 64)
    assert centroids().shape == (4, 150, 64)
    w = centroids.weight.detach()
    assert w.abs().max() <= 0.04 + 1e-7
    # std of a normal(0, 0.02) cut at +-2 std: 0.02 * sqrt(1 - 2 * 2 * pdf(2) / (2 * cdf(2) - 1))
    pdf2, mass = math.exp(-2.0) / math.sqrt(2 * math.pi), math.erf(2 / math.sqrt(2))
    assert w.std().item() == pytest.approx(0.02 * math.sqrt(1 - 4 * pdf2 / mass), rel=0.02)
    torch.testing.assert_close(centroids.global_centroids(), w.mean(0))
    with pytest.raises(ValueError, match="groups"):
        Centroids(0, 3, 4)


# ------------------------------------------------------------------------------------------------ L_fca (Eq. 2)
def test_fca_hand_computation_orthogonal():
    tau = 0.5
    centroids = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])  # G=1, K=2, positives orthogonal to each other
    region = torch.tensor([[[5.0, 0.0], [0.0, 0.5]]])  # aligned with its own centroid (norms must not matter)
    loss = feature_centroid_alignment_loss(region, centroids, torch.tensor([True, True]), tau)
    expected = math.log(1 + math.exp(-1 / tau))  # -log(e^{1/t} / (e^{1/t} + e^0))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("negatives", ["all", "present"])
def test_fca_matches_loop_reference(negatives):
    g = _gen(11)
    region, centroids = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    present = torch.tensor([True, False, True, True, False])
    region[:, ~present] = 0.0
    loss = feature_centroid_alignment_loss(region, centroids, present, 0.5, negatives)
    assert loss.item() == pytest.approx(loop_fca_loss(region, centroids, present.tolist(), 0.5, negatives), rel=1e-5)


def test_fca_absent_classes_get_no_term_and_errors():
    g = _gen(12)
    region = torch.randn(2, 4, 3, generator=g, requires_grad=True)
    centroids = torch.randn(2, 4, 3, generator=g)
    present = torch.tensor([True, True, False, True])
    loss = feature_centroid_alignment_loss(region, centroids, present)
    loss.backward()
    assert torch.equal(region.grad[:, 2], torch.zeros(2, 3)) and region.grad[:, 0].abs().sum() > 0
    none = feature_centroid_alignment_loss(region, centroids, torch.zeros(4, dtype=torch.bool), negatives="present")
    assert none.item() == 0.0
    with pytest.raises(ValueError, match="negatives"):
        feature_centroid_alignment_loss(region, centroids, present, negatives="some")


# ------------------------------------------------------------------------------------------------ L_cos (Eq. 3)
def test_cos_two_groups_hand_computation():
    centroids = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [2.0, 2.0]]])  # cos 0 and cos 1
    assert centroid_pulling_loss(centroids, _gen(0)).item() == pytest.approx(0.5)
    assert centroid_pulling_loss(centroids[:1], _gen(0)).item() == 0.0


def test_cos_random_halves_of_four_groups():
    centroids = torch.randn(4, 3, 5, generator=_gen(13))
    loss = centroid_pulling_loss(centroids, _gen(21))
    perm = torch.randperm(4, generator=_gen(21)).tolist()
    c = centroids.double().numpy()
    a, b = c[perm[:2]].mean(0), c[perm[2:]].mean(0)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert loss.item() == pytest.approx(float((1 - cos).mean()), rel=1e-5)
    assert centroid_pulling_loss(centroids, _gen(21)).item() == loss.item()  # reproducible from the generator


# ------------------------------------------------------------------------------------------------ enhancement (Eq. 4)
def test_enhancement_straight_through():
    g = _gen(14)
    v = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    r = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    v_prime = centroid_enhancement(v, r)
    torch.testing.assert_close(v_prime, v.detach(), rtol=0, atol=1e-6)
    weight = torch.randn(2, 3, 4, generator=g)
    loss = (v_prime.tanh() * weight).sum()
    (d_vprime,) = torch.autograd.grad(loss, v_prime, retain_graph=True)
    d_v, d_r = torch.autograd.grad(loss, (v, r))
    torch.testing.assert_close(d_v, d_vprime)
    torch.testing.assert_close(d_r, d_vprime)


# ------------------------------------------------------------------------------------------------ L_v
def test_semantic_loss_hand_computation_and_absent_classes():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 0.0, 0.0]]], requires_grad=True)  # G=1, K=3
    present = torch.tensor([True, True, False])
    loss = centroid_semantic_loss(logits, present)
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 2))
    ce1 = -math.log(math.e / (math.e + 2))
    assert loss.item() == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    loss.backward()
    assert torch.equal(logits.grad[0, 2], torch.zeros(3))
    assert centroid_semantic_loss(logits, torch.zeros(3, dtype=torch.bool)).item() == 0.0


# ------------------------------------------------------------------------------------------------ the method
@functools.cache
def _shared_segmodel():
    return tiny_segmodel(seed=0)


def _segmodel():
    return copy.deepcopy(_shared_segmodel())


def _batch(seed: int = 0, num_classes: int = 5):
    g = _gen(seed)
    images = torch.randn(2, 3, 32, 32, generator=g)
    labels = torch.randint(0, num_classes, (2, 32, 32), generator=g)
    labels[0, :10] = 255
    return images, labels


def _mvsc(**kwargs):
    from segcentroids.methods import MVSC

    return MVSC(segmodel=_segmodel(), num_classes=5, dropout=0.0, **kwargs)


def test_mvsc_total_is_eq5_and_step_is_reproducible():
    model = _mvsc()
    images, labels = _batch()
    _, losses = model.training_outputs(images, labels)
    assert set(losses) == {"ce", "feature_alignment", "centroid_pulling", "semantic_projection"}
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    total = model.training_step({"image": images, "mask": labels}, 0)["loss"]
    expected = (losses["ce"] + 0.1 * losses["feature_alignment"] + 1.0 * losses["centroid_pulling"]
                + 0.05 * losses["semantic_projection"])
    torch.testing.assert_close(total, expected)  # same step, same seed -> same random grouping
    other = _mvsc(seed=1)
    other.load_state_dict(model.state_dict())
    assert other.training_outputs(images, labels)[1]["feature_alignment"] != losses["feature_alignment"]


@pytest.mark.parametrize(
    "switches, terms",
    [
        ({"feature_alignment": False}, {"ce", "centroid_pulling", "semantic_projection"}),
        ({"centroid_pulling": False}, {"ce", "feature_alignment", "semantic_projection"}),
        ({"semantic_projection": False}, {"ce", "feature_alignment", "centroid_pulling"}),
        ({"centroid_enhancement": False}, {"ce", "feature_alignment", "centroid_pulling", "semantic_projection"}),
        ({"groups": 1}, {"ce", "feature_alignment", "centroid_pulling", "semantic_projection"}),
    ],
)
def test_mvsc_switches(switches, terms):
    model = _mvsc(**switches)
    _, losses = model.training_outputs(*_batch())
    assert set(losses) == terms
    assert model.centroids.weight.shape == (switches.get("groups", 4), 5, 32)


def test_mvsc_all_off_is_the_baseline():
    from segcentroids.methods import Baseline

    model = _mvsc(feature_alignment=False, centroid_pulling=False, semantic_projection=False,
                  centroid_enhancement=False)
    baseline = Baseline(segmodel=_segmodel(), num_classes=5, dropout=0.0)
    baseline.load_state_dict(model.state_dict())
    images, labels = _batch()
    assert model.centroids is None
    torch.testing.assert_close(model.training_outputs(images, labels)[1], baseline.training_outputs(images, labels)[1])


def test_mvsc_enhancement_sends_lv_gradient_to_the_encoder():
    images, labels = _batch()
    grads = {}
    reference = _mvsc()
    for enhancement in (True, False):
        model = _mvsc(centroid_enhancement=enhancement)
        model.load_state_dict(reference.state_dict())
        _, losses = model.training_outputs(images, labels)
        params = [model.centroids.weight, *model.segmodel.decoder.parameters()]
        grad = torch.autograd.grad(losses["semantic_projection"], params, allow_unused=True)
        grads[enhancement] = (grad[0], sum(float(g.abs().sum()) for g in grad[1:] if g is not None))
    assert grads[True][1] > 0 and grads[False][1] == 0  # R - SG(R) copies the gradient to the features
    torch.testing.assert_close(grads[True][0], grads[False][0])  # d L_v / d V is unchanged (V' = V in value)


def test_mvsc_inference_graph_is_the_baselines():
    from segcentroids.methods import Baseline

    model = _mvsc().eval()
    baseline = Baseline(segmodel=_segmodel(), num_classes=5, dropout=0.0).eval()
    missing = baseline.load_state_dict(model.state_dict(), strict=False)
    assert missing.missing_keys == [] and missing.unexpected_keys == ["centroids.weight"]
    images, _ = _batch()
    logits = model(images)
    torch.testing.assert_close(logits, baseline(images))
    logits.sum().backward()
    assert model.centroids.weight.grad is None


def test_mvsc_autocast_and_degenerate_batches_are_finite():
    model = _mvsc(negatives="present")
    images, labels = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = model.training_outputs(images, labels)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    for degenerate in (torch.full_like(labels, 255), torch.full_like(labels, 3)):
        _, losses = model.training_outputs(images, degenerate)
        assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("key, value", [("groups", 0), ("tau", 0.0), ("negatives", "some"), ("lambda_v", -1.0)])
def test_mvsc_bad_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        _mvsc(**{key: value})


# ------------------------------------------------------------------------------------------------ diagnostics
def test_similarity_maps_and_colormap():
    from segcentroids.callbacks.centroid_heatmaps import centroid_similarity_maps, diverging_colormap

    features = torch.zeros(1, 2, 1, 3)
    features[0, :, 0, 0] = torch.tensor([2.0, 0.0])
    features[0, :, 0, 1] = torch.tensor([0.0, 1.0])
    features[0, :, 0, 2] = torch.tensor([-1.0, 0.0])
    centroids = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # G = 2
    maps = centroid_similarity_maps(features, centroids)
    torch.testing.assert_close(maps[0, 0, 0], torch.tensor([1.0, 0.0, -1.0]))
    torch.testing.assert_close(maps[0, 1, 0], torch.tensor([0.5**0.5, 0.5**0.5, -(0.5**0.5)]))
    rgb = diverging_colormap(np.array([1.0, 0.0, -1.0]))
    assert rgb.tolist() == [[255, 0, 0], [255, 255, 255], [0, 0, 255]]


def test_heatmap_logger_panels():
    from segcentroids.callbacks.centroid_heatmaps import CentroidHeatmapLogger

    model = _mvsc().eval()
    images, labels = _batch()
    labels[1] = 2
    panels = CentroidHeatmapLogger(num_images=2).panels(model, images, labels)
    assert len(panels) == 2 and panels[0].shape == (32, 32 * (2 + 4), 3) and panels[0].dtype == np.uint8
    assert (panels[1][:, 32:64] == 255).all()  # image 1 is all class 2: its mask panel is white


# ------------------------------------------------------------------------------------------------ configs
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "experiments" / "mvsc").glob("*.yaml"))
ABLATIONS = sorted((ROOT / "configs" / "ablations" / "mvsc").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_fast_dev_run(config, tmp_path):
    from segcentroids.cli import main

    encoder = "mit_b0" if "segformer" in config.stem else "resnet18"
    main(["fit", "--config", str(config), "--data", str(ROOT / "configs/data/synthetic_tiny.yaml"),
          "--trainer.fast_dev_run=true", "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
          f"--trainer.default_root_dir={tmp_path}", f"--model.init_args.segmodel.init_args.encoder_name={encoder}",
          "--model.init_args.segmodel.init_args.encoder_weights=null",
          "--model.init_args.segmodel.init_args.decoder_channels=32"])


@pytest.mark.parametrize("table", ABLATIONS, ids=[t.stem for t in ABLATIONS])
def test_ablation_tables_are_mvsc_overrides(table, monkeypatch):
    import inspect

    import yaml

    from segcentroids.ablate import load_ablation
    from segcentroids.methods import MVSC

    monkeypatch.chdir(ROOT)
    ablation = load_ablation(table)  # the format, base files and paper numbers
    assert set(ablation.paper) == {row.name for row in ablation.rows}
    arguments = inspect.signature(MVSC.__init__).parameters
    for row in ablation.rows:
        if row.overrides == ["--model.class_path=segcentroids.methods.Baseline"]:  # Table 1's plain SegFormer
            continue
        kwargs = {}
        for override in row.overrides:
            key, value = override.removeprefix("--model.init_args.").split("=")
            assert key in arguments, override
            kwargs[key] = yaml.safe_load(value)
        model = _mvsc(**kwargs)  # every row builds and trains
        _, losses = model.training_outputs(*_batch())
        assert all(torch.isfinite(v) for v in losses.values())


def test_mvsc_step_generator_follows_seed_and_step(monkeypatch):
    from segcentroids.methods import MVSC

    model = _mvsc()

    def draw(step: int, seed: int = 0) -> torch.Tensor:
        monkeypatch.setattr(MVSC, "global_step", property(lambda self: step))
        model.seed = seed
        return torch.rand(4, generator=model.step_generator(torch.device("cpu")))

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4)) and not torch.equal(draw(3), draw(3, seed=1))
