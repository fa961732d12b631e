"""`--dry-run --estimate`: the time each row will take, from a few real training steps of its configuration.

Each row's `fit` runs in this process in a temporary folder with `StepClock` added: it reads the row's totals from
the trainer (training steps, batches between validations, validation batches), times the wall clock between training
steps after a warm-up (forward, backward, optimiser step and data loading) and then a few validation batches, and
stops the fit. The estimate of a run is

    steps x step time + validations x validation batches x batch time + evaluation batches x batch time
    + 2 x (setup + process start)

(setup: building the data, model and trainer; process start: importing the package in a fresh interpreter, once per
`segcentroids` command). The evaluation command's batches are timed as validation batches.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L

from segcentroids.ablate.runner import Task, command
from segcentroids.ablate.spec import Ablation

CLOCK = "--trainer.callbacks+=segcentroids.ablate.estimate.StepClock"
MEASURE_ARGS = ["--trainer.logger=false", "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false", CLOCK]


@dataclass
class Measurement:
    """What one short run of a row measured, and the row's totals."""

    setup_s: float  # building data, model and trainer (in a warm process)
    start_s: float  # importing the package in a fresh interpreter
    step_s: float  # median wall time between training steps after the warm-up
    steps: int  # the row's training steps
    validations: int  # validations during the fit
    val_batches: int  # batches of one validation
    batch_s: float  # median wall time of a validation batch (0 when no validation ran)
    eval_batches: int  # batches of the evaluation command


def estimate(m: Measurement) -> dict[str, float]:
    """Seconds of one run: training, validation during the fit, the evaluation, setup; and their total."""
    parts = {"train": m.steps * m.step_s, "validation": m.validations * m.val_batches * m.batch_s,
             "evaluation": m.eval_batches * m.batch_s, "setup": 2 * (m.setup_s + m.start_s)}
    return {**parts, "total": sum(parts.values())}


