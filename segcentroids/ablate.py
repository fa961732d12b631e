"""`segcentroids-ablate`: YAML-driven ablation tables, run locally or as one SLURM array job.

    segcentroids-ablate FILE [--launcher local|slurm] [--seeds 0 1] [--rows NAME ...] [--out DIR] [--dry-run]
                        [--check] [extra CLI args appended to every row, e.g. --trainer.max_steps=20]

Every row x seed is one run folder `<out>/<row-slug>/seed<k>` holding a `fit` and then a `test` (or `validate`) of
`segcentroids` with the row's arguments. Results are read back from the machine-readable files the runs write
(the evaluation record's `eval/<command>-*/metrics/<split>.json` and `<split>_all.json`, the fit's
`metrics/cost.json`), and the table is written to `<out>/table.md` and `<out>/table.csv`. The format of FILE is
in docs/ablations.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

KEYS = {"title", "base", "overrides", "baseline", "seeds", "metrics", "rows", "paper", "evaluate", "ckpt", "slurm"}
REQUIRED = ("title", "base", "rows")
EVALUATE_SPLIT = {"validate": "val", "test": "test"}
JSON_METRICS = ("mIoU", "mAcc", "aAcc")  # read from metrics/<split>.json; other names from <split>_all.json
RECORDER = "--trainer.callbacks+=segcentroids.callbacks.RunRecorder"
STATUS_FILE = "ablate.json"


class AblationFormatError(ValueError):
    """An ablation file that does not follow the format; the message names the file and the key."""


@dataclass
class Row:
    name: str
    overrides: list[str]
    slug: str
    baseline: str | None = None  # the row its deltas are measured against (None: the table's `baseline`)


@dataclass
class Ablation:
    """A parsed, validated ablation file."""

    path: Path
    title: str
    base: list[str]
    overrides: list[str]
    baseline: str
    seeds: list[int]
    metrics: list[str]
    rows: list[Row]
    paper: dict[str, dict[str, float]]
    evaluate: str
    ckpt: str
    slurm: dict = field(default_factory=dict)

    def row(self, name: str) -> Row:
        for row in self.rows:
            if name in (row.name, row.slug):
                return row
        raise AblationFormatError(f"{self.path}: no row named {name!r} (rows: {[r.name for r in self.rows]})")


@dataclass
class Task:
    """One row x seed: a run folder, its fit and its evaluation."""

    row: Row
    seed: int
    run_dir: Path


class RunFailed(RuntimeError):
    """A `segcentroids` command of a task failed."""


# ------------------------------------------------------------------------------------------------- the format
def slugify(name: str) -> str:
    """File-system-safe folder name of a row (`+ MT + LS` -> `mt-ls`, `tau=0.1` -> `tau-0.1`)."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-.").lower()
    return slug or "row"


