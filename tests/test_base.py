"""Baseline: losses as a dict, parameter groups, the poly schedule, plug-in objectives."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from segcentroids.losses import ExtraLoss, LossContext
from segcentroids.methods import Baseline, MLSeg, OptimConfig, ParamGroupRule, SpecializeFuse
from segcentroids.methods.base import poly_lr_factor
from tests.conftest import tiny_segmodel


def batch(num_classes: int = 4, size: int = 32) -> dict:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, num_classes, (2, size, size), generator=gen)
    labels[:, :4] = 255
    return {"image": torch.randn(2, 3, size, size, generator=gen), "mask": labels, "name": ["a", "b"]}


def test_poly_factor_by_hand() -> None:
    config = OptimConfig(lr=0.01, min_lr=1e-4, poly_power=0.9)
    assert poly_lr_factor(0, 100, config) == pytest.approx(1.0)
    assert poly_lr_factor(100, 100, config) == pytest.approx(0.01)
    expected = ((0.01 - 1e-4) * 0.5**0.9 + 1e-4) / 0.01
    assert poly_lr_factor(50, 100, config) == pytest.approx(expected)
    warm = OptimConfig(lr=0.01, min_lr=0.0, warmup_steps=10, warmup_ratio=0.1)
    # mmseg linear warm-up: factor = poly * (1 - (1 - t/W) * (1 - ratio))
    assert poly_lr_factor(0, 100, warm) == pytest.approx(0.1)
    assert poly_lr_factor(5, 100, warm) == pytest.approx(0.95**0.9 * (1 - 0.5 * 0.9))


def test_seg_loss_matches_cross_entropy_on_upsampled_logits() -> None:
    model = Baseline(tiny_segmodel(), num_classes=4)
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    labels = batch()["mask"]
    expected = F.cross_entropy(F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False), labels,
                               ignore_index=255)
    assert torch.allclose(model.seg_loss(logits, labels), expected, atol=1e-6)
    all_ignore = model.seg_loss(logits, torch.full_like(labels, 255))
    all_ignore.backward()
    assert all_ignore.item() == 0.0 and logits.grad is not None


class AddedTerm(ExtraLoss):
    def __init__(self, weight: float = 0.5) -> None:
        super().__init__()
        self.weights = {"extra": weight}

    def build(self, context: LossContext) -> None:
        self.scale = torch.nn.Parameter(torch.tensor(2.0))
        self.bound_channels = context.feature_channels

    def forward(self, outputs: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        return {"extra": self.scale * outputs["logits"].float().pow(2).mean()}


def test_training_step_weights_and_sums_named_losses() -> None:
    torch.manual_seed(0)
    extra = AddedTerm(0.5)
    model = Baseline(tiny_segmodel(), num_classes=4, aux_weight=0.4, extra_losses=[extra])
    assert extra.bound_channels == model.segmodel.out_channels
    model.loss_weights["ce"] = 2.0
    model.eval()  # no dropout: two forwards give the same numbers
    logged: dict[str, Tensor] = {}
    model.log = lambda name, value, **kwargs: logged.__setitem__(name, value)  # type: ignore[method-assign]
    data = batch()
    result = model.training_step(data, 0)
    outputs, losses = model.training_outputs(data["image"], data["mask"])
    extra_term = extra(outputs, data["mask"])["extra"]
    expected = 2.0 * losses["ce"] + 0.4 * losses["aux"] + 0.5 * extra_term
    assert torch.allclose(result["loss"], expected, atol=1e-5)
    assert set(logged) == {"train/loss/ce", "train/loss/aux", "train/loss/extra", "train/loss"}
    assert not result["outputs"]["decoder"].requires_grad
    result["loss"].backward()
    assert extra.scale.grad is not None and all(p.grad is not None for p in model.aux_head.parameters())  # type: ignore[union-attr]


def test_forward_is_logits_at_feature_stride() -> None:
    model = Baseline(tiny_segmodel("fcn"), num_classes=5).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 5, 64 // model.segmodel.output_stride, 64 // model.segmodel.output_stride)


def groups_by_name(model: Baseline) -> dict[str, tuple[float, float]]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return {ids[id(p)]: (g["lr"], g["weight_decay"]) for g in model.parameter_groups() for p in g["params"]}


def test_parameter_groups_rules() -> None:
    optim = OptimConfig(lr=0.1, weight_decay=0.01, encoder_lr_mult=0.1, lr_mults={"classifier": 10.0},
                        decay_mults={"segmodel.decoder": 0.5})
    model = Baseline(tiny_segmodel(), num_classes=3, optim=optim)
    model.param_group_rules.append(ParamGroupRule("segmodel.decoder", lr_mult=2.0))
    groups = groups_by_name(model)
    assert groups["segmodel.encoder.conv1.weight"] == pytest.approx((0.01, 0.01))
    assert groups["segmodel.encoder.bn1.weight"] == pytest.approx((0.01, 0.0))  # norm: no decay
    assert groups["classifier.1.bias"] == pytest.approx((1.0, 0.0))  # bias: no decay
    assert groups["classifier.1.weight"] == pytest.approx((1.0, 0.01))
    decoder_convs = [n for n in groups if n.startswith("segmodel.decoder") and n.endswith("weight")
                     and groups[n][1] > 0]
    assert decoder_convs and all(groups[n] == pytest.approx((0.2, 0.005)) for n in decoder_convs)
    assert sum(len(g["params"]) for g in model.parameter_groups()) == len(list(model.parameters()))


def test_optimizers_and_schedule() -> None:
    for name, cls in (("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)):
        model = Baseline(tiny_segmodel(), num_classes=3, optim=OptimConfig(name=name, lr=0.1, min_lr=0.0))
        config = model.configure_optimizers()
        assert isinstance(config["optimizer"], cls)
        assert config["lr_scheduler"]["interval"] == "step"
    with pytest.raises(ValueError, match="optim.name"):
        Baseline(tiny_segmodel(), num_classes=3, optim=OptimConfig(name="lamb")).configure_optimizers()  # type: ignore[arg-type]


def test_bad_constructor_values_are_named() -> None:
    with pytest.raises(ValueError, match="class_names"):
        Baseline(tiny_segmodel(), num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="num_classes"):
        Baseline(tiny_segmodel(), num_classes=0)


def test_eval_step_resizes_to_label_size_and_updates_metric() -> None:
    model = Baseline(tiny_segmodel(), num_classes=4).eval()
    data = batch()
    data["mask"] = data["mask"][:, :30, :20]  # labels at another size than the network input
    with torch.no_grad():
        out = model.validation_step(data, 0)
    assert out["preds"].shape == (2, 30, 20)
    scores = model.val_metrics.compute()
    assert not math.isnan(float(scores["aAcc"]))


@pytest.mark.parametrize("method", [Baseline, MLSeg, SpecializeFuse])
def test_ocr_soft_regions_are_supervised(method: type) -> None:
    """Every method supervises OCR's soft object regions (Specialize-and-Fuse skipped them before)."""
    segmodel = tiny_segmodel("ocr", num_classes=4)
    extra = {SpecializeFuse: {"strides": [16, 8], "num_levels": 2, "semantic_channels": 16}, MLSeg: {"kappa": 3}}
    model = method(segmodel=segmodel, num_classes=4, **extra.get(method, {})).eval()  # eval: no dropout
    data = batch()
    _, losses = model.training_outputs(data["image"], data["mask"])
    regions = segmodel(data["image"])["soft_regions"]
    assert "soft_regions" in losses and model.loss_weights["soft_regions"] == 0.4
    upsampled = F.interpolate(regions, size=(32, 32), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(upsampled, data["mask"], ignore_index=255)
    assert torch.allclose(losses["soft_regions"], expected, atol=1e-5)


# -------------------------------------------------------------------------------- the documented example method
def example_method_source() -> str:
    """The Python block under "A new method in one file" in docs/architecture.md."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs/architecture.md").read_text()
    section = text.split("### A new method in one file", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_documented_example_method_is_one_short_file_and_trains(tmp_path) -> None:
    import lightning as L
    import numpy as np

    from segcentroids.data import SyntheticDataModule

    source = example_method_source()
    assert len(source.strip().splitlines()) <= 30
    namespace: dict = {}
    exec(compile(source, "docs/architecture.md", "exec"), namespace)  # noqa: S102 - our own documentation
    model = namespace["CenterLoss"](segmodel=tiny_segmodel(), num_classes=4, center_weight=0.5, dropout=0.0)
    with torch.no_grad():
        model.centers.normal_()
    data = batch()
    outputs, losses = model.training_outputs(data["image"], data["mask"])
    # oracle: the centre term by a loop over the feature grid's pixels, labels taken at each cell's nearest pixel
    features, centers = outputs["decoder"].detach().numpy(), model.centers.detach().numpy()
    labels = data["mask"].numpy()
    _, _, h, w = features.shape
    total, count = 0.0, 0
    for b in range(features.shape[0]):
        for i in range(h):
            for j in range(w):
                label = labels[b, i * labels.shape[1] // h, j * labels.shape[2] // w]
                if label != 255:
                    total += float(np.sum((features[b, :, i, j] - centers[label]) ** 2))
                    count += 1
    assert losses["center"].item() == pytest.approx(total / count, rel=1e-4)
    assert set(losses) == {"ce", "center"}
    torch.testing.assert_close(model.total_loss(losses), losses["ce"] + 0.5 * losses["center"])
    model.total_loss(losses).backward()
    assert model.centers.grad.abs().sum() > 0
    # one training step and a validation through the base's template
    trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    fresh = namespace["CenterLoss"](segmodel=tiny_segmodel(), num_classes=8)
    trainer.fit(fresh, SyntheticDataModule(image_size=(32, 32), batch_size=2, num_workers=0))
    assert "train/loss/center" in trainer.logged_metrics and "val/mIoU" in trainer.logged_metrics
