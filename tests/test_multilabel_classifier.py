"""MLSeg's independent single-task scheme: `MultiLabelClassifier` trained through the CLI, then used frozen as
MLSeg's selector (`selector_ckpt`) for the selection in training and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segcentroids.ablate import load_ablation
from segcentroids.cli import main
from segcentroids.methods import MLSeg, MultiLabelClassifier
from segcentroids.methods.multilabel_classifier import load_selector
from segcentroids.ops.selection import select_top_labels
from tests.conftest import CONFIGS, tiny_overrides, tiny_segmodel

EXPERIMENTS = CONFIGS / "experiments" / "mlseg"
CLASSIFIER_CONFIGS = sorted(EXPERIMENTS.glob("multilabel_*.yaml"))
SELECTOR_CONFIGS = sorted(EXPERIMENTS.glob("*_mlseg_selector-*.yaml"))
SEGMODEL = "--model.init_args.segmodel.init_args"
SMALL_ENCODER = [f"{SEGMODEL}.encoder_name=resnet18", f"{SEGMODEL}.encoder_weights=null",
                 f"{SEGMODEL}.encoder_kwargs={{}}"]
SHORT_FIT = ["--trainer.strategy=auto", "--trainer.max_epochs=1", "--trainer.max_steps=2",
             "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0"]
KAPPA = 3


@pytest.fixture(scope="module")
def selector_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MultiLabelClassifier fit through the CLI on the tiny data (ResNet-18 from scratch, identity arch)."""
    run = tmp_path_factory.mktemp("selector")
    main(["fit", "--config", str(EXPERIMENTS / "multilabel_r101_coco-stuff10k.yaml"), *tiny_overrides(run),
          *SMALL_ENCODER, *SHORT_FIT, "--model.init_args.embed_dim=32", "--model.init_args.num_heads=4"])
    return run


def test_classifier_fit_writes_its_record_and_checkpoint(selector_run: Path) -> None:
    record = json.loads((selector_run / "metrics" / "val.json").read_text())
    assert record["split"] == "val" and 0 <= record["multilabel_mAP"] <= 100 and "mIoU" not in record
    assert (selector_run / "checkpoints" / "last.ckpt").is_file()
    assert list((selector_run / "checkpoints").glob("best-*.ckpt")), "best val/multilabel_mAP checkpoint missing"


def test_classifier_is_trained_with_the_asymmetric_loss_on_the_mask_classes() -> None:
    torch.manual_seed(0)
    model = MultiLabelClassifier(segmodel=tiny_segmodel("fpn", seed=0), num_classes=8, embed_dim=32, num_heads=4)
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 8, (2, 64, 64))
    outputs, losses = model.training_outputs(images, labels)
    assert outputs["multilabel_logits"].shape == (2, 8) and set(losses) == {"multilabel"}
    model.total_loss(losses).backward()
    assert model.multilabel_head.classifier.weight.grad is not None
    assert model(images).shape == (2, 8)


def test_classifier_refuses_pixel_objectives() -> None:
    with pytest.raises(ValueError, match="aux_weight"):
        MultiLabelClassifier(segmodel=tiny_segmodel("fpn"), num_classes=8, aux_weight=0.4)


def mlseg_with_selector(path: Path, num_classes: int = 8) -> MLSeg:
    return MLSeg(segmodel=tiny_segmodel("fpn", seed=0), num_classes=num_classes, kappa=KAPPA, multi_task=False,
                 classifier="linear", selector_ckpt=str(path))


def test_selection_is_the_top_kappa_of_the_frozen_classifier(selector_run: Path) -> None:
    """Independent oracle: the classifier restored by Lightning's own loader, scored on the same images."""
    ckpt = selector_run / "checkpoints" / "last.ckpt"
    model = mlseg_with_selector(ckpt)
    reference = MultiLabelClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 8, (2, 64, 64))
    with torch.no_grad():
        expected = select_top_labels(reference(images), KAPPA)
    model.train()
    outputs, losses = model.training_outputs(images, labels)
    assert torch.equal(outputs["selected"], expected)
    assert set(losses) == {"ce"}  # no multi-label head, no multi-label loss
    model.eval()
    with torch.no_grad():
        _, extras = model.evaluation_outputs(images, labels, "val")
        assert torch.equal(select_top_labels(extras["multilabel_logits"], KAPPA), expected)
        assert torch.equal(model.head_outputs(model.extract_features(images))["selected"], expected)


