"""The ablation runner: file format, table maths, local runs (resume, failing row), dry-run, SLURM script."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from segcentroids.ablate import (
    AblationFormatError,
    build_tasks,
    check_rows,
    collect_run,
    evaluation_folder,
    format_markdown,
    load_ablation,
    main,
    slugify,
    summarize,
)
from segcentroids.ablate import estimate as estimate_module
from segcentroids.ablate.estimate import Measurement, describe, duration, estimate
from segcentroids.ablate.figures import mean_curve
from segcentroids.callbacks.run_recorder import append_curves, inference_cost, read_curves
from tests.conftest import CONFIGS, REPO, TINY_DATA

ABLATION_FILES = sorted((CONFIGS / "ablations").rglob("*.yaml"))
TINY = [
    f"--data={TINY_DATA}", "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.max_steps=2",
    "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false", "--model.init_args.segmodel.init_args.decoder_channels=16",
    "--trainer.log_every_n_steps=1",
]


def write_table(folder: Path, **changes: object) -> Path:
    table = {
        "title": "tiny table",
        "base": [str(CONFIGS / "quickstart.yaml")],
        "overrides": ["--model.init_args.dropout=0.0"],
        "baseline": "base",
        "seeds": [0],
        "metrics": ["test/mIoU", "test/mAcc"],
        "rows": [
            {"name": "base", "overrides": []},
            {"name": "broken", "overrides": ["--model.init_args.no_such_argument=1"]},
            {"name": "lower lr", "overrides": ["--model.init_args.optim.lr=0.0005"]},
        ],
        "paper": {"base": 50.0, "lower lr": {"test/mIoU": 49.0, "test/mAcc": 60.0}},
    }
    table.update(changes)
    path = folder / "table.yaml"
    path.write_text(yaml.safe_dump(table, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ table maths
def test_summarize_against_a_hand_computation() -> None:
    results = {
        "base": [{"m": 40.0, "params": 12_000_000, "gflops": 1.5, "step_time_s": 1.0},
                 {"m": 42.0, "params": 12_000_000, "gflops": 1.5, "step_time_s": 3.0}],
        "a": [{"m": 43.0, "params_inference": 2_500_000, "params": 3_000_000, "gflops": 2.0, "step_time_s": 3.0},
              {"m": 47.0, "step_time_s": 5.0}],
        "single": [{"m": 30.0}],
    }
    paper = {"base": {"m": 40.0}, "a": {"m": 44.5}}
    table = {line["row"]: line for line in summarize(results, ["base", "a", "single", "missing"], "base", ["m"],
                                                      paper, seeds_per_row=2)}
    # base: mean (40 + 42) / 2 = 41, sample std sqrt((1 + 1) / 1); a: mean 45, std sqrt((4 + 4) / 1)
    assert table["base"]["m"] == pytest.approx(41.0) and table["base"]["m std"] == pytest.approx(math.sqrt(2))
    assert table["a"]["m"] == pytest.approx(45.0) and table["a"]["m std"] == pytest.approx(math.sqrt(8))
    assert table["base"]["m delta"] == pytest.approx(0.0) and table["a"]["m delta"] == pytest.approx(4.0)
    assert table["a"]["m paper"] == 44.5 and table["a"]["m paper delta"] == pytest.approx(4.5)
    assert table["single"]["m std"] is None and table["single"]["m delta"] == pytest.approx(-11.0)
    assert table["single"]["m paper"] is None and table["single"]["m paper delta"] is None
    assert table["missing"]["m"] is None and table["missing"]["m delta"] is None and table["missing"]["runs"] == "0/2"
    # step time: (3 + 5) / 2 over (1 + 3) / 2; params: the inference count when known, in millions
    assert table["a"]["step time x"] == pytest.approx(2.0) and table["base"]["step time x"] == pytest.approx(1.0)
    assert table["a"]["params (M)"] == pytest.approx(2.5) and table["base"]["params (M)"] == pytest.approx(12.0)
    assert table["a"]["GFLOPs"] == 2.0 and table["single"]["step time x"] is None

    markdown = format_markdown("T", list(table.values()), ["m"], "base")
    assert "| a | 2/2 | 45.00 ± 2.83 | +4.00 | 44.50 (+4.50) | 2.50 | 2.000 | 2.00 |" in markdown
    assert "| base (baseline) | 2/2 | 41.00 ± 1.41 | +0.00 | 40.00 (+0.00) |" in markdown


def test_rows_measured_against_their_own_baseline(tmp_path: Path) -> None:
    results = {"fpn": [{"m": 50.0, "step_time_s": 1.0}], "d16": [{"m": 40.0, "step_time_s": 2.0}],
               "memory": [{"m": 43.0, "step_time_s": 3.0}], "other": [{"m": 52.0, "step_time_s": 1.5}]}
    paper = {"d16": {"m": 41.0}, "memory": {"m": 42.5}}
    lines = summarize(results, ["fpn", "d16", "memory", "other"], "fpn", ["m"], paper, 1, {"memory": "d16"})
    table = {line["row"]: line for line in lines}
    assert table["memory"]["m delta"] == pytest.approx(3.0)  # 43 - 40, not 43 - 50
    assert table["memory"]["m paper delta"] == pytest.approx(1.5)  # 42.5 - 41
    assert table["memory"]["step time x"] == pytest.approx(1.5)  # 3 / 2
    assert table["other"]["m delta"] == pytest.approx(2.0) and table["d16"]["m delta"] == pytest.approx(-10.0)
    markdown = format_markdown("T", lines, ["m"], "fpn")
    assert "| memory (Δ against `d16`) | 1/1 | 43.00 | +3.00 |" in markdown
    assert "| d16 (baseline) | 1/1 | 40.00 | -10.00 |" in markdown

    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump({"title": "T", "base": ["configs/quickstart.yaml"], "rows": [
        {"name": "a", "overrides": []}, {"name": "b", "overrides": [], "baseline": "c"}]}))
    with pytest.raises(AblationFormatError, match=r"rows\[1\] \('b'\) 'baseline' 'c' is not a row name"):
        load_ablation(path, check_files=False)

def test_inference_cost_counts_flops_and_only_the_parameters_inference_uses() -> None:
    class WithTrainingHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.training_only = nn.Linear(5, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    module = WithTrainingHead().train()
    cost = inference_cost(module, torch.randn(1, 3, 8, 8))
    assert cost["params"] == 3 * 4 + 4 + 5 * 5 + 5 and cost["params_inference"] == 3 * 4 + 4
    assert cost["gflops"] == pytest.approx(2 * 3 * 4 * 8 * 8 / 1e9)  # one multiply-add per weight and pixel
    assert module.training and module.conv.weight.grad is None


def test_inference_cost_counts_fused_attention() -> None:
    """torch's FlopCounterMode alone counts the fused CPU attention kernels as 0 FLOPs."""

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = (self.scale * x).flatten(2).transpose(1, 2)  # [1, N, d]
            return torch.nn.functional.scaled_dot_product_attention(tokens, tokens, tokens)

    n, d = 64, 16
    cost = inference_cost(Attention(), torch.randn(1, d, 8, 8))
    # q k^T and P v: two [N, d] x [d, N]-sized matmuls, one multiply-add (2 FLOPs) each
    assert cost["gflops"] == pytest.approx(2 * 2 * n * n * d / 1e9)


