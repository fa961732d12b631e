"""Every paper table of `configs/ablations/<paper>/` runs through the ablation runner (fit, then evaluate, then the
table) at tiny settings: the tiny synthetic data, a ResNet-18 encoder without weights, one training step.

The default suite runs each table's baseline row and its last row; `-m tables` (a separate CI step) runs every row.
Each row keeps its architecture and method options; only the encoder is swapped for a small one of its family.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from segcentroids.ablate import load_ablation, main
from tests.conftest import CONFIGS, REPO, TINY_RUN, segmodel_args

PAPER_TABLES = sorted(p for p in (CONFIGS / "ablations").rglob("*.yaml") if p.parent != CONFIGS / "ablations")
TINY = [
    *TINY_RUN,  # the runner gives each row its own run folder
    # a paper config's slide windows, GPU strategy and pretrained encoder give way to the tiny CPU run
    "--model.init_args.inference.mode=whole", "--trainer.strategy=auto", "--trainer.sync_batchnorm=false",
    "--trainer.max_steps=1", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
    "--model.init_args.segmodel.init_args.encoder_weights=null",
]
SEGMODEL = "--model.init_args.segmodel.init_args"


def small_model(path: Path) -> list[str]:
    """A small encoder of the base config's family: a 2-block ViT-Tiny for ViTs (MLSeg's 3 heads), MiT-B0 for
    SegFormer's MiT, HRNet-W18-small for HRNets, ResNet-18 otherwise."""
    encoder = segmodel_args(REPO / load_ablation(path).base[0])["encoder_name"]
    if encoder.startswith("tu-vit"):
        return [f"{SEGMODEL}.encoder_name=tu-vit_tiny_patch16_224", f"{SEGMODEL}.encoder_kwargs={{depth: 2}}",
                "--model.init_args.num_heads=3"]
    if encoder.startswith("tu-hrnet"):
        return [f"{SEGMODEL}.encoder_name=tu-hrnet_w18_small"]  # the base's decoder (HRNetV2 concat or conv)
    if encoder.startswith("mit_"):
        return [f"{SEGMODEL}.encoder_name=mit_b0", f"{SEGMODEL}.decoder_channels=16"]
    return [f"{SEGMODEL}.encoder_name=resnet18", f"{SEGMODEL}.decoder_channels=16"]


def table_id(path: Path) -> str:
    return str(path.relative_to(CONFIGS / "ablations").with_suffix(""))


def run_table(path: Path, out: Path, rows: list[str] | None) -> None:
    """Runs the table (or the named rows) in this process and checks the table the runner wrote."""
    ablation = load_ablation(path)
    # one seed per row whatever the table asks (the CamVid-sized tables run three)
    argv = [str(path), "--in-process", "--out", str(out), "--seeds", "0", *(["--rows", *rows] if rows else []),
            "--", *TINY,
            *small_model(path)]
    assert main(argv) == 0, [(task.name, task.read_text()) for task in out.rglob("ablate.json")]
    selected = rows or [row.name for row in ablation.rows]
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
        assert float(line["params (M)"]) > 0 and float(line["GFLOPs"]) > 0 and float(line["step time x"]) > 0
    for metric in ablation.metrics:
        assert any(line[metric] != "" for line in table.values()), (metric, "no row reports it")
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


@pytest.mark.slow
@pytest.mark.tables
@pytest.mark.parametrize("path", PAPER_TABLES, ids=table_id)
def test_paper_table_every_row_runs_through_the_runner(path: Path, tmp_path: Path, in_repo: None) -> None:
    run_table(path, tmp_path / "out", rows=None)
