"""The table: finished runs read back, summarized over seeds, written as Markdown and CSV."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

from segcentroids.ablate.figures import curves_figure, table_figure
from segcentroids.ablate.runner import Task, evaluation_folder, read_status
from segcentroids.ablate.spec import Ablation

JSON_METRICS = ("mIoU", "mAcc", "aAcc")  # read from metrics/<split>.json; other names from <split>_all.json
COST_KEYS = ("params", "params_inference", "gflops", "step_time_s")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def collect_run(ablation: Ablation, task: Task) -> dict[str, float | None] | None:
    """The metrics and costs of a finished task (None if it has not finished)."""
    if read_status(task).get("status") != "done":
        return None
    folder = evaluation_folder(task.run_dir, ablation.evaluate) / "metrics"
    record: dict[str, float | None] = {}
    for metric in ablation.metrics:
        split, _, name = metric.partition("/")
        if name in JSON_METRICS:
            value = _read_json(folder / f"{split}.json").get(name)
        else:
            value = _read_json(folder / f"{split}_all.json").get(metric)
        record[metric] = None if value is None else float(value)
    cost = _read_json(task.run_dir / "metrics" / "cost.json")
    for key in COST_KEYS:
        record[key] = cost.get(key)
    return record


# ------------------------------------------------------------------------------------------------ the numbers
def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _first(runs: list[dict], key: str) -> float | None:
    return next((r[key] for r in runs if r.get(key) is not None), None)


def _difference(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else value - reference


def _metric_columns(metric: str, runs: list[dict], base_runs: list[dict], paper: dict[str, float],
                    base_paper: dict[str, float]) -> dict[str, float | None]:
    """One metric's columns of a row: mean, std, delta to the baseline's mean, the paper's number and its delta."""
    mean, std = _mean_std([r.get(metric) for r in runs])
    base_mean, _ = _mean_std([r.get(metric) for r in base_runs])
    ours_paper = paper.get(metric)
    return {metric: mean, f"{metric} std": std, f"{metric} delta": _difference(mean, base_mean),
            f"{metric} paper": ours_paper, f"{metric} paper delta": _difference(ours_paper, base_paper.get(metric))}


def _cost_columns(runs: list[dict], base_runs: list[dict]) -> dict[str, float | None]:
    """Params (millions) and GFLOPs of the row's first finished run, its mean step time over its baseline's."""
    params = _first(runs, "params_inference") or _first(runs, "params")
    step = _mean_std([r.get("step_time_s") for r in runs])[0]
    base_step = _mean_std([r.get("step_time_s") for r in base_runs])[0]
    return {"params (M)": None if params is None else params / 1e6, "GFLOPs": _first(runs, "gflops"),
            "step time x": None if step is None or not base_step else step / base_step}


def summarize(results: dict[str, list[dict]], rows: list[str], baseline: str, metrics: list[str],
              paper: dict[str, dict[str, float]], seeds_per_row: int,
              row_baselines: dict[str, str] | None = None) -> list[dict]:
    """The table's numbers: per row and metric, the mean and sample std (ddof=1) over seeds, the delta of the means
    to the row's baseline (`row_baselines[row]`, else `baseline`), the paper's number and its delta to the paper's
    number of that baseline; params (millions) and inference GFLOPs of the row's first finished run; the row's mean
    step time over its baseline's."""
    table = []
    for name in rows:
        row_baseline = (row_baselines or {}).get(name) or baseline
        base_runs = results.get(row_baseline, [])
        runs = results.get(name, [])
        line: dict[str, object] = {"row": name, "runs": f"{len(runs)}/{seeds_per_row}", "baseline": row_baseline}
        for metric in metrics:
            line.update(_metric_columns(metric, runs, base_runs, paper.get(name, {}), paper.get(row_baseline, {})))
        line.update(_cost_columns(runs, base_runs))
        table.append(line)
    return table