# --------------------------------------------------------------------------------------------------- format
def test_slugs_are_folder_names() -> None:
    assert slugify("+ MT + LS") == "mt-ls" and slugify("tau=0.1") == "tau-0.1" and slugify("w/o L_v") == "w-o-l-v"


@pytest.mark.parametrize(("change", "message"), [
    ({"colour": 1}, "unknown key(s) ['colour']"),
    ({"baseline": "nope"}, "'baseline' 'nope' is not a row name"),
    ({"overrides": ["model.init_args.x=1"]}, "'overrides': 'model.init_args.x=1' is not a command-line argument"),
    ({"rows": [{"name": "a", "overrides": []}, {"name": "a", "overrides": []}]}, "have the same name 'a'"),
    ({"paper": {"nope": 1.0}}, "paper: 'nope' is not a row name"),
    ({"paper": {"base": {"val/mIoU": 1.0}}}, "metric 'val/mIoU' is not in 'metrics'"),
    ({"base": ["configs/nowhere.yaml"]}, "base[0]: config file 'configs/nowhere.yaml' not found"),
    ({"metrics": ["mIoU"]}, "metric 'mIoU' must be 'val/<name>' or 'test/<name>'"),
    ({"evaluate": "predict"}, "'evaluate' must be 'test' or 'validate'"),
    ({"seeds": ["0"]}, "'seeds' must be a non-empty list of integers"),
])
def test_format_errors_name_the_file_and_the_key(tmp_path: Path, change: dict, message: str) -> None:
    path = write_table(tmp_path, **change)
    with pytest.raises(AblationFormatError, match="table.yaml") as error:
        load_ablation(path)
    assert message in str(error.value)


