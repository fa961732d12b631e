"""SLURM: the array job script (one task per row x seed, each run by `python -m segcentroids.ablate --task`) and
its submission, with an optional dependent job that collects the table."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from segcentroids.ablate.spec import Ablation

PLACEMENT_OPTIONS = ("partition", "account", "qos")  # sbatch options the collect job shares with the array


def selection_args(args: argparse.Namespace) -> list[str]:
    """The runner options that select the same tasks and output folder (`--out`, `--rows`, `--seeds`)."""
    selection = ["--out", str(args.out)]
    if args.rows:
        selection += ["--rows", *args.rows]
    if args.seeds:
        selection += ["--seeds", *map(str, args.seeds)]
    return selection


def _sbatch_options(ablation: Ablation, file: Path, args: argparse.Namespace) -> dict[str, object]:
    """The file's `slurm:` options, overridden by `--sbatch KEY=VALUE`, with a job name and output path."""
    options = {key.replace("_", "-"): value for key, value in ablation.slurm.items() if key != "setup"}
    for item in args.sbatch or []:
        key, _, value = item.partition("=")
        options[key.lstrip("-").replace("_", "-")] = value
    options.setdefault("job-name", f"ablate-{file.stem}")
    options.setdefault("output", str(Path(args.out) / "slurm" / "%A_%a.out"))
    return options


def sbatch_script(ablation: Ablation, file: Path, indices: list[int], args: argparse.Namespace,
                  extra: list[str]) -> str:
    """The array job: one task per row x seed (`indices` into the selected tasks), each run by this module."""
    options = _sbatch_options(ablation, file, args)
    array = ",".join(map(str, indices))
    if "max-parallel" in options:
        array += f"%{options.pop('max-parallel')}"
    lines = ["#!/bin/bash", f"#SBATCH --array={array}"]
    lines += [f"#SBATCH --{key}={value}" for key, value in options.items()]
    lines += ["set -euo pipefail", *ablation.slurm.get("setup", [])]
    task = [sys.executable, "-m", "segcentroids.ablate", str(file), *selection_args(args), "--task"]
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


def submit_collect(ablation: Ablation, args: argparse.Namespace, job: str) -> None:
    """Submits a job that collects the table once array job `job` has ended, on the array's partition/account."""
    collect_cmd = shlex.join([sys.executable, "-m", "segcentroids.ablate", str(args.file), *selection_args(args),
                              "--collect"])
    placement = {**ablation.slurm, **dict(item.partition("=")[::2] for item in args.sbatch or [])}
    options = [f"--{key}={placement[key]}" for key in PLACEMENT_OPTIONS if key in placement]
    subprocess.run(["sbatch", "--parsable", f"--dependency=afterany:{job}", *options, "--job-name",
                    f"ablate-collect-{args.file.stem}", "--output", str(args.out / "slurm" / "collect_%j.out"),
                    "--wrap", collect_cmd], check=True)