def duration(seconds: float) -> str:
    """`1 h 02 min`, `3 min 05 s` or `42 s`."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def describe(m: Measurement) -> str:
    """One line: the estimate of one run and the numbers it comes from."""
    parts = estimate(m)
    return (f"{m.steps} steps x {m.step_s:.2f} s + {m.validations} validations x {m.val_batches} batches x "
            f"{m.batch_s:.2f} s + evaluation {m.eval_batches} batches + setup 2 x {m.setup_s + m.start_s:.1f} s "
            f"= {duration(parts['total'])}")


# ----------------------------------------------------------------------------------------------- measuring
class _Measured(Exception):
    """Stops the measuring fit, carrying what StepClock measured."""

    def __init__(self, record: dict) -> None:
        super().__init__("measured")
        self.record = record


def _limited(batches: int, limit: int | float) -> int:
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)


def _validations(trainer: L.Trainer, steps: int) -> int:
    """Validations during a fit of `steps` steps: one every `val_check_batch` steps of every
    `check_val_every_n_epoch`-th epoch."""
    every = trainer.val_check_batch
    if not trainer.enable_validation or not every or math.isinf(every):
        return 0
    return steps // int(every * (trainer.check_val_every_n_epoch or 1))


def _test_batches(trainer: L.Trainer) -> int | None:
    """Batches of the `test` command (the test loader's, within `limit_test_batches`); None without test data."""
    try:
        trainer.datamodule.setup("test")
        return _limited(len(trainer.datamodule.test_dataloader()), trainer.limit_test_batches)
    except Exception:  # no test split here: the evaluation is not estimated
        return None


class StepClock(L.Callback):
    """Times `timed_steps` training steps after `warmup_steps` (steps within an epoch: the end of one to the end of
    the next, data loading included), then `val_batches` validation batches after one, and stops the fit by raising
    `_Measured` with the times and the row's totals."""

    def __init__(self, warmup_steps: int = 2, timed_steps: int = 3, val_batches: int = 3) -> None:
        self.warmup_steps, self.timed_steps, self.val_batches = warmup_steps, timed_steps, val_batches
        self.record: dict = {}
        self.marks: list[float] = []
        self.val_marks: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        steps = int(trainer.estimated_stepping_batches)
        self.record = {"ready": time.perf_counter(), "steps": steps, "validations": _validations(trainer, steps),
                       "test_batches": _test_batches(trainer)}
        self.marks = []

    def _intervals(self) -> list[float]:
        """Wall times between the ends of consecutive training steps of one epoch (an epoch starts with NaN)."""
        return [b - a for a, b in zip(self.marks, self.marks[1:]) if not math.isnan(b - a)]

    def _time_steps(self) -> None:
        """The median step after the warm-up (in a run shorter than the clock, of the steps after the first)."""
        times = self._intervals()
        timed = times[self.warmup_steps:] or times[1:] or times
        if timed:
            self.record["step_s"] = statistics.median(timed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.marks.append(math.nan)

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self.marks.append(time.perf_counter())
        if len(self._intervals()) >= self.warmup_steps + self.timed_steps and "step_s" not in self.record:
            self._time_steps()
            trainer.should_stop = True  # Lightning validates once before it stops

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["val_batches"] = sum(trainer.num_val_batches)
        self.val_marks = [time.perf_counter()]

    def on_validation_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if "step_s" not in self.record:  # a validation before the steps were timed runs as usual
            return
        self.val_marks.append(time.perf_counter())
        if len(self.val_marks) > 1 + self.val_batches or len(self.val_marks) > self.record["val_batches"]:
            times = [b - a for a, b in zip(self.val_marks, self.val_marks[1:])]
            self.record["batch_s"] = statistics.median(times[1:] or times)  # the first batch warms up
            raise _Measured(self.record)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "step_s" not in self.record:
            self._time_steps()
        raise _Measured(self.record)  # no validation ran (or the run is shorter than the clock)


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """stdout, stderr and Lightning's log lines kept out of the dry run's output; yields the captured stderr."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as stderr, \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield stderr
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def start_seconds() -> float:
    """Wall time of importing the package in a fresh interpreter (what each `segcentroids` command pays first)."""
    begin = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import segcentroids.cli, segcentroids.methods"], check=True,
                   capture_output=True)
    return time.perf_counter() - begin


def measure_row(ablation: Ablation, task: Task, extra: list[str], start_s: float) -> Measurement:
    """Runs the start of the task's fit in this process in a temporary folder and returns what it measured; raises
    RuntimeError with the reason when the fit fails before it was measured."""
    from segcentroids.cli import main

    with tempfile.TemporaryDirectory() as folder:
        args = command(ablation, task, "fit", extra)[:-1] + MEASURE_ARGS
        args.append(f"--trainer.default_root_dir={Path(folder) / 'run'}")
        begin = time.perf_counter()
        try:
            with _quiet() as stderr:
                main(args)
        except _Measured as measured:
            record = measured.record
        except SystemExit as error:  # an argument error: its first line
            lines = [line for line in stderr.getvalue().splitlines() if line.startswith("segcentroids: error")]
            raise RuntimeError(lines[0] if lines else f"segcentroids fit exited with {error.code}") from error
        except Exception as error:
            raise RuntimeError(f"{type(error).__name__}: {error}".splitlines()[0]) from error
        else:
            raise RuntimeError("the fit ended before a step was timed")
    if "step_s" not in record:
        raise RuntimeError(f"the fit has {record.get('steps', 0)} step(s), too few to time")
    val_batches = record.get("val_batches", 0)
    eval_batches = val_batches if ablation.evaluate == "validate" else record["test_batches"] or 0
    return Measurement(record["ready"] - begin, start_s, record["step_s"], record["steps"],
                       record["validations"], val_batches, record.get("batch_s", 0.0), eval_batches)