def test_defaults_and_evaluate_follow_the_metrics(tmp_path: Path) -> None:
    ablation = load_ablation(write_table(tmp_path, metrics=["val/mIoU"], paper={"base": 1.0}))
    assert ablation.evaluate == "validate" and ablation.paper == {"base": {"val/mIoU": 1.0}}
    assert load_ablation(write_table(tmp_path)).evaluate == "test"


@pytest.mark.parametrize("path", ABLATION_FILES, ids=lambda p: str(p.relative_to(CONFIGS / "ablations")))
def test_every_ablation_file_loads_and_dry_runs(path: Path, capsys: pytest.CaptureFixture,
                                                tmp_path: Path) -> None:
    ablation = load_ablation(path)
    assert main([str(path), "--dry-run", "--launcher", "slurm", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    runs = len(ablation.rows) * len(ablation.seeds)
    assert printed.count("segcentroids fit --config") == runs
    assert printed.count(f"segcentroids {ablation.evaluate} --config") == runs
    assert f"#SBATCH --array={','.join(map(str, range(runs)))}" in printed
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_every_ablation_row_parses_on_tiny_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every row of every paper table is a valid `segcentroids fit` command (keys, types, class paths)."""
    monkeypatch.chdir(REPO)
    errors = {}
    for path in ABLATION_FILES:
        ablation = load_ablation(path)
        for row, message in check_rows(ablation, build_tasks(ablation, tmp_path), [f"--data={TINY_DATA}"]).items():
            errors[f"{path.name}: {row}"] = message
    assert not errors, errors


def test_check_reports_rows_that_do_not_parse(tmp_path: Path) -> None:
    ablation = load_ablation(write_table(tmp_path))
    errors = check_rows(ablation, build_tasks(ablation, tmp_path), [])
    assert list(errors) == ["broken"] and "no_such_argument" in errors["broken"]


def test_collect_reads_the_run_files(tmp_path: Path) -> None:
    ablation = load_ablation(write_table(tmp_path, metrics=["val/mIoU", "val/multilabel_mAP"], paper={}))
    task = build_tasks(ablation, tmp_path / "out", rows=["base"])[0]
    (task.run_dir / "metrics").mkdir(parents=True)
    (task.run_dir / "metrics" / "val.json").write_text(json.dumps({"mIoU": 41.5, "mAcc": 50.0}))
    (task.run_dir / "metrics" / "val_all.json").write_text(json.dumps({"val/multilabel_mAP": 62.5}))
    (task.run_dir / "metrics" / "cost.json").write_text(json.dumps({"params": 10, "gflops": 1.5, "step_time_s": 0.2}))
    assert collect_run(ablation, task) is None  # not finished: no ablate.json saying done
    (task.run_dir / "ablate.json").write_text(json.dumps({"status": "done"}))
    assert collect_run(ablation, task) == {"val/mIoU": 41.5, "val/multilabel_mAP": 62.5, "params": 10,
                                           "params_inference": None, "gflops": 1.5, "step_time_s": 0.2}


# ---------------------------------------------------------------------------------------------------- running
def test_dry_run_prints_commands_and_the_sbatch_script(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_table(tmp_path, seeds=[0, 1])
    out = tmp_path / "out"
    assert main([str(path), "--dry-run", "--launcher", "slurm", "--out", str(out), "--rows", "base", "lower lr",
                 "--sbatch", "partition=gpu", "--trainer.max_steps=2"]) == 0
    printed = capsys.readouterr().out
    fits = [line for line in printed.splitlines() if line.startswith("segcentroids fit ")]
    tests = [line for line in printed.splitlines() if line.startswith("segcentroids test ")]
    assert len(fits) == 4 and len(tests) == 4
    assert f"--trainer.default_root_dir={out}/lower-lr/seed1" in fits[3] and "--seed_everything=1" in fits[3]
    assert "--model.init_args.optim.lr=0.0005 --trainer.max_steps=2" in fits[3]
    assert tests[0].endswith("--ckpt_path=last") and fits[0].endswith("--ckpt_path=last")
    assert "#SBATCH --array=0,1,2,3" in printed and "#SBATCH --partition=gpu" in printed
    srun = next(line for line in printed.splitlines() if line.startswith("srun "))
    assert "--task \"$SLURM_ARRAY_TASK_ID\" -- --trainer.max_steps=2" in srun and "'lower lr'" in srun
    assert not out.exists()


def test_estimate_arithmetic() -> None:
    m = Measurement(setup_s=4.0, start_s=6.0, step_s=0.5, steps=100, validations=4, val_batches=8, batch_s=0.25,
                    eval_batches=10)
    # 100 x 0.5 + 4 x 8 x 0.25 + 10 x 0.25 + 2 x (4 + 6) = 50 + 8 + 2.5 + 20
    assert estimate(m) == {"train": 50.0, "validation": 8.0, "evaluation": 2.5, "setup": 20.0, "total": 80.5}
    assert describe(m).endswith("= 1 min 20 s") and "100 steps x 0.50 s" in describe(m)
    assert duration(42.4) == "42 s" and duration(3725) == "1 h 02 min"


def test_dry_run_estimate_prints_each_row_and_the_total(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The measured step is faked: the printed numbers are the arithmetic, per row and over rows x seeds."""
    steps = {"base": 0.5, "lower lr": 1.0}

    def fake_measure(ablation: object, task: object, extra: list[str], start_s: float) -> Measurement:
        if task.row.name == "broken":
            raise RuntimeError("segcentroids: error: no_such_argument")
        return Measurement(4.0, start_s, steps[task.row.name], 100, 4, 8, 0.25, 10)

    monkeypatch.setattr(estimate_module, "measure_row", fake_measure)
    monkeypatch.setattr(estimate_module, "start_seconds", lambda: 6.0)
    out = tmp_path / "out"
    assert main([str(write_table(tmp_path, seeds=[0, 1])), "--dry-run", "--estimate", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split("# time estimate")[1]
    # base: 80.5 s a run (test_estimate_arithmetic), lower lr 130.5 s; two seeds each: 2 x 211 s = 7 min 02 s
    assert "# base: 2 run(s) of 100 steps x 0.50 s" in printed and "= 1 min 20 s" in printed
    assert "# lower lr: 2 run(s) of 100 steps x 1.00 s" in printed and "= 2 min 10 s" in printed
    assert "# broken: not measured (segcentroids: error: no_such_argument)" in printed
    assert "# total: 7 min 02 s for 6 run(s) to do (1 row(s) not measured: broken)" in printed
    assert not out.exists()


@pytest.fixture(scope="module")
def ablated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny table run in two goes: first the baseline row alone, then all rows (resume)."""
    folder = tmp_path_factory.mktemp("ablate")
    path, out = write_table(folder), folder / "out"
    first = main([str(path), "--out", str(out), "--in-process", "--rows", "base", *TINY])
    after_first = {slug: (out / slug).exists() for slug in ("base", "broken", "lower-lr")}
    base_json = evaluation_folder(out / "base" / "seed0", "test") / "metrics" / "test.json"
    stamp = base_json.stat().st_mtime_ns
    second = main([str(path), "--out", str(out), "--in-process", *TINY])
    return {"out": out, "first": first, "after_first": after_first, "second": second,
            "base_rerun": base_json.stat().st_mtime_ns != stamp}


def test_runner_runs_rows_and_resumes(ablated: dict) -> None:
    out = ablated["out"]
    assert ablated["first"] == 0 and ablated["after_first"] == {"base": True, "broken": False, "lower-lr": False}
    assert not ablated["base_rerun"], "the finished baseline row was run again"
    for slug in ("base", "lower-lr"):
        run = out / slug / "seed0"
        assert json.loads((run / "ablate.json").read_text())["status"] == "done"
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
        cost = json.loads((run / "metrics" / "cost.json").read_text())
        assert cost["params"] > 0 and cost["gflops"] > 0 and cost["step_time_s"] > 0 and cost["crop"] == [64, 64]
        record = evaluation_folder(run, "test") / "metrics"
        assert record.parent.parent == run / "eval"
        logged = json.loads((record / "test_all.json").read_text())
        assert logged["test/mIoU"] == pytest.approx(json.loads((record / "test.json").read_text())["mIoU"], abs=1e-3)


def test_runs_record_their_training_curves(ablated: dict) -> None:
    curves = read_curves(ablated["out"] / "base" / "seed0")
    assert set(curves["train/loss"]) == {1, 2} and set(curves["val/mIoU"]) == {2}
    assert {"lr/encoder", "lr/decoder", "lr/head"} <= set(curves)
    assert not (evaluation_folder(ablated["out"] / "base" / "seed0", "test") / "metrics" / "curves.csv").exists()


def test_curves_of_a_resumed_fit_keep_the_last_value_of_a_step(tmp_path: Path) -> None:
    append_curves(tmp_path, 10, {"train/loss": 2.0, "lr/head": 0.1})
    append_curves(tmp_path, 20, {"train/loss": 1.5})
    append_curves(tmp_path, 20, {"train/loss": 1.4})  # the resumed fit logs step 20 again
    (tmp_path / "metrics").mkdir()
    (tmp_path / "curves.csv").rename(tmp_path / "metrics" / "curves.csv")
    assert read_curves(tmp_path) == {"train/loss": {10: 2.0, 20: 1.4}, "lr/head": {10: 0.1}}
    assert read_curves(tmp_path / "nowhere") == {}
    # a row's line: the mean over the seeds that logged each step
    assert mean_curve([{10: 2.0, 20: 1.0}, {10: 4.0}]) == ([10, 20], [3.0, 1.0])


def test_a_failing_row_is_reported_and_the_others_still_run(ablated: dict) -> None:
    out = ablated["out"]
    assert ablated["second"] == 1
    status = json.loads((out / "broken" / "seed0" / "ablate.json").read_text())
    assert status["status"] == "failed" and "fit" in status["error"] and "no_such_argument" in status["error"]
    assert json.loads((out / "lower-lr" / "seed0" / "ablate.json").read_text())["status"] == "done"


def test_table_holds_the_runs_metrics(ablated: dict) -> None:
    out = ablated["out"]
    scores = {slug: json.loads((evaluation_folder(out / slug / "seed0", "test") / "metrics" / "test.json").read_text())
              for slug in ("base", "lower-lr")}
    with (out / "table.csv").open() as stream:
        lines = {line["row"]: line for line in csv.DictReader(stream)}
    assert list(lines) == ["base", "broken", "lower lr"]
    assert float(lines["base"]["test/mIoU"]) == pytest.approx(scores["base"]["mIoU"])
    assert float(lines["lower lr"]["test/mAcc"]) == pytest.approx(scores["lower-lr"]["mAcc"])
    assert float(lines["lower lr"]["test/mIoU delta"]) == pytest.approx(
        scores["lower-lr"]["mIoU"] - scores["base"]["mIoU"])
    assert float(lines["lower lr"]["test/mIoU paper delta"]) == pytest.approx(-1.0)
    assert lines["broken"]["runs"] == "0/1" and lines["broken"]["test/mIoU"] == ""
    markdown = (out / "table.md").read_text()
    assert "| base (baseline) | 1/1 |" in markdown and "| broken | 0/1 | - |" in markdown


def _svg_ids(path: Path, prefix: str) -> list[str]:
    return re.findall(rf'id="({prefix}:[^"]*)"', path.read_text())


def test_runner_writes_the_table_and_curve_figures(ablated: dict) -> None:
    out = ablated["out"]
    for name in ("table.png", "table.svg", "curves.png", "curves.svg"):
        assert (out / name).stat().st_size > 1000, name
    svg = (out / "table.svg").read_text()
    assert "base (1/1)" in svg and "lower lr (1/1)" in svg and "broken (0/1)" in svg
    # one point with error bars per finished row x metric, one paper point per number in the file
    assert sorted(_svg_ids(out / "table.svg", "ours")) == sorted(
        f"ours:{row}:{metric}" for row in ("base", "lower-lr") for metric in ("test/mIoU", "test/mAcc"))
    assert sorted(_svg_ids(out / "table.svg", "paper")) == [
        "paper:base:test/mIoU", "paper:lower-lr:test/mAcc", "paper:lower-lr:test/mIoU"]
    with (out / "table.csv").open() as stream:
        delta = float(next(line for line in csv.DictReader(stream) if line["row"] == "lower lr")["test/mIoU delta"])
    assert f"{delta:+.2f}" in svg
    assert sorted(_svg_ids(out / "curves.svg", "curve")) == sorted(
        f"curve:{panel}:{row}" for panel in ("val/mIoU", "train/loss", "lr") for row in ("base", "lower-lr"))


def test_report_rebuilds_the_table_and_figures_from_the_runs(ablated: dict, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "copy"
    shutil.copytree(ablated["out"], out, ignore=shutil.ignore_patterns("*.ckpt"))
    for name in ("table.md", "table.csv", "table.png", "table.svg", "curves.png", "curves.svg"):
        (out / name).unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "table.md").read_text() == (ablated["out"] / "table.md").read_text()
    assert (out / "table.csv").read_text() == (ablated["out"] / "table.csv").read_text()
    assert all((out / name).is_file() for name in ("table.png", "table.svg", "curves.png", "curves.svg"))
    assert "rebuilt from 3 runs" in capsys.readouterr().out


def test_report_on_a_folder_without_runs_says_so_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert capsys.readouterr().err.splitlines()[0].startswith(f"error: {empty}: no ablation.yaml")
    assert main(["report", str(empty), "--file", str(write_table(tmp_path))]) == 2
    assert capsys.readouterr().err.splitlines()[0].startswith(f"error: {empty}: no runs of")


def test_a_row_that_raises_after_parsing_is_reported_with_its_error(tmp_path: Path) -> None:
    """Not an argument error: the run itself raises (here building the encoder); the row is marked failed with the
    exception, and the runner goes on to the next row."""
    rows = [{"name": "crashes", "overrides": ["--model.init_args.segmodel.init_args.encoder_name=no_such_encoder"]},
            {"name": "base", "overrides": []}]
    path, out = write_table(tmp_path, rows=rows, paper={}), tmp_path / "out"
    assert main([str(path), "--out", str(out), "--in-process", *TINY]) == 1
    status = json.loads((out / "crashes" / "seed0" / "ablate.json").read_text())
    assert status["status"] == "failed" and "segcentroids fit:" in status["error"]
    assert "no_such_encoder" in status["error"] and "Traceback" in status["error"]
    assert json.loads((out / "base" / "seed0" / "ablate.json").read_text())["status"] == "done"


def test_subprocess_launch_keeps_the_log_of_a_failing_row(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path, out = write_table(tmp_path), tmp_path / "out"
    assert main([str(path), "--out", str(out), "--rows", "broken", *TINY]) == 1
    log = (out / "broken" / "seed0" / "ablate_fit.log").read_text()
    assert "no_such_argument" in log
    assert "FAILED broken / seed 0" in capsys.readouterr().err


def test_slurm_launcher_with_stand_in_sbatch_and_srun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    """The array script run by stand-ins: `sbatch --wait` runs each array task in turn, `srun` runs its command."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/bash\n"
        'for a in "$@"; do script="$a"; done\n'
        'echo "$@" >> "$FAKE_SBATCH_LOG"\n'
        "array=$(sed -n 's/^#SBATCH --array=\\([0-9,]*\\).*/\\1/p' \"$script\")\n"
        'for id in ${array//,/ }; do SLURM_ARRAY_TASK_ID=$id bash "$script" > /dev/null 2>&1 || rc=1; done\n'
        "echo 4242\nexit ${rc:-0}\n")
    (bin_dir / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("FAKE_SBATCH_LOG", str(tmp_path / "sbatch.log"))
    path, out = write_table(tmp_path), tmp_path / "out"
    assert main([str(path), "--launcher", "slurm", "--out", str(out), "--rows", "base", "broken", *TINY]) == 1
    assert "--parsable --wait" in (tmp_path / "sbatch.log").read_text()
    assert "#SBATCH --array=0,1" in (out / "slurm" / "array.sbatch").read_text()
    assert json.loads((out / "base" / "seed0" / "ablate.json").read_text())["status"] == "done"
    assert json.loads((out / "broken" / "seed0" / "ablate.json").read_text())["status"] == "failed"
    printed = capsys.readouterr()
    assert "submitted array job 4242 (2 tasks)" in printed.out and "| base (baseline) | 1/1 |" in printed.out
    assert "FAILED broken / seed 0" in printed.err