def test_selector_is_frozen_through_a_training_step(selector_run: Path) -> None:
    model = mlseg_with_selector(selector_run / "checkpoints" / "last.ckpt")
    model.train()
    assert not model.selector.classifier.training  # eval mode whatever mode MLSeg is in
    before = {k: v.clone() for k, v in model.selector.state_dict().items()}
    optimizer = model.configure_optimizers()["optimizer"]
    selector_params = {id(p) for p in model.selector.parameters()}
    assert not any(id(p) in selector_params for group in optimizer.param_groups for p in group["params"])
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 8, (2, 64, 64))
    _, losses = model.training_outputs(images, labels)
    model.total_loss(losses).backward()
    optimizer.step()
    assert all(p.grad is None for p in model.selector.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.selector.state_dict().items())
    # documented: the selector's weights are saved in MLSeg's checkpoints
    assert any(key.startswith("selector.classifier.") for key in model.state_dict())


def test_wrong_selector_checkpoints_are_one_error_naming_the_file(selector_run: Path, tmp_path: Path) -> None:
    ckpt = selector_run / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=rf"{ckpt}.*trained for 8 classes, this model has 5"):
        mlseg_with_selector(ckpt, num_classes=5)
    other = tmp_path / "baseline.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "segcentroids.methods.Baseline",
                                                         "num_classes": 8}}, other)
    with pytest.raises(ValueError, match=rf"{other}: written by segcentroids.methods.Baseline, not a "
                                         r"MultiLabelClassifier"):
        load_selector(other, 8)
    with pytest.raises(ValueError, match="set multi_task=False"):
        MLSeg(segmodel=tiny_segmodel("fpn"), num_classes=8, selector_ckpt=str(ckpt))


@pytest.mark.slow
@pytest.mark.parametrize("experiment", SELECTOR_CONFIGS, ids=lambda p: p.stem)
def test_mlseg_fits_and_tests_with_a_selector_through_the_cli(experiment: Path, selector_run: Path,
                                                              tmp_path: Path) -> None:
    """Each independent-scheme config (Table 3), shrunk: fit with a tiny selector, then test its last checkpoint."""
    config = str(experiment)
    args = [*tiny_overrides(tmp_path), *SMALL_ENCODER, "--model.init_args.num_heads=8",
            "--model.init_args.inference.mode=whole", "--trainer.sync_batchnorm=false", "--trainer.strategy=auto",
            f"--model.init_args.selector_ckpt={selector_run / 'checkpoints' / 'last.ckpt'}"]
    main(["fit", "--config", config, *args, *SHORT_FIT, "--trainer.val_check_interval=2"])
    assert json.loads((tmp_path / "metrics" / "val.json").read_text())["mIoU"] >= 0
    main(["test", "--config", config, *args, "--ckpt_path", "last"])
    (evaluation,) = (tmp_path / "eval").glob("test-last-*")
    assert "mIoU" in json.loads((evaluation / "metrics" / "test.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("config", CLASSIFIER_CONFIGS, ids=lambda p: p.stem)
def test_classifier_configs_fast_dev_run(config: Path, tmp_path: Path) -> None:
    main(["fit", "--config", str(config), *tiny_overrides(tmp_path), *SMALL_ENCODER, "--trainer.strategy=auto",
          "--trainer.fast_dev_run=true"])


def test_the_configs_exist() -> None:
    assert len(CLASSIFIER_CONFIGS) == 7 and len(SELECTOR_CONFIGS) == 2


SELECTOR_ROWS = [(path, row) for path in sorted((CONFIGS / "ablations" / "mlseg").glob("table[23]_*.yaml"))
                 for row in ("Swin-L selector", "Indep. single-task")
                 if row in [r.name for r in load_ablation(path).rows]]


@pytest.mark.slow
@pytest.mark.parametrize(("path", "row"), SELECTOR_ROWS, ids=lambda v: v.stem if isinstance(v, Path) else v)
def test_paper_table_selector_rows_run_with_a_tiny_selector(path: Path, row: str, selector_run: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables 2-3's rows that need a trained selector, through the runner, with the tiny selector in place of the
    runs/mlseg_selectors/ checkpoint the row names (tests/test_paper_tables.py runs their other rows)."""
    import csv

    from segcentroids.ablate import main as ablate
    from tests.test_paper_tables import TINY, small_model

    monkeypatch.chdir(CONFIGS.parent)
    out = tmp_path / "out"
    argv = [str(path), "--in-process", "--out", str(out), "--seeds", "0", "--rows", row, "--", *TINY,
            *small_model(path), f"--model.init_args.selector_ckpt={selector_run / 'checkpoints' / 'last.ckpt'}"]
    assert ablate(argv) == 0, [task.read_text() for task in out.rglob("ablate.json")]
    with (out / "table.csv").open() as stream:
        (line,) = list(csv.DictReader(stream))
    assert line["row"] == row and float(line["val/mIoU"]) >= 0 and 0 <= float(line["val/multilabel_mAP"]) <= 100