def _find_file(path: str, ablation_file: Path) -> Path | None:
    """`path` as given (relative to the working directory) or relative to an ancestor of the ablation file."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate if candidate.is_file() else None
    for root in (Path.cwd(), *ablation_file.resolve().parents):
        if (root / candidate).is_file():
            return root / candidate
    return None


def _string_list(value: object, where: str, *, options: bool = False) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AblationFormatError(f"{where} must be a list of strings, got {value!r}")
    if options:
        for v in value:
            if not v.startswith("--"):
                raise AblationFormatError(f"{where}: {v!r} is not a command-line argument (must start with '--')")
    return list(value)


def load_ablation(path: str | Path, check_files: bool = True) -> Ablation:
    """Read and validate an ablation file; errors name the file and the key (see docs/ablations.md)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise AblationFormatError(f"{path}: cannot read: {error}") from error
    if not isinstance(data, dict):
        raise AblationFormatError(f"{path}: must be a mapping with keys {sorted(KEYS)}")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise AblationFormatError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(KEYS)}")
    for key in REQUIRED:
        if key not in data:
            raise AblationFormatError(f"{path}: missing key '{key}'")
    if not isinstance(data["title"], str) or not data["title"].strip():
        raise AblationFormatError(f"{path}: 'title' must be a non-empty string")

    base = _string_list(data["base"], f"{path}: 'base'")
    if not base:
        raise AblationFormatError(f"{path}: 'base' must name at least one config file")
    if check_files:
        for i, name in enumerate(base):
            found = _find_file(name, path)
            if found is None:
                raise AblationFormatError(f"{path}: base[{i}]: config file {name!r} not found")
            base[i] = name if Path(name).is_file() else str(found)
    overrides = _string_list(data.get("overrides"), f"{path}: 'overrides'", options=True)

    raw_rows = data["rows"]
    if not isinstance(raw_rows, list) or not raw_rows:
        raise AblationFormatError(f"{path}: 'rows' must be a non-empty list of {{name, overrides}}")
    rows: list[Row] = []
    for i, raw in enumerate(raw_rows):
        if not isinstance(raw, dict) or "name" not in raw:
            raise AblationFormatError(f"{path}: rows[{i}] must be a mapping with 'name' and 'overrides', got {raw!r}")
        extra = sorted(set(raw) - {"name", "overrides", "baseline"})
        if extra:
            raise AblationFormatError(f"{path}: rows[{i}] ({raw['name']!r}): unknown key(s) {extra}")
        name = str(raw["name"])
        row_overrides = _string_list(raw.get("overrides"), f"{path}: rows[{i}] ({name!r}) 'overrides'", options=True)
        row_baseline = raw.get("baseline")
        rows.append(Row(name, row_overrides, slugify(name), None if row_baseline is None else str(row_baseline)))
    for key in ("name", "slug"):
        seen: dict[str, str] = {}
        for row in rows:
            value = getattr(row, key)
            if value in seen:
                raise AblationFormatError(
                    f"{path}: rows {seen[value]!r} and {row.name!r} have the same {key} {value!r}")
            seen[value] = row.name
    names = [r.name for r in rows]

    baseline = str(data.get("baseline", names[0]))
    if baseline not in names:
        raise AblationFormatError(f"{path}: 'baseline' {baseline!r} is not a row name; rows: {names}")
    for i, row in enumerate(rows):
        if row.baseline is not None and row.baseline not in names:
            raise AblationFormatError(f"{path}: rows[{i}] ({row.name!r}) 'baseline' {row.baseline!r} is not a row "
                                      f"name; rows: {names}")

    seeds = data.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in seeds):
        raise AblationFormatError(f"{path}: 'seeds' must be a non-empty list of integers, got {seeds!r}")

    evaluate = data.get("evaluate")
    metrics = _string_list(data.get("metrics"), f"{path}: 'metrics'")
    if evaluate is not None and evaluate not in EVALUATE_SPLIT:
        raise AblationFormatError(f"{path}: 'evaluate' must be 'test' or 'validate', got {evaluate!r}")
    if not metrics:
        split = EVALUATE_SPLIT[evaluate or "test"]
        metrics = [f"{split}/mIoU", f"{split}/mAcc"]
    for metric in metrics:
        split, _, name = metric.partition("/")
        if split not in EVALUATE_SPLIT.values() or not name:
            raise AblationFormatError(f"{path}: metric {metric!r} must be 'val/<name>' or 'test/<name>'")
    if evaluate is None:  # evaluate the split the table reports
        evaluate = "validate" if metrics[0].startswith("val/") else "test"

    ckpt = data.get("ckpt", "last")
    if ckpt not in ("last", "best"):
        raise AblationFormatError(f"{path}: 'ckpt' must be 'last' or 'best', got {ckpt!r}")

    paper_raw = data.get("paper") or {}
    if not isinstance(paper_raw, dict):
        raise AblationFormatError(f"{path}: 'paper' must map row names to numbers or to {{metric: number}}")
    paper: dict[str, dict[str, float]] = {}
    for row_name, value in paper_raw.items():
        if str(row_name) not in names:
            raise AblationFormatError(f"{path}: paper: {row_name!r} is not a row name; rows: {names}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = {metrics[0]: value}
        if not isinstance(value, dict) or not all(isinstance(v, (int, float)) for v in value.values()):
            raise AblationFormatError(f"{path}: paper: {row_name!r} must be a number or {{metric: number}}, "
                                      f"got {value!r}")
        for metric in value:
            if metric not in metrics:
                raise AblationFormatError(f"{path}: paper: {row_name!r}: metric {metric!r} is not in 'metrics' "
                                          f"{metrics}")
        paper[str(row_name)] = {k: float(v) for k, v in value.items()}

    slurm = data.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise AblationFormatError(f"{path}: 'slurm' must be a mapping of sbatch options (plus 'setup': [lines])")
    if "setup" in slurm:
        _string_list(slurm["setup"], f"{path}: slurm.setup")
    return Ablation(path, data["title"], base, overrides, baseline, [int(s) for s in seeds], metrics, rows, paper,
                    evaluate, ckpt, slurm)


# ------------------------------------------------------------------------------------------------- the runs
def default_out(path: Path) -> Path:
    """`runs/ablations/[<paper folder>/]<file stem>` (e.g. runs/ablations/mcibi/table2_memory)."""
    folder = path.resolve().parent.name
    return Path("runs") / "ablations" / ("" if folder == "ablations" else folder) / path.stem


def build_tasks(ablation: Ablation, out: Path, rows: list[str] | None = None,
                seeds: list[int] | None = None) -> list[Task]:
    """The selected rows x seeds, row-major, in the file's row order."""
    selected = [ablation.row(name) for name in rows] if rows else ablation.rows
    selected = [r for r in ablation.rows if r in selected]
    return [Task(row, seed, out / row.slug / f"seed{seed}") for row in selected for seed in (seeds or ablation.seeds)]


def command(ablation: Ablation, task: Task, subcommand: str, extra: list[str]) -> list[str]:
    """`segcentroids` arguments of one step of a task (`fit`, `validate` or `test`)."""
    args = [subcommand]
    for config in ablation.base:
        args += ["--config", config]
    args += ablation.overrides + task.row.overrides + list(extra)
    args += [f"--seed_everything={task.seed}", f"--trainer.default_root_dir={task.run_dir}", RECORDER]
    # fit: resume whatever an interrupted fit left (the command starts fresh when there is nothing)
    args.append("--ckpt_path=last" if subcommand == "fit" else f"--ckpt_path={ablation.ckpt}")
    return args


def evaluation_folder(run_dir: Path, subcommand: str) -> Path:
    """The newest `eval/<subcommand>-*` record of a run (segcentroids.runs); runs recorded before evaluations had
    records of their own kept their metrics in the run folder."""
    records = sorted((run_dir / "eval").glob(f"{subcommand}-*"), key=lambda p: p.stat().st_mtime)
    return records[-1] if records else run_dir


def read_status(task: Task) -> dict:
    try:
        return json.loads((task.run_dir / STATUS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_status(task: Task, **status: object) -> None:
    if not _rank_zero():
        return
    task.run_dir.mkdir(parents=True, exist_ok=True)
    record = {"row": task.row.name, "seed": task.seed, **read_status(task), **status, "time": time.time()}
    (task.run_dir / STATUS_FILE).write_text(json.dumps(record, indent=2))


def _rank_zero() -> bool:
    return all(int(os.environ.get(key, 0)) == 0 for key in ("SLURM_PROCID", "RANK", "LOCAL_RANK"))


class _Tee(io.StringIO):
    """Keeps what is written (the error of a failing in-process command) and passes it on."""

    def __init__(self, stream: io.TextIOBase) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        return super().write(text)


def _execute(args: list[str], run_dir: Path, in_process: bool) -> None:
    """Runs `segcentroids ARGS`; raises RunFailed with the reason."""
    if in_process:
        from segcentroids.cli import main

        stderr = _Tee(sys.stderr)
        try:
            with contextlib.redirect_stderr(stderr):
                main(list(args))
        except SystemExit as error:  # jsonargparse reports bad arguments with SystemExit
            if error.code not in (0, None):
                tail = "\n".join(stderr.getvalue().strip().splitlines()[-8:])
                raise RunFailed(f"segcentroids {args[0]} exited with {error.code}\n{tail}") from error
        except Exception as error:
            raise RunFailed(f"segcentroids {args[0]}: {type(error).__name__}: {error}\n"
                            f"{traceback.format_exc(limit=-3)}") from error
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / f"ablate_{args[0]}.log"
    with log.open("w") as stream:
        result = subprocess.run([sys.executable, "-m", "segcentroids.cli", *args], stdout=stream,
                                stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RunFailed(f"segcentroids {args[0]} exited with {result.returncode} (log: {log})\n{tail}")


def run_task(ablation: Ablation, task: Task, extra: list[str], in_process: bool = False) -> str:
    """Runs one row x seed (fit, then evaluate) unless it finished before; returns done | skipped | failed."""
    status = read_status(task)
    if status.get("status") == "done":
        return "skipped"
    _write_status(task, status="running", error=None)
    try:
        if not status.get("fit_done"):
            _execute(command(ablation, task, "fit", extra), task.run_dir, in_process)
            _write_status(task, fit_done=True)
        _execute(command(ablation, task, ablation.evaluate, extra), task.run_dir, in_process)
        record = evaluation_folder(task.run_dir, ablation.evaluate)
        written = record / "metrics" / f"{EVALUATE_SPLIT[ablation.evaluate]}.json"
        if not written.is_file() and _rank_zero():
            raise RunFailed(f"{written} was not written")
    except RunFailed as error:
        _write_status(task, status="failed", error=str(error))
        return "failed"
    _write_status(task, status="done")
    return "done"


# ----------------------------------------------------------------------------------------- collecting results
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
    for key in ("params", "params_inference", "gflops", "step_time_s"):
        record[key] = cost.get(key)
    return record


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _first(runs: list[dict], key: str) -> float | None:
    return next((r[key] for r in runs if r.get(key) is not None), None)


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
            mean, std = _mean_std([r.get(metric) for r in runs])
            base_mean, _ = _mean_std([r.get(metric) for r in base_runs])
            ours_paper = paper.get(name, {}).get(metric)
            base_paper = paper.get(row_baseline, {}).get(metric)
            line[metric] = mean
            line[f"{metric} std"] = std
            line[f"{metric} delta"] = None if mean is None or base_mean is None else mean - base_mean
            line[f"{metric} paper"] = ours_paper
            line[f"{metric} paper delta"] = (None if ours_paper is None or base_paper is None
                                             else ours_paper - base_paper)
        params = _first(runs, "params_inference") or _first(runs, "params")
        line["params (M)"] = None if params is None else params / 1e6
        line["GFLOPs"] = _first(runs, "gflops")
        step, base_step = _mean_std([r.get("step_time_s") for r in runs])[0], _mean_std(
            [r.get("step_time_s") for r in base_runs])[0]
        line["step time x"] = None if step is None or not base_step else step / base_step
        table.append(line)
    return table


def _fmt(value: object, digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    return str(value)


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
        own = line.get("baseline", baseline)
        note = " (baseline)" if line["row"] in baselines else ""
        if own != baseline and line["row"] != own:
            note += f" (Δ against `{own}`)"
        cells = [str(line["row"]) + note, str(line["runs"])]
        for metric in metrics:
            mean, std = line[metric], line[f"{metric} std"]
            cells.append(_fmt(mean) + ("" if std is None else f" ± {std:.2f}"))
            cells.append(_fmt(line[f"{metric} delta"], sign=True))
            if has_paper[metric]:
                paper, delta = line[f"{metric} paper"], line[f"{metric} paper delta"]
                cells.append(_fmt(paper) + ("" if delta is None else f" ({delta:+.2f})"))
        cells += [_fmt(line["params (M)"]), _fmt(line["GFLOPs"], 3), _fmt(line["step time x"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(table: list[dict], path: Path) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(table[0]))
        writer.writeheader()
        for line in table:
            writer.writerow({k: "" if v is None else v for k, v in line.items()})


def collect(ablation: Ablation, tasks: list[Task], out: Path) -> str:
    """Reads every finished task, writes `<out>/table.md` and `<out>/table.csv`, returns the Markdown."""
    results: dict[str, list[dict]] = {}
    for task in tasks:
        record = collect_run(ablation, task)
        if record is not None:
            results.setdefault(task.row.name, []).append(record)
    rows = list(dict.fromkeys(task.row.name for task in tasks))
    seeds = len({task.seed for task in tasks})
    row_baselines = {row.name: row.baseline for row in ablation.rows if row.baseline is not None}
    table = summarize(results, rows, ablation.baseline, ablation.metrics, ablation.paper, seeds, row_baselines)
    markdown = format_markdown(ablation.title, table, ablation.metrics, ablation.baseline)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown)
    write_csv(table, out / "table.csv")
    return markdown


# ------------------------------------------------------------------------------------------------------ SLURM
def _selection_args(args: argparse.Namespace) -> list[str]:
    selection = ["--out", str(args.out)]
    if args.rows:
        selection += ["--rows", *args.rows]
    if args.seeds:
        selection += ["--seeds", *map(str, args.seeds)]
    return selection


def sbatch_script(ablation: Ablation, file: Path, indices: list[int], args: argparse.Namespace,
                  extra: list[str]) -> str:
    """The array job: one task per row x seed (`indices` into the selected tasks), each run by this module."""
    options = {key.replace("_", "-"): value for key, value in ablation.slurm.items() if key != "setup"}
    for item in args.sbatch or []:
        key, _, value = item.partition("=")
        options[key.lstrip("-").replace("_", "-")] = value
    options.setdefault("job-name", f"ablate-{file.stem}")
    options.setdefault("output", str(Path(args.out) / "slurm" / "%A_%a.out"))
    array = ",".join(map(str, indices))
    if "max-parallel" in options:
        array += f"%{options.pop('max-parallel')}"
    lines = ["#!/bin/bash", f"#SBATCH --array={array}"]
    lines += [f"#SBATCH --{key}={value}" for key, value in options.items()]
    lines += ["set -euo pipefail", *ablation.slurm.get("setup", [])]
    task = [sys.executable, "-m", "segcentroids.ablate", str(file), *_selection_args(args), "--task"]
    tail = ["--", *extra] if extra else []
    lines.append(f"srun {shlex.join(task)} \"$SLURM_ARRAY_TASK_ID\" {shlex.join(tail)}".rstrip())
    return "\n".join(lines) + "\n"


def submit_slurm(script: str, out: Path, wait: bool) -> str:
    """Submits the array job with sbatch (blocking until it ends when `wait`); returns the job id."""
    folder = out / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "array.sbatch"
    path.write_text(script)
    result = subprocess.run(["sbatch", "--parsable", *(["--wait"] if wait else []), str(path)],
                            capture_output=True, text=True, check=False)
    job = result.stdout.strip().split(";")[0]
    if result.returncode != 0 and not (wait and job):
        raise RuntimeError(f"sbatch {path} failed ({result.returncode}): {result.stderr.strip()}")
    return job


# -------------------------------------------------------------------------------------------------- checking
_PARSERS: list = []  # the `segcentroids` parser, built once per process by check_rows


def check_rows(ablation: Ablation, tasks: list[Task], extra: list[str]) -> dict[str, str]:
    """Parses every row's `fit` arguments with the `segcentroids` parser (keys, types, class paths), building no
    model; returns {row name: error} for rows that do not parse."""
    from segcentroids.cli import SegCLI
    from segcentroids.data import SegDataModule
    from segcentroids.methods import Baseline

    class _Parsed(Exception):
        pass

    parsers = _PARSERS

    class _ParseOnly(SegCLI):
        def before_instantiate_classes(self) -> None:
            parsers.append(self.parser)
            raise _Parsed

    errors: dict[str, str] = {}
    for task in {t.row.name: t for t in tasks}.values():
        args = command(ablation, task, "fit", extra)
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                if parsers:  # building the parser is the slow part: build it once
                    parsers[0].parse_args(args)
                else:
                    _ParseOnly(Baseline, SegDataModule, subclass_mode_model=True, subclass_mode_data=True,
                               args_list=args, seed_everything_default=None)
        except _Parsed:
            pass
        except SystemExit:
            message = [line for line in stderr.getvalue().splitlines() if line.strip()]
            errors[task.row.name] = "\n".join(message[-6:]) or "argument parsing failed"
        except Exception as error:
            errors[task.row.name] = f"{type(error).__name__}: {error}"
    return errors


# ---------------------------------------------------------------------------------------------------- the CLI
def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Runner options, and the extra `segcentroids` arguments (unknown options, or everything after `--`)."""
    parser = argparse.ArgumentParser(
        prog="segcentroids-ablate", allow_abbrev=False,
        description="Run an ablation table (docs/ablations.md). Arguments the runner does not know (use the "
                    "--key=value form), or everything after '--', are appended to every row's segcentroids command.")
    parser.add_argument("file", type=Path, help="ablation YAML file")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the file's)")
    parser.add_argument("--rows", nargs="+", help="row names or slugs to run (default: all)")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/ablations/<folder>/<stem>)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands (and the sbatch script)")
    parser.add_argument("--check", action="store_true",
                        help="parse every row's arguments with the segcentroids parser, run nothing")
    parser.add_argument("--collect", action="store_true", help="only collect finished runs into the table")
    parser.add_argument("--in-process", action="store_true",
                        help="local launcher: run the commands in this process instead of one subprocess each")
    parser.add_argument("--sbatch", action="append", metavar="KEY=VALUE", help="extra/overriding sbatch option")
    parser.add_argument("--no-wait", action="store_true",
                        help="slurm: submit the array and a dependent collect job, and return")
    parser.add_argument("--task", type=int, help=argparse.SUPPRESS)  # one array task (used by the sbatch script)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args, unknown = parser.parse_known_args(argv)
    for item in unknown:
        if not item.startswith("--"):
            parser.error(f"unexpected argument {item!r}: pass segcentroids arguments as --key=value or after '--'")
    return args, unknown + extra


def main(argv: list[str] | None = None) -> int:
    """Entry point of `segcentroids-ablate`; returns the exit status (1 if a row failed)."""
    args, extra = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        ablation = load_ablation(args.file)
        args.out = args.out or default_out(args.file)
        tasks = build_tasks(ablation, args.out, args.rows, args.seeds)
    except AblationFormatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    if args.task is not None:  # one array task (all ranks of it under srun)
        if not 0 <= args.task < len(tasks):
            print(f"error: --task {args.task} outside 0..{len(tasks) - 1}", file=sys.stderr)
            return 2
        return 1 if run_task(ablation, tasks[args.task], extra, in_process=True) == "failed" else 0

    if args.check:
        errors = check_rows(ablation, tasks, extra)
        for name, message in errors.items():
            print(f"{args.file}: row {name!r}: {message}", file=sys.stderr)
        print(f"{args.file}: {len({t.row.name for t in tasks}) - len(errors)} rows parse, {len(errors)} do not")
        return 1 if errors else 0

    pending = [i for i, task in enumerate(tasks) if read_status(task).get("status") != "done"]
    if args.dry_run:
        print(f"# {ablation.title}\n# {len(tasks)} runs ({len(pending)} to do) in {args.out}")
        for i, task in enumerate(tasks):
            state = read_status(task).get("status", "pending")
            print(f"\n# [{i}] {task.row.name} / seed {task.seed} ({state}): {task.run_dir}")
            for step in ("fit", ablation.evaluate):
                print(shlex.join(["segcentroids", *command(ablation, task, step, extra)]))
        if args.launcher == "slurm" and pending:
            print("\n# sbatch script\n" + sbatch_script(ablation, args.file, pending, args, extra), end="")
        elif args.launcher == "slurm":
            print("\n# sbatch script: nothing to submit, every run is done")
        return 0

    failed: list[Task] = []
    if args.launcher == "local" and not args.collect:
        for i, task in enumerate(tasks):
            print(f"[ablate] ({i + 1}/{len(tasks)}) {task.row.name} / seed {task.seed} -> {task.run_dir}", flush=True)
            outcome = run_task(ablation, task, extra, in_process=args.in_process)
            print(f"[ablate] {task.row.name} / seed {task.seed}: {outcome}", flush=True)
            if outcome == "failed":
                failed.append(task)
    elif args.launcher == "slurm" and not args.collect and pending:
        script = sbatch_script(ablation, args.file, pending, args, extra)
        job = submit_slurm(script, args.out, wait=not args.no_wait)
        print(f"[ablate] submitted array job {job} ({len(pending)} tasks)", flush=True)
        if args.no_wait:
            collect_cmd = shlex.join([sys.executable, "-m", "segcentroids.ablate", str(args.file),
                                      *_selection_args(args), "--collect"])
            placement = {**ablation.slurm, **dict(item.partition("=")[::2] for item in args.sbatch or [])}
            placement = [f"--{key}={placement[key]}" for key in ("partition", "account", "qos") if key in placement]
            subprocess.run(["sbatch", "--parsable", f"--dependency=afterany:{job}", *placement, "--job-name",
                            f"ablate-collect-{args.file.stem}", "--output", str(args.out / "slurm" / "collect_%j.out"),
                            "--wrap", collect_cmd], check=True)
            return 0
        failed = [t for t in tasks if read_status(t).get("status") != "done"]

    markdown = collect(ablation, tasks, args.out)
    print(markdown)
    failed = failed or [t for t in tasks if read_status(t).get("status") == "failed"]
    for task in failed:
        error = read_status(task).get("error") or "did not finish"
        print(f"[ablate] FAILED {task.row.name} / seed {task.seed} ({task.run_dir}): {error.splitlines()[0]}",
              file=sys.stderr)
    print(f"[ablate] table: {args.out / 'table.md'} and {args.out / 'table.csv'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
