"""Every paper table of `configs/ablations/<paper>/` runs through the ablation runner (fit, then evaluate, then the
table) at tiny settings: the tiny synthetic data, a small encoder of the row's family without weights, one step.

The default suite runs each table's baseline row and its last row; `-m tables` (a separate CI step) runs every row.
Each row runs exactly as its table writes it apart from the size-only overrides of `SIZE_ONLY_OVERRIDES` (and the
small encoder of `small_model`): its method, options and test-time protocol (whole / slide, scales, flip) are its own.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from segcentroids.ablate import load_ablation, main
from segcentroids.ablate.spec import Row
from segcentroids.cli import main as cli_main
from tests.conftest import CONFIGS, REPO, TINY_DATA, segmodel_args

PAPER_TABLES = sorted(p for p in (CONFIGS / "ablations").rglob("*.yaml") if p.parent != CONFIGS / "ablations")
SEGMODEL = "--model.init_args.segmodel.init_args"
SIZE_ONLY_OVERRIDES: dict[str, list[str]] = {
    # the tiny synthetic scenes (8 classes, 64 x 64, batch 2); a config's crop and scales reset to them
    "data": [f"--data={TINY_DATA}", "--data.init_args.crop_size=null", "--data.init_args.scale=null",
             "--data.init_args.test_scale=null"],
    # slide windows sized for the 64 x 64 images (a whole-image protocol ignores them; the mode, scales and flip
    # stay the row's)
    "crop": ["--model.init_args.inference.crop_size=[32,32]", "--model.init_args.inference.stride=[24,24]"],
    # one training step, one validation batch
    "steps": ["--trainer.max_steps=1", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0"],
    # one CPU process: a GPU config's DDP and synchronised BatchNorm become their one-device equivalents
    "hardware": ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
                 "--trainer.sync_batchnorm=false", "--trainer.enable_progress_bar=false",
                 "--trainer.enable_model_summary=false"],
    # no pretrained weights (no download); the encoder itself is shrunk by `small_model`
    "encoder": [f"{SEGMODEL}.encoder_weights=null"],
}
"""The only arguments the tiny runs add to a row (besides the runner's run folder and `small_model`'s encoder): they
change sizes, never what the row computes. A row may not override any key named here (`test_rows_keep_...`)."""
TINY = [arg for group in SIZE_ONLY_OVERRIDES.values() for arg in group]
VIT_DEPTH = 2


def small_model(path: Path, row: Row | None = None) -> list[str]:
    """A small encoder of the family of the row's encoder (the row's `encoder_name` override, else the base
    config's; encoder size and depth only): a 2-block ViT-Tiny for ViTs (the base's other encoder arguments kept),
    MiT-B0 for SegFormer's MiT, HRNet-W18-small for HRNets, ResNeSt-14 for ResNeSts, ResNet-18 otherwise; 16 decoder
    channels where the base sets them."""
    base = segmodel_args(REPO / load_ablation(path).base[0])
    encoder = base["encoder_name"]
    for arg in row.overrides if row is not None else []:
        if _key(arg) == f"{SEGMODEL}.encoder_name":
            encoder = arg.split("=", 1)[1]
    if encoder.startswith("tu-vit"):
        kwargs = {**(base.get("encoder_kwargs") or {}), "depth": VIT_DEPTH}
        return [f"{SEGMODEL}.encoder_name=tu-vit_tiny_patch16_224",
                f"{SEGMODEL}.encoder_kwargs={{{', '.join(f'{k}: {v}' for k, v in kwargs.items())}}}"]
    if encoder.startswith("tu-hrnet"):
        return [f"{SEGMODEL}.encoder_name=tu-hrnet_w18_small"]  # the base's decoder (HRNetV2 concat or conv)
    if encoder.startswith("mit_"):
        return [f"{SEGMODEL}.encoder_name=mit_b0", f"{SEGMODEL}.decoder_channels=16"]
    if encoder.startswith("tu-resnest"):
        return [f"{SEGMODEL}.encoder_name=tu-resnest14d", f"{SEGMODEL}.decoder_channels=16"]
    return [f"{SEGMODEL}.encoder_name=resnet18", f"{SEGMODEL}.decoder_channels=16"]


def _key(arg: str) -> str:
    return arg.split("=", 1)[0]


@pytest.mark.parametrize("path", PAPER_TABLES, ids=lambda p: str(p.relative_to(CONFIGS / "ablations")))
def test_the_tiny_run_changes_only_sizes(path: Path) -> None:
    """The tiny run overrides no method, method option or test-time protocol of any row: only the data, the slide
    window size, the steps, the device and the encoder's weights, size and depth."""
    size_only = ("--data", "--trainer.", "--model.init_args.inference.crop_size", "--model.init_args.inference.stride",
                 f"{SEGMODEL}.encoder_weights", f"{SEGMODEL}.encoder_name", f"{SEGMODEL}.encoder_kwargs",
                 f"{SEGMODEL}.decoder_channels")
    for arg in [*TINY, *tiny_classes(path), *small_model(path)]:
        assert _key(arg).startswith(size_only), arg
    trainer = {_key(arg) for arg in TINY if arg.startswith("--trainer.")}
    assert trainer == {"--trainer.max_steps", "--trainer.limit_val_batches", "--trainer.num_sanity_val_steps",
                       "--trainer.accelerator", "--trainer.devices", "--trainer.strategy", "--trainer.sync_batchnorm",
                       "--trainer.enable_progress_bar", "--trainer.enable_model_summary"}
    kwargs = next((arg for arg in small_model(path) if ".encoder_kwargs=" in arg), None)
    if kwargs is not None:  # the base's encoder arguments kept, only the depth added
        base = segmodel_args(REPO / load_ablation(path).base[0]).get("encoder_kwargs") or {}
        assert all(f"{k}: {v}" in kwargs for k, v in base.items() if k != "depth") and "depth: " in kwargs