# ------------------------------------------------------------------------------------------------ the formats
def _fmt(value: object, digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    return str(value)


def _row_label(line: dict, baseline: str, baselines: set[str]) -> str:
    """The row's name, marked when it is a baseline or measured against a row other than the table's baseline."""
    own = line.get("baseline", baseline)
    note = " (baseline)" if line["row"] in baselines else ""
    if own != baseline and line["row"] != own:
        note += f" (Δ against `{own}`)"
    return str(line["row"]) + note


def _metric_cells(line: dict, metric: str, with_paper: bool) -> list[str]:
    mean, std = line[metric], line[f"{metric} std"]
    cells = [_fmt(mean) + ("" if std is None else f" ± {std:.2f}"), _fmt(line[f"{metric} delta"], sign=True)]
    if with_paper:
        paper, delta = line[f"{metric} paper"], line[f"{metric} paper delta"]
        cells.append(_fmt(paper) + ("" if delta is None else f" ({delta:+.2f})"))
    return cells


def format_markdown(title: str, table: list[dict], metrics: list[str], baseline: str) -> str:
    """Markdown table: ours (mean +- std), delta to the baseline row, the paper's number (its delta) per metric."""
    has_paper = {m: any(line[f"{m} paper"] is not None for line in table) for m in metrics}
    header = ["row", "runs"]
    for metric in metrics:
        header += [metric, "Δ"] + (["paper (Δ)"] if has_paper[metric] else [])
    header += ["params (M)", "GFLOPs", "step time ×"]
    lines = [f"**{title}** (Δ against `{baseline}`)", "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    baselines = {line.get("baseline", baseline) for line in table}
    for line in table:
        cells = [_row_label(line, baseline, baselines), str(line["runs"])]
        for metric in metrics:
            cells += _metric_cells(line, metric, has_paper[metric])
        cells += [_fmt(line["params (M)"]), _fmt(line["GFLOPs"], 3), _fmt(line["step time x"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(table: list[dict], path: Path) -> None:
    """The table as CSV, one column per key of its lines (empty cells for missing numbers)."""
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(table[0]))
        writer.writeheader()
        for line in table:
            writer.writerow({k: "" if v is None else v for k, v in line.items()})


def build_table(ablation: Ablation, tasks: list[Task]) -> tuple[list[dict], dict[str, list[Path]]]:
    """The table's numbers (`summarize`) of the finished tasks, and the run folders of each row's finished tasks."""
    results: dict[str, list[dict]] = {}
    finished: dict[str, list[Path]] = {}
    for task in tasks:
        record = collect_run(ablation, task)
        if record is not None:
            results.setdefault(task.row.name, []).append(record)
            finished.setdefault(task.row.name, []).append(task.run_dir)
    rows = list(dict.fromkeys(task.row.name for task in tasks))
    seeds = len({task.seed for task in tasks})
    row_baselines = {row.name: row.baseline for row in ablation.rows if row.baseline is not None}
    table = summarize(results, rows, ablation.baseline, ablation.metrics, ablation.paper, seeds, row_baselines)
    return table, finished


def write_figures(ablation: Ablation, table: list[dict], finished: dict[str, list[Path]], out: Path) -> list[Path]:
    """`table.png/svg` and `curves.png/svg` in `out` (`segcentroids.ablate.figures`)."""
    val_metric = next((m for m in ablation.metrics if m.startswith("val/")), "val/mIoU")
    return (table_figure(ablation.title, table, ablation.metrics, ablation.baseline, out)
            + curves_figure(ablation.title, finished, out, val_metric))


def collect(ablation: Ablation, tasks: list[Task], out: Path) -> str:
    """Reads every finished task, writes `<out>/table.md`, `<out>/table.csv` and the figures, returns the
    Markdown."""
    table, finished = build_table(ablation, tasks)
    markdown = format_markdown(ablation.title, table, ablation.metrics, ablation.baseline)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown)
    write_csv(table, out / "table.csv")
    write_figures(ablation, table, finished, out)
    return markdown
