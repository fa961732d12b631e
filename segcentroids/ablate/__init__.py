"""`segcentroids-ablate`: YAML-driven ablation tables, run locally or as one SLURM array job.

    segcentroids-ablate FILE [--launcher local|slurm] [--seeds 0 1] [--rows NAME ...] [--out DIR] [--dry-run]
                        [--check] [extra CLI args appended to every row, e.g. --trainer.max_steps=20]

Every row x seed is one run folder `<out>/<row-slug>/seed<k>` holding a `fit` and then a `test` (or `validate`) of
`segcentroids` with the row's arguments. Results are read back from the machine-readable files the runs write
(the evaluation record's `eval/<command>-*/metrics/<split>.json` and `<split>_all.json`, the fit's
`metrics/cost.json`), and the table is written to `<out>/table.md` and `<out>/table.csv`, with the figures
`table.png/svg` and `curves.png/svg`. `segcentroids-ablate report OUT_DIR` rebuilds them from finished runs. The
format of FILE is in docs/ablations.md.

Modules: `spec` (the file, validated into an `Ablation`), `runner` (tasks, commands, status, running, checking),
`report` (collecting and formatting the table), `figures` (the table and curve figures), `estimate` (the dry run's
time estimate), `slurm` (the array job), `cli` (the command).
"""

from segcentroids.ablate.cli import main, parse_args
from segcentroids.ablate.figures import curves_figure, table_figure
from segcentroids.ablate.report import build_table, collect, collect_run, format_markdown, summarize, write_csv
from segcentroids.ablate.runner import (
    RunFailed,
    Task,
    build_tasks,
    check_rows,
    command,
    default_out,
    evaluation_folder,
    read_status,
    run_task,
)
from segcentroids.ablate.slurm import sbatch_script, submit_slurm
from segcentroids.ablate.spec import Ablation, AblationFormatError, Row, load_ablation, slugify

__all__ = [
    "Ablation",
    "AblationFormatError",
    "Row",
    "RunFailed",
    "Task",
    "build_table",
    "build_tasks",
    "check_rows",
    "collect",
    "collect_run",
    "command",
    "curves_figure",
    "default_out",
    "evaluation_folder",
    "format_markdown",
    "load_ablation",
    "main",
    "parse_args",
    "read_status",
    "run_task",
    "sbatch_script",
    "slugify",
    "submit_slurm",
    "summarize",
    "table_figure",
    "write_csv",
]