def table_id(path: Path) -> str:
    return str(path.relative_to(CONFIGS / "ablations").with_suffix(""))


def tiny_classes(path: Path) -> list[str]:
    """LIP's flip test swaps classes 14..19: a table (or its base) with it runs on tiny scenes of 20 classes."""
    ablation = load_ablation(path)
    texts = [path.read_text(), *((REPO / base).read_text() for base in ablation.base)]
    return ["--data.init_args.num_classes=20"] if any("lip_flip" in text for text in texts) else []


def run_table(path: Path, out: Path, rows: list[str] | None) -> None:
    """Runs the table (or the named rows) in this process and checks the table the runner wrote; rows whose
    encoders are of different families (a table of backbones) run in one runner call per family."""
    ablation = load_ablation(path)
    selected = rows or [row.name for row in ablation.rows]
    families: dict[tuple[str, ...], list[str]] = {}
    for name in selected:
        families.setdefault(tuple(small_model(path, ablation.row(name))), []).append(name)
    for index, (model, names) in enumerate(families.items()):
        run_family(path, out if len(families) == 1 else out / f"family{index}", names, list(model))


def run_family(path: Path, out: Path, selected: list[str], model: list[str]) -> None:
    """Runs the named rows with the small encoder `model` and checks the table the runner wrote."""
    ablation = load_ablation(path)
    # one seed per row whatever the table asks (the CamVid-sized tables run three)
    argv = [str(path), "--in-process", "--out", str(out), "--seeds", "0", "--rows", *selected,
            "--", *TINY, *tiny_classes(path), *model]
    assert main(argv) == 0, [(task.name, task.read_text()) for task in out.rglob("ablate.json")]
    with (out / "table.csv").open() as stream:
        table = {line["row"]: line for line in csv.DictReader(stream)}
    assert list(table) == [row.name for row in ablation.rows if row.name in selected]
    for name, line in table.items():
        assert line["runs"] == "1/1", name
        assert line[ablation.metrics[0]] != "", (name, "primary metric missing")
        for metric in ablation.metrics:
            if line[metric] != "":  # a method-specific metric (e.g. MLSeg's multi-label mAP) is blank elsewhere
                value = float(line[metric])
                assert math.isfinite(value) and 0 <= value <= 100, (name, metric, value)
            paper = ablation.paper.get(name, {}).get(metric)
            assert (line[f"{metric} paper"] == "") if paper is None else float(line[f"{metric} paper"]) == paper
        assert float(line["params (M)"]) > 0 and float(line["GFLOPs"]) > 0
        if (ablation.row(name).baseline or ablation.baseline) in table:  # its baseline ran in this call
            assert float(line["step time x"]) > 0
    for metric in ablation.metrics:
        assert any(line[metric] != "" for line in table.values()), (metric, "no row reports it")
    if ablation.baseline in table:
        assert float(table[ablation.baseline][f"{ablation.metrics[0]} delta"]) == 0.0
    assert (out / "table.md").read_text().count("\n| ") >= len(table)


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the tables name their base configs from the repository root


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER_TABLES, ids=table_id)
def test_paper_table_runs_through_the_runner(path: Path, tmp_path: Path, in_repo: None) -> None:
    """The baseline row and the last row (and the last row's own baseline, if it names one), fit and evaluated by
    the runner, collected into the table."""
    ablation = load_ablation(path)
    last = ablation.rows[-1]
    rows = [ablation.baseline, *([last.baseline] if last.baseline else []), last.name]
    run_table(path, tmp_path / "out", rows=list(dict.fromkeys(rows)))


