"""MLSeg: asymmetric loss, label selection and re-indexing, xi / psi / temperature options, the method, configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from segcentroids.callbacks.multilabel import FALSE_POSITIVE, TRUE_POSITIVE, top_label_histogram
from segcentroids.inference import InferenceConfig, infer
from segcentroids.losses import AsymmetricLoss
from segcentroids.methods import MLSeg, Segmenter
from segcentroids.models import SegModel
from segcentroids.nn.multilabel import MultiLabelHead, RankTemperature, SelectedLabelClassifier
from segcentroids.ops import (
    labels_to_ranks,
    multi_hot_labels,
    scatter_to_classes,
    select_top_labels,
    suppress_classes,
)
from tests.conftest import tiny_segmodel_args

ROOT = Path(__file__).resolve().parents[1]
IGNORE = 255


# ------------------------------------------------------------------------------------------- asymmetric loss
def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_asl_matches_hand_computation():
    # logits [2, -1, 0.5, -5] with targets [1, 0, 0, 0]; gamma_neg 2, gamma_pos 0, clip 0.05
    # positive: log(sigmoid(2)); negatives: p_m = p - 0.05, p_m^2 * log(1 - p_m); the last p < clip gives 0
    terms = [math.log(_sigmoid(2.0))]
    for logit in (-1.0, 0.5):
        p_m = _sigmoid(logit) - 0.05
        terms.append(p_m**2 * math.log(1 - p_m))
    terms.append(0.0)
    expected = -sum(terms) / 4
    logits = torch.tensor([[2.0, -1.0, 0.5, -5.0]], requires_grad=True)
    loss = AsymmetricLoss(gamma_neg=2, gamma_pos=0, clip=0.05, eps=1e-5)(logits, torch.tensor([[1.0, 0, 0, 0]]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert logits.grad[0, 3] == 0  # a negative below the margin is not pushed further
    assert logits.grad[0, 0] < 0 and logits.grad[0, 1] > 0 and logits.grad[0, 2] > 0


def test_asl_matches_numpy_reference_and_is_finite_when_saturated():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5)) * 3
    targets = (rng.random((2, 5)) > 0.5).astype(np.float64)
    gamma_neg, gamma_pos, clip, eps = 4.0, 1.0, 0.05, 1e-8
    total = 0.0
    for b in range(2):
        for k in range(5):
            p = 1 / (1 + np.exp(-logits[b, k]))
            if targets[b, k]:
                total += (1 - p) ** gamma_pos * np.log(max(p, eps))
            else:
                p_m = max(p - clip, 0.0)
                total += p_m**gamma_neg * np.log(max(1 - p_m, eps))
    loss = AsymmetricLoss(gamma_neg, gamma_pos, clip, eps)(torch.tensor(logits), torch.tensor(targets))
    assert loss.item() == pytest.approx(-total / 10, rel=1e-5)
    saturated = torch.tensor([[40.0, -40.0, 40.0]], requires_grad=True)
    loss = AsymmetricLoss()(saturated, torch.tensor([[1.0, 0.0, 0.0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(saturated.grad).all()


def test_asl_rejects_bad_values():
    with pytest.raises(ValueError, match="gamma_neg"):
        AsymmetricLoss(gamma_neg=-1)
    with pytest.raises(ValueError, match="shape"):
        AsymmetricLoss()(torch.zeros(2, 3), torch.zeros(2, 4))


# ------------------------------------------------------------------------------------------------ selection
SCORES = torch.tensor([
    [0.1, 0.9, 0.3, 0.7, 0.0],
    [5.0, -1.0, 2.0, 3.0, 4.0],
    [-3.0, -2.0, -1.0, 0.5, 0.2],
])
TOP3 = [[1, 3, 2], [0, 4, 3], [3, 4, 2]]


@pytest.mark.parametrize("batch", [1, 3])
def test_select_top_labels_on_crafted_scores(batch):
    scores = SCORES[:batch].clone().requires_grad_(True)
    selected = select_top_labels(scores, 3)
    assert selected.tolist() == TOP3[:batch]
    assert not selected.requires_grad
    assert select_top_labels(scores, 99).shape == (batch, 5)  # k clamped to K
    with pytest.raises(ValueError, match="k must be"):
        select_top_labels(scores, 0)


@pytest.mark.parametrize("batch", [1, 3])
def test_labels_to_ranks_on_crafted_labels(batch):
    labels = torch.tensor([
        [[1, 3, 2], [0, IGNORE, 4]],
        [[0, 4, 3], [1, 2, IGNORE]],
        [[2, 2, 3], [4, 0, 1]],
    ])[:batch]
    expected = torch.tensor([
        [[0, 1, 2], [IGNORE, IGNORE, IGNORE]],  # selected [1, 3, 2]
        [[0, 1, 2], [IGNORE, IGNORE, IGNORE]],  # selected [0, 4, 3]
        [[2, 2, 0], [1, IGNORE, IGNORE]],  # selected [3, 4, 2]
    ])[:batch]
    selected = torch.tensor(TOP3[:batch])
    assert torch.equal(labels_to_ranks(labels, selected, 5, IGNORE), expected)


def test_labels_to_ranks_matches_loop_reference_with_many_classes():
    torch.manual_seed(0)
    num_classes, k = 250, 7
    labels = torch.randint(0, num_classes, (3, 6, 5))
    labels[0, 0] = IGNORE
    selected = torch.stack([torch.randperm(num_classes)[:k] for _ in range(3)])
    labels[1, 2] = selected[1, :5]
    ranks = labels_to_ranks(labels, selected, num_classes, IGNORE)
    for b in range(3):
        order = selected[b].tolist()
        for y, x in np.ndindex(6, 5):
            value = int(labels[b, y, x])
            want = order.index(value) if value != IGNORE and value in order else IGNORE
            assert ranks[b, y, x] == want


def test_multi_hot_labels_ignores_ignore_pixels():
    labels = torch.tensor([[[0, 2], [IGNORE, 2]], [[IGNORE, IGNORE], [IGNORE, IGNORE]]])
    assert multi_hot_labels(labels, 4, IGNORE).tolist() == [[1, 0, 1, 0], [0, 0, 0, 0]]


def test_scatter_to_classes_keeps_unselected_below_after_resizing():
    torch.manual_seed(0)
    rank_logits = (torch.randn(3, 2, 4, 4) * 50).requires_grad_(True)
    selected = torch.tensor(TOP3)[:, :2]
    full = scatter_to_classes(rank_logits, selected, 5)
    for b in range(3):
        assert torch.equal(full[b, selected[b]], rank_logits[b])
    up = F.interpolate(full, size=(13, 13), mode="bilinear", align_corners=False)
    picked = up.argmax(dim=1)
    for b in range(3):
        assert set(picked[b].unique().tolist()) <= set(selected[b].tolist())
    full.sum().backward()
    assert torch.equal(rank_logits.grad, torch.ones_like(rank_logits))


def test_suppress_classes_removes_only_masked_channels():
    logits = torch.tensor([[3.0, 1.0, 2.0]])[:, :, None, None]
    out = suppress_classes(logits, torch.tensor([[False, True, True]]))
    assert out[0, :, 0, 0].argmax() == 2 and out[0, 0, 0, 0] < 1.0 and out[0, 1, 0, 0] == 1.0


# ---------------------------------------------------------------------------------------- xi, psi, temperature
@pytest.mark.parametrize("head", ["tran_enc", "tran_dec", "gap_linear"])
@pytest.mark.parametrize("classifier", ["mask_transformer", "linear"])
@pytest.mark.parametrize("temperature", ["layernorm", "shared", "per_rank", "shared_scale"])
def test_head_and_classifier_options_forward_backward(head, classifier, temperature):
    torch.manual_seed(0)
    features = torch.randn(3, 12, 5, 6, requires_grad=True)
    xi = MultiLabelHead(12, 7, 8, head, pool_size=2, num_heads=2, class_tokens=classifier == "mask_transformer")
    psi = SelectedLabelClassifier(12, 7, 3, classifier, temperature, embed_dim=8, num_heads=2)
    scores, tokens = xi(features)
    assert scores.shape == (3, 7)
    assert tokens.shape == (3, 7, 8) if tokens is not None else (head, classifier) == ("gap_linear", "linear")
    selected = select_top_labels(scores, 3)
    rank_logits = psi(features, selected, tokens)
    assert rank_logits.shape == (3, 3, 5, 6)
    (rank_logits.square().mean() + scores.square().mean()).backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    for name, param in [*xi.named_parameters(), *psi.named_parameters()]:
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_rank_temperatures_match_their_equations():
    scores = torch.tensor([[1.0, -2.0, 0.5]])[:, :, None, None]
    per_rank = RankTemperature(3, "per_rank", temperature_init=0.5)
    with torch.no_grad():
        per_rank.inverse_temperature.copy_(torch.tensor([4.0, 2.0, 1.0]))  # tau = 1/4, 1/2, 1
    assert per_rank(scores)[0, :, 0, 0].tolist() == [4.0, -4.0, 0.5]
    assert RankTemperature(3, "shared_scale", temperature_init=0.5)(scores)[0, :, 0, 0].tolist() == [2.0, -4.0, 1.0]
    values = [1.0, -2.0, 0.5]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3 + 1e-5)
    standardised = [(v - mean) / std for v in values]
    layernorm = RankTemperature(3, "layernorm")
    assert layernorm(scores)[0, :, 0, 0].tolist() == pytest.approx(standardised, rel=1e-5)
    with torch.no_grad():  # RA: a weight (1 / tau_k) and a bias per rank
        layernorm.norm.weight.copy_(torch.tensor([3.0, 2.0, 0.5]))
        layernorm.norm.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    assert layernorm(scores)[0, :, 0, 0].tolist() == pytest.approx(
        [z * w + b for z, w, b in zip(standardised, [3.0, 2.0, 0.5], [0.1, 0.2, 0.3])], rel=1e-5)
    # RA off (Table 1 "+ MT + LS"): the same standardisation, one weight and one bias for every rank
    shared = RankTemperature(3, "shared")
    assert [tuple(p.shape) for p in shared.parameters()] == [(1,), (1,)]
    assert shared(scores)[0, :, 0, 0].tolist() == pytest.approx(standardised, rel=1e-5)
    with torch.no_grad():
        shared.norm.weight.fill_(3.0)
        shared.norm.bias.fill_(-0.5)
    assert shared(scores)[0, :, 0, 0].tolist() == pytest.approx([3.0 * z - 0.5 for z in standardised], rel=1e-5)
    with pytest.raises(ValueError, match="rank_temperature"):
        RankTemperature(3, "bogus")


def test_linear_classifier_is_a_dot_product_with_selected_weights():
    psi = SelectedLabelClassifier(4, 6, 2, "linear", "shared_scale", dropout=0.0, temperature_init=1.0)
    features = torch.randn(2, 4, 3, 3)
    selected = torch.tensor([[5, 1], [0, 2]])
    out = psi(features, selected)
    for b in range(2):
        for rank, cls in enumerate(selected[b]):
            want = (psi.weight[cls][:, None, None] * features[b]).sum(0) + psi.bias[cls]
            assert torch.allclose(out[b, rank], want, atol=1e-5)


# --------------------------------------------------------------------------------------------------- method
@pytest.fixture(scope="module")
def segmodel() -> SegModel:
    # not tests.conftest.tiny_segmodel: MLSeg's paper model is Segmenter, a plain ViT with no decoder
    return SegModel(arch="identity", encoder_name="tu-vit_tiny_patch16_224", encoder_weights=None,
                    encoder_kwargs={"depth": 4})


def _mlseg(segmodel: SegModel, **kwargs) -> MLSeg:
    torch.manual_seed(0)
    return MLSeg(segmodel=segmodel, num_classes=6, num_heads=3, **{"kappa": 3, **kwargs})


def test_unselected_classes_are_never_predicted(segmodel):
    model = _mlseg(segmodel).eval()
    with torch.no_grad():
        model.selected_classifier.temperature.norm.weight.mul_(1e3)  # large logits must not leak either
        images = torch.randn(3, 3, 64, 64)
        logits = F.interpolate(model(images), size=(64, 64), mode="bilinear", align_corners=False)
        selected = select_top_labels(model.multilabel_scores(images), 3)
    preds = logits.argmax(dim=1)
    for b in range(3):
        assert set(preds[b].unique().tolist()) <= set(selected[b].tolist())


def test_forward_is_per_image(segmodel):
    model = _mlseg(segmodel).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        batched = model(images)
        single = torch.cat([model(images[i : i + 1]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-4)


def test_training_losses_and_targets(segmodel):
    model = _mlseg(segmodel)
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 6, (2, 32, 32))
    labels[1] = IGNORE  # an all-ignore crop
    outputs, losses = model.training_outputs(images, labels)
    assert set(losses) == {"ce", "multilabel"} and model.loss_weights["multilabel"] == 10.0
    assert outputs["logits"].shape == (2, 6, 2, 2)
    total = model.total_loss(losses)
    total.backward()
    assert torch.isfinite(total)
    # ce is the cross-entropy over the ranks of the selected classes
    selected = select_top_labels(outputs["multilabel_logits"], 3)
    rank_logits = torch.stack([outputs["logits"][b, selected[b]] for b in range(2)])
    ranks = labels_to_ranks(labels, selected, 6, IGNORE)
    up = F.interpolate(rank_logits, size=(32, 32), mode="bilinear", align_corners=False)
    assert losses["ce"].item() == pytest.approx(F.cross_entropy(up, ranks, ignore_index=IGNORE).item(), rel=1e-4)


def test_table1_switches(segmodel):
    baseline = _mlseg(segmodel, multi_task=False, label_selection=False)
    assert baseline.multilabel_head is None
    _, losses = baseline.training_outputs(torch.randn(1, 3, 32, 32), torch.randint(0, 6, (1, 32, 32)))
    assert set(losses) == {"ce"}
    mt_only = _mlseg(segmodel, label_selection=False)
    assert mt_only.selected_classifier.num_ranks == 6
    assert _mlseg(segmodel, kappa=50).kappa == 6  # clamped to K
    with pytest.raises(ValueError, match="multi_task"):
        _mlseg(segmodel, multi_task=False)
    with pytest.raises(ValueError, match="rank_temperature"):
        _mlseg(segmodel, rank_temperature="nope")


@pytest.mark.parametrize("label_selection", [True, False])
def test_oracle_restricts_predictions_to_ground_truth(segmodel, label_selection):
    model = _mlseg(segmodel, label_selection=label_selection, oracle_train=True).eval()
    labels = torch.full((2, 32, 32), 4)
    labels[0, :16] = 1
    labels[1, :, :8] = IGNORE
    targets = multi_hot_labels(labels, 6, IGNORE)
    with torch.no_grad():
        features = model.segmodel(torch.randn(2, 3, 32, 32))["decoder"]
        rank_logits, selected, _ = model.select_and_classify(features, targets)
        logits = model._class_logits(rank_logits, selected)
    assert set(logits[0].argmax(0).unique().tolist()) <= {1, 4}
    assert set(logits[1].argmax(0).unique().tolist()) <= {4}
    if label_selection:  # ground-truth classes are ranked first
        assert set(selected[0, :2].tolist()) == {1, 4} and selected[1, 0] == 4
    model.train()
    _, losses = model.training_outputs(torch.randn(2, 3, 32, 32), labels)
    assert torch.isfinite(losses["ce"])


def test_oracle_eval_follows_the_batch_through_chunked_whole_image_inference(segmodel):
    """A batch of 4 evaluated 1 image at a time (window_batch_size=1) keeps each image's own ground-truth classes,
    as one forward of each image alone does."""
    model = _mlseg(segmodel, oracle_eval=True, kappa=6, label_selection=False).eval()
    model.inference.window_batch_size = 1
    images = torch.randn(4, 3, 32, 32)
    labels = torch.stack([torch.full((32, 32), c) for c in (0, 2, 2, 5)])
    with torch.no_grad():
        preds, _ = model.evaluation_outputs(images, labels, "val")
    for b, cls in enumerate((0, 2, 2, 5)):
        assert set(preds[b].unique().tolist()) == {cls}


def test_infer_passes_the_source_image_of_every_input():
    """Under slide windows, several scales and flips, `with_image_ids` gives each input row its image's index."""
    seen: list[Tensor] = []

    def logits_fn(inputs: Tensor, image_ids: Tensor) -> Tensor:
        assert image_ids.shape == (inputs.shape[0],) and image_ids.dtype == torch.int64
        seen.append(image_ids)
        one_hot = F.one_hot(image_ids, 3).float() * 10  # class = source image
        return one_hot[:, :, None, None].expand(-1, -1, *inputs.shape[-2:])

    images = torch.randn(3, 3, 40, 40)
    for config in (InferenceConfig(window_batch_size=2),
                   InferenceConfig(mode="slide", crop_size=(24, 24), stride=(16, 16), window_batch_size=5),
                   InferenceConfig(mode="slide", crop_size=(24, 24), stride=(16, 16), scales=[0.75, 1.0], flip=True,
                                   window_batch_size=4),
                   InferenceConfig(scales=[0.5, 1.25], flip=True, window_batch_size=4)):
        seen.clear()
        logits = infer(logits_fn, images, (40, 40), config, with_image_ids=True)
        assert (logits.argmax(dim=1) == torch.arange(3)[:, None, None]).all(), config
        assert len(seen) > 1 and torch.cat(seen).bincount().tolist() == [len(torch.cat(seen)) // 3] * 3


@pytest.mark.parametrize("protocol", ["slide", "slide_ms_flip", "whole_ms_flip"])
@pytest.mark.parametrize("label_selection", [True, False])
def test_oracle_eval_works_under_every_inference_mode(segmodel, protocol, label_selection):
    """Slide windows and scaled / flipped views of several images share forwards; each keeps its own image's
    ground-truth classes: the batch gives what each image evaluated alone gives (an independent oracle), and
    only the image's classes are predicted."""
    model = _mlseg(segmodel, oracle_eval=True, kappa=4, label_selection=label_selection).eval()
    slide = {"mode": "slide", "crop_size": (32, 32), "stride": (16, 16)}
    model.inference = InferenceConfig(**{
        "slide": {**slide, "window_batch_size": 3},
        "slide_ms_flip": {**slide, "scales": [0.75, 1.0], "flip": True, "window_batch_size": 5},
        "whole_ms_flip": {"scales": [0.75, 1.25], "flip": True, "window_batch_size": 3},
    }[protocol])
    torch.manual_seed(1)
    images = torch.randn(3, 3, 48, 48)
    labels = torch.full((3, 48, 48), 0)
    labels[0, :24], labels[0, 24:] = 1, 3
    labels[1] = 5
    labels[2, :, :16], labels[2, :, 16:] = 2, 4
    labels[2, :4] = IGNORE
    classes = [{1, 3}, {5}, {2, 4}]
    with torch.no_grad():
        preds, extras = model.evaluation_outputs(images, labels, "val")
        alone = torch.cat([model.evaluation_outputs(images[b : b + 1], labels[b : b + 1], "val")[0]
                           for b in range(3)])
    assert torch.equal(preds, alone)
    for b in range(3):
        assert set(preds[b].unique().tolist()) <= classes[b]
    assert extras["multilabel_logits"].shape == (3, 6)


def _average_precision(scores: list[float], positives: list[bool]) -> float:
    """AP of one class: mean precision at the rank of each positive (scores sorted down; no ties)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits, precisions = 0, []
    for rank, i in enumerate(order, start=1):
        if positives[i]:
            hits += 1
            precisions.append(hits / rank)
    return sum(precisions) / len(precisions)


def test_validation_reports_map_and_recall_at_kappa(segmodel, tmp_path):
    import lightning as L

    model = _mlseg(segmodel)
    torch.manual_seed(1)
    batches = []
    for _ in range(2):
        labels = torch.randint(0, 3, (2, 32, 32))  # classes 0-2 everywhere, class 4 in one image, 3 and 5 absent
        labels[0, :4] = 4
        labels[1, :, :3] = IGNORE
        batches.append({"image": torch.randn(2, 3, 32, 32), "mask": labels, "name": ["a", "b"]})
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    metrics = trainer.validate(model, torch.utils.data.DataLoader(batches, batch_size=None), verbose=False)[0]
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model.multilabel_scores(b["image"]) for b in batches])
    targets = torch.cat([multi_hot_labels(b["mask"], 6, IGNORE) for b in batches])
    labels = torch.cat([b["mask"] for b in batches])
    hits = total = kept = valid = 0
    for i in range(4):
        top = set(torch.topk(scores[i], 3).indices.tolist())
        present = set(targets[i].nonzero().flatten().tolist())
        hits, total = hits + len(top & present), total + len(present)
        pixels = labels[i][labels[i] != IGNORE].tolist()
        kept, valid = kept + sum(p in top for p in pixels), valid + len(pixels)
    aps = [_average_precision(scores[:, c].tolist(), targets[:, c].bool().tolist()) for c in (0, 1, 2, 4)]
    assert metrics["val/recall_at_kappa"] == pytest.approx(100 * hits / total, rel=1e-4)
    assert metrics["val/pixel_recall_at_kappa"] == pytest.approx(100 * kept / valid, rel=1e-4)
    assert metrics["val/multilabel_mAP"] == pytest.approx(100 * sum(aps) / 4, rel=1e-4)


@pytest.mark.parametrize("head", ["tran_enc", "gap_linear"])
def test_multilabel_head_reads_the_backbone_last_stage(head):
    """DeepLabV3 + MLSeg as the authors' code: xi reads the encoder's deepest stage, psi the ASPP output."""
    from tests.conftest import tiny_segmodel

    segmodel = tiny_segmodel("deeplabv3", seed=0)
    model = MLSeg(segmodel=segmodel, num_classes=6, kappa=3, classifier="linear", multilabel_head=head, num_heads=2,
                  multilabel_input="encoder_last").eval()
    first = model.multilabel_head.fc if head == "gap_linear" else model.multilabel_head.proj
    assert first.in_features == segmodel.encoder_channels[-1] != segmodel.out_channels
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = segmodel(images)
        outputs = model.head_outputs(features)
        assert torch.equal(outputs["multilabel_logits"], model.multilabel_head(features["encoder"][-1])[0])
        assert torch.equal(model.multilabel_scores(images), outputs["multilabel_logits"])
        assert torch.equal(model(images), outputs["logits"])
        rank_logits, selected, _ = model.select_and_classify(features["decoder"],
                                                             multilabel_features=features["encoder"][-1])
    assert torch.equal(selected, outputs["selected"]) and torch.equal(rank_logits, outputs["rank_logits"])
    with pytest.raises(ValueError, match="multilabel_input"):
        model.classify(features["decoder"])
    with pytest.raises(ValueError, match="multilabel_input"):
        MLSeg(segmodel=segmodel, num_classes=6, multilabel_input="aspp")
    # default: xi reads the decoder output, as psi does
    assert MLSeg(segmodel=segmodel, num_classes=6, classifier="linear", num_heads=2).multilabel_head.proj \
        .in_features == segmodel.out_channels


def test_vit_configs_use_the_authors_normalisation():
    """Segmenter and MLSeg ViT configs normalise with mean = std = 0.5 (the authors' and the augreg ViTs'): the data
    blocks leave mean / std at None and the CLI fills them from the encoder's timm config."""
    import yaml

    from segcentroids.models.pretrained import encoder_normalization
    from tests.conftest import segmodel_args

    configs = [c for c in sorted((ROOT / "configs" / "experiments" / "mlseg").glob("*.yaml"))
               if segmodel_args(c)["encoder_name"].startswith("tu-vit")]
    assert len(configs) >= 8
    for config in configs:
        data = yaml.safe_load(config.read_text())["data"]
        data = yaml.safe_load((config.parent / data).read_text()) if isinstance(data, str) else data
        for key in ("mean", "std"):
            assert data["init_args"].get(key) in (None, [0.5, 0.5, 0.5]), (config.name, key)
        assert encoder_normalization(segmodel_args(config)["encoder_name"]) == ((0.5,) * 3, (0.5,) * 3), config.name


def test_parameter_groups(segmodel):
    model = _mlseg(segmodel, rank_temperature="per_rank")
    model.optim.weight_decay = 1e-6
    decay = {}
    no_decay = model._no_decay_names()
    for name, param in model.named_parameters():
        decay[name] = model.param_group_mults(name, param, name in no_decay)[1]
    assert decay["multilabel_head.block.attn.qkv.weight"] == 100.0
    assert decay["multilabel_head.classifier.weight"] == 100.0
    assert decay["selected_classifier.temperature.inverse_temperature"] == 0.0
    assert decay["selected_classifier.mask_transformer.blocks.0.attn.qkv.weight"] == 1.0


def test_segmenter_baseline(segmodel):
    model = Segmenter(segmodel=segmodel, num_classes=6, num_heads=3)
    outputs, losses = model.training_outputs(torch.randn(2, 3, 32, 32), torch.randint(0, 6, (2, 32, 32)))
    assert outputs["logits"].shape == (2, 6, 2, 2) and set(losses) == {"ce"}
    losses["ce"].backward()
    assert model.classifier.class_embed.grad is not None


def test_top_label_histogram_marks_true_and_false_positives():
    probabilities = torch.tensor([[0.9, 0.1, 0.5, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    image = top_label_histogram(probabilities, targets, top=3, bar_width=4, height=10)
    assert image.shape == (14, 12, 3)
    assert tuple(image[9, 0]) == TRUE_POSITIVE and tuple(image[9, 4]) == FALSE_POSITIVE  # ranks 0 (0.9), 1 (0.5)
    assert tuple(image[0, 0]) != TRUE_POSITIVE and tuple(image[1, 0]) == TRUE_POSITIVE  # bar height 9 of 10
    assert tuple(image[4, 4]) != FALSE_POSITIVE and tuple(image[5, 4]) == FALSE_POSITIVE  # 5 of 10
    assert tuple(image[9, 8]) == FALSE_POSITIVE  # rank 2: class 1 (0.1), absent


# -------------------------------------------------------------------------------------------------- configs
# the independent-scheme configs need a trained selector: tests/test_multilabel_classifier.py runs them with a tiny one
CONFIGS = sorted(c for c in (ROOT / "configs" / "experiments" / "mlseg").glob("*.yaml") if "_selector-" not in c.stem)
TINY_SEGMODELS = {  # whole SegModel replaced: a `...encoder_weights=null` override reaches SegModel as "None"
    "segmenter": {"arch": "identity", "encoder_name": "tu-vit_tiny_patch16_224", "encoder_weights": None,
                  "encoder_kwargs": {"depth": 4}},
    "deeplabv3": tiny_segmodel_args("deeplabv3"),
}


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_fast_dev_run(config, tmp_path):
    from segcentroids.cli import main

    family = "segmenter" if config.stem.startswith("segmenter") else "deeplabv3"
    segmodel = json.dumps({"class_path": "segcentroids.models.SegModel", "init_args": TINY_SEGMODELS[family]})
    main(["fit", "--config", str(config), "--data", str(ROOT / "configs/data/synthetic_tiny.yaml"),
          "--trainer.fast_dev_run=true", "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
          "--trainer.sync_batchnorm=false", f"--trainer.default_root_dir={tmp_path}",
          # the paper configs' crop and scale would otherwise carry over to the synthetic DataModule
          "--data.init_args.crop_size=null", "--data.init_args.scale=null", "--data.init_args.test_scale=null",
          f"--model.init_args.segmodel={segmodel}", "--model.init_args.inference.mode=whole",
          f"--model.init_args.num_heads={3 if family == 'segmenter' else 2}",
          *(["--model.init_args.kappa=4"] if "mlseg" in config.stem else [])])


ABLATIONS = sorted((ROOT / "configs" / "ablations" / "mlseg").glob("*.yaml"))


@pytest.mark.parametrize("table", ABLATIONS, ids=[t.stem for t in ABLATIONS])
def test_ablation_tables_are_overrides(table):
    import importlib
    import inspect

    import yaml

    from segcentroids.methods import Baseline

    spec = yaml.safe_load(table.read_text())
    assert all((ROOT / base).is_file() for base in spec["base"])
    names = [row["name"] for row in spec["rows"]]
    assert spec["baseline"] in names and set(spec.get("paper") or {}) <= set(names)
    accepted = set(inspect.signature(MLSeg.__init__).parameters) | set(inspect.signature(Baseline.__init__).parameters)
    for row in spec["rows"]:
        for override in row["overrides"]:
            key, value = override.split("=", 1)
            if key == "--model.class_path":
                module, name = value.rsplit(".", 1)
                assert issubclass(getattr(importlib.import_module(module), name), Baseline)
            else:
                assert key.startswith("--model.init_args.") and key.split(".")[2] in accepted, override


@pytest.mark.parametrize("label_selection", [True, False])
def test_whole_image_predictions_in_rank_space_equal_the_argmax_of_the_class_logits(segmodel, label_selection):
    """With one whole-image forward the kappa rank maps are resized and mapped to classes; the oracle is the argmax
    of the K-class logits of the same forward at the label size (what every other protocol averages)."""
    model = _mlseg(segmodel, kappa=3, label_selection=label_selection, multi_task=True).eval()
    images, labels = torch.randn(2, 3, 32, 32), torch.zeros(2, 40, 36, dtype=torch.long)
    with torch.no_grad():
        preds, _ = model.evaluation_outputs(images, labels, "val")
        expected = model.infer(images, (40, 36)).argmax(1)
    assert preds.shape == (2, 40, 36) and torch.equal(preds, expected)
    with torch.no_grad():  # predict takes the same path, per image size
        assert torch.equal(model.predict_labels(images, (40, 36)), expected)
