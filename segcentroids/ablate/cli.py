"""The `segcentroids-ablate` command: options, and one function per mode (array task, check, dry run, run), and
`segcentroids-ablate report OUT_DIR` (the table and figures rebuilt from finished runs)."""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

from segcentroids.ablate.report import collect
from segcentroids.ablate.runner import (
    STATUS_FILE,
    Task,
    build_tasks,
    check_rows,
    command,
    default_out,
    read_status,
    run_task,
)
from segcentroids.ablate.slurm import sbatch_script, submit_collect, submit_slurm
from segcentroids.ablate.spec import Ablation, AblationFormatError, load_ablation


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Runner options, and the extra `segcentroids` arguments (unknown options, or everything after `--`)."""
    parser = argparse.ArgumentParser(
        prog="segcentroids-ablate", allow_abbrev=False,
        description="Run an ablation table (docs/ablations.md). Arguments the runner does not know (use the "
                    "--key=value form), or everything after '--', are appended to every row's segcentroids command. "
                    "'segcentroids-ablate report OUT_DIR' rebuilds the table and figures from finished runs.")
    parser.add_argument("file", type=Path, help="ablation YAML file")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the file's)")
    parser.add_argument("--rows", nargs="+", help="row names or slugs to run (default: all)")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/ablations/<folder>/<stem>)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands (and the sbatch script)")
    parser.add_argument("--estimate", action="store_true",
                        help="with --dry-run: time a few training steps of each row here and print how long each "
                             "row and the whole table will take")
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
    """Entry point of `segcentroids-ablate`; returns the exit status (1 if a row failed, 2 on a usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    args, extra = parse_args(argv)
    try:
        ablation = load_ablation(args.file)
        args.out = args.out or default_out(args.file)
        tasks = build_tasks(ablation, args.out, args.rows, args.seeds)
    except AblationFormatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.task is not None:
        return run_array_task(ablation, tasks, args.task, extra)
    if args.check:
        return check(ablation, tasks, args.file, extra)
    pending = [i for i, task in enumerate(tasks) if read_status(task).get("status") != "done"]
    if args.dry_run:
        return dry_run(ablation, tasks, pending, args, extra)
    keep_ablation_file(args.file, args.out)
    failed: list[Task] = []
    if args.launcher == "local" and not args.collect:
        failed = run_local(ablation, tasks, extra, args.in_process)
    elif args.launcher == "slurm" and not args.collect and pending:
        job = submit_slurm(sbatch_script(ablation, args.file, pending, args, extra), args.out,
                           wait=not args.no_wait)
        print(f"[ablate] submitted array job {job} ({len(pending)} tasks)", flush=True)
        if args.no_wait:
            submit_collect(ablation, args, job)
            return 0
        failed = [t for t in tasks if read_status(t).get("status") != "done"]
    return report(ablation, tasks, args.out, failed)


def run_array_task(ablation: Ablation, tasks: list[Task], index: int, extra: list[str]) -> int:
    """One task of the array job (all ranks of it under srun), in this process."""
    if not 0 <= index < len(tasks):
        print(f"error: --task {index} outside 0..{len(tasks) - 1}", file=sys.stderr)
        return 2
    return 1 if run_task(ablation, tasks[index], extra, in_process=True) == "failed" else 0


def check(ablation: Ablation, tasks: list[Task], file: Path, extra: list[str]) -> int:
    """`--check`: every row's arguments parsed, nothing run; 1 if a row does not parse."""
    errors = check_rows(ablation, tasks, extra)
    for name, message in errors.items():
        print(f"{file}: row {name!r}: {message}", file=sys.stderr)
    print(f"{file}: {len({t.row.name for t in tasks}) - len(errors)} rows parse, {len(errors)} do not")
    return 1 if errors else 0


def dry_run(ablation: Ablation, tasks: list[Task], pending: list[int], args: argparse.Namespace,
            extra: list[str]) -> int:
    """`--dry-run`: the commands of every task (and the sbatch script of the pending ones), nothing run."""
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
    if args.estimate:
        print_estimates(ablation, [tasks[i] for i in pending], extra)
    return 0


def print_estimates(ablation: Ablation, pending: list[Task], extra: list[str]) -> None:
    """`--estimate`: each row's time per run from a few measured steps (`segcentroids.ablate.estimate`), and the
    total of the runs still to do."""
    from segcentroids.ablate.estimate import describe, duration, estimate, measure_row, start_seconds

    print("\n# time estimate on this machine (a few steps of each row measured here)")
    start_s, total, unmeasured = start_seconds(), 0.0, []
    for name, tasks in _by_row(pending).items():
        try:
            measurement = measure_row(ablation, tasks[0], extra, start_s)
        except RuntimeError as error:
            unmeasured.append(name)
            print(f"# {name}: not measured ({error})")
            continue
        total += len(tasks) * estimate(measurement)["total"]
        print(f"# {name}: {len(tasks)} run(s) of {describe(measurement)}")
    note = f" ({len(unmeasured)} row(s) not measured: {', '.join(unmeasured)})" if unmeasured else ""
    print(f"# total: {duration(total)} for {len(pending)} run(s) to do{note}")


def _by_row(tasks: list[Task]) -> dict[str, list[Task]]:
    rows: dict[str, list[Task]] = {}
    for task in tasks:
        rows.setdefault(task.row.name, []).append(task)
    return rows


def run_local(ablation: Ablation, tasks: list[Task], extra: list[str], in_process: bool) -> list[Task]:
    """Every task in turn on this machine; returns the ones that failed."""
    failed = []
    for i, task in enumerate(tasks):
        print(f"[ablate] ({i + 1}/{len(tasks)}) {task.row.name} / seed {task.seed} -> {task.run_dir}", flush=True)
        outcome = run_task(ablation, task, extra, in_process=in_process)
        print(f"[ablate] {task.row.name} / seed {task.seed}: {outcome}", flush=True)
        if outcome == "failed":
            failed.append(task)
    return failed


def report(ablation: Ablation, tasks: list[Task], out: Path, failed: list[Task]) -> int:
    """Writes and prints the table, then the failed tasks (also those a status file marks failed); 1 if any."""
    print(collect(ablation, tasks, out))
    failed = failed or [t for t in tasks if read_status(t).get("status") == "failed"]
    for task in failed:
        error = read_status(task).get("error") or "did not finish"
        print(f"[ablate] FAILED {task.row.name} / seed {task.seed} ({task.run_dir}): {error.splitlines()[0]}",
              file=sys.stderr)
    print(f"[ablate] table: {out / 'table.md'} and {out / 'table.csv'}; figures: table.png/svg, curves.png/svg")
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------------- `report`
KEPT_FILE = "ablation.yaml"  # the runner's copy of the table's file, in its output folder


def keep_ablation_file(file: Path, out: Path) -> None:
    """Copies the table's file to `<out>/ablation.yaml`, which `report OUT_DIR` reads."""
    out.mkdir(parents=True, exist_ok=True)
    if file.resolve() != (out / KEPT_FILE).resolve():
        shutil.copyfile(file, out / KEPT_FILE)


def finished_tasks(ablation: Ablation, out: Path) -> list[Task]:
    """The tasks of `out` that ran (those with a status file): the rows that have one, in the file's order, times
    every seed found."""
    ran = {(row.name, int(path.parent.name.removeprefix("seed"))) for row in ablation.rows
           for path in (out / row.slug).glob(f"seed*/{STATUS_FILE}") if path.parent.name[4:].isdigit()}
    if not ran:
        raise AblationFormatError(f"{out}: no runs of {ablation.path} here (no <row>/seed<k>/{STATUS_FILE})")
    rows = [row.name for row in ablation.rows if any(name == row.name for name, _ in ran)]
    return build_tasks(ablation, out, rows, sorted({seed for _, seed in ran}))


def report_main(argv: list[str]) -> int:
    """`segcentroids-ablate report OUT_DIR [--file FILE]`: the table and figures rebuilt from the finished runs of
    OUT_DIR, nothing run."""
    parser = argparse.ArgumentParser(prog="segcentroids-ablate report", allow_abbrev=False,
                                     description="Rebuild table.md/csv and the figures from finished runs.")
    parser.add_argument("out", type=Path, help="the runner's output folder")
    parser.add_argument("--file", type=Path, help=f"the table's file (default: OUT/{KEPT_FILE}, the runner's copy)")
    args = parser.parse_args(argv)
    file = args.file or args.out / KEPT_FILE
    try:
        if not args.out.is_dir():
            raise AblationFormatError(f"{args.out}: no such folder")
        if not file.is_file():
            raise AblationFormatError(f"{args.out}: no {KEPT_FILE} (the runner's copy of the table's file): pass "
                                      "the table's file with --file")
        ablation = load_ablation(file, check_files=False)
        tasks = finished_tasks(ablation, args.out)
    except AblationFormatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(collect(ablation, tasks, args.out))
    print(f"[ablate] rebuilt from {len(tasks)} runs: {args.out / 'table.md'}, table.csv and the figures")
    return 0