SELECTOR = "--model.init_args.selector_ckpt="


def selector_checkpoints(path: Path) -> list[str]:
    """The selector checkpoints (MLSeg's independent scheme) the rows of a table name, relative to the repository."""
    rows = load_ablation(path).rows
    return sorted({arg.removeprefix(SELECTOR) for row in rows for arg in row.overrides if arg.startswith(SELECTOR)})


def fit_tiny_selectors(checkpoints: list[str], workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Works in `workdir` (the repository's configs linked in) and fits a tiny `MultiLabelClassifier` on the tiny
    data at each checkpoint path a row names, so that those rows run as written (the paths are the table's)."""
    workdir.mkdir()
    (workdir / "configs").symlink_to(CONFIGS)
    monkeypatch.chdir(workdir)
    for checkpoint in checkpoints:
        run = Path(checkpoint).parents[1]
        cli_main(["fit", "--config", str(CONFIGS / "experiments/mlseg/multilabel_r101_coco-stuff10k.yaml"),
                  *SIZE_ONLY_OVERRIDES["data"], *SIZE_ONLY_OVERRIDES["steps"], *SIZE_ONLY_OVERRIDES["hardware"],
                  f"--trainer.default_root_dir={run}", f"{SEGMODEL}.encoder_name=resnet18",
                  f"{SEGMODEL}.encoder_weights=null", f"{SEGMODEL}.encoder_kwargs={{}}",
                  "--model.init_args.embed_dim=32", "--model.init_args.num_heads=4"])
        assert Path(checkpoint).is_file(), checkpoint


@pytest.mark.slow
@pytest.mark.tables
@pytest.mark.parametrize("path", PAPER_TABLES, ids=table_id)
def test_paper_table_every_row_runs_through_the_runner(path: Path, tmp_path: Path, in_repo: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every row as written; a row that names a selector checkpoint (Tables 2-3 of MLSeg) finds a tiny one fit there
    first (`fit_tiny_selectors`)."""
    checkpoints = selector_checkpoints(path)
    if checkpoints:
        fit_tiny_selectors(checkpoints, tmp_path / "work", monkeypatch)
    run_table(path, tmp_path / "out", rows=None)
