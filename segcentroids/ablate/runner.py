"""The runs of a table: one task per row x seed, its `segcentroids` commands, its status file, and running it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from segcentroids.ablate.spec import EVALUATE_SPLIT, Ablation, Row

RECORDER = "--trainer.callbacks+=segcentroids.callbacks.RunRecorder"
STATUS_FILE = "ablate.json"


@dataclass
class Task:
    """One row x seed: a run folder, its fit and its evaluation."""

    row: Row
    seed: int
    run_dir: Path


class RunFailed(RuntimeError):
    """A `segcentroids` command of a task failed."""


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


# ------------------------------------------------------------------------------------------------ the status
def read_status(task: Task) -> dict:
    """The task's `ablate.json` ({} before its first run)."""
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


# --------------------------------------------------------------------------------------------------- running
class _Tee(io.StringIO):
    """Keeps what is written (the error of a failing in-process command) and passes it on."""

    def __init__(self, stream: io.TextIOBase) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        return super().write(text)


def _execute_in_process(args: list[str]) -> None:
    """Runs `segcentroids ARGS` in this process; raises RunFailed with the reason."""
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


def _execute_subprocess(args: list[str], run_dir: Path) -> None:
    """Runs `segcentroids ARGS` in a subprocess logging to `<run_dir>/ablate_<subcommand>.log`; raises RunFailed
    with the log's tail."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / f"ablate_{args[0]}.log"
    with log.open("w") as stream:
        result = subprocess.run([sys.executable, "-m", "segcentroids.cli", *args], stdout=stream,
                                stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RunFailed(f"segcentroids {args[0]} exited with {result.returncode} (log: {log})\n{tail}")


def _execute(args: list[str], run_dir: Path, in_process: bool) -> None:
    if in_process:
        _execute_in_process(args)
    else:
        _execute_subprocess(args, run_dir)


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


# -------------------------------------------------------------------------------------------------- checking
_PARSERS: list = []  # the `segcentroids` parser, built once per process by check_rows


def _parser_builder() -> Callable[[list[str]], None]:
    """A function that builds the `segcentroids` parser into `_PARSERS` while parsing its arguments, building no
    model."""
    from segcentroids.cli import SegCLI
    from segcentroids.data import SegDataModule
    from segcentroids.methods import Baseline

    class _Parsed(Exception):
        pass

    class _ParseOnly(SegCLI):
        def before_instantiate_classes(self) -> None:
            _PARSERS.append(self.parser)
            raise _Parsed

    def build(args: list[str]) -> None:
        with contextlib.suppress(_Parsed):
            _ParseOnly(Baseline, SegDataModule, subclass_mode_model=True, subclass_mode_data=True, args_list=args,
                       seed_everything_default=None)

    return build


def check_rows(ablation: Ablation, tasks: list[Task], extra: list[str]) -> dict[str, str]:
    """Parses every row's `fit` arguments with the `segcentroids` parser (keys, types, class paths), building no
    model; returns {row name: error} for rows that do not parse."""
    build_parser = _parser_builder()
    errors: dict[str, str] = {}
    for task in {t.row.name: t for t in tasks}.values():
        args = command(ablation, task, "fit", extra)
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                if _PARSERS:  # building the parser is the slow part: build it once
                    _PARSERS[0].parse_args(args)
                else:
                    build_parser(args)
        except SystemExit:
            message = [line for line in stderr.getvalue().splitlines() if line.strip()]
            errors[task.row.name] = "\n".join(message[-6:]) or "argument parsing failed"
        except Exception as error:
            errors[task.row.name] = f"{type(error).__name__}: {error}"
    return errors
