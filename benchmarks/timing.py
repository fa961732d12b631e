"""The one timing rule of every benchmark: contenders run in turn (ABAB...), after one untimed warm-up each, medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: str | torch.device) -> None:
    """Wait for queued CUDA work, so that a timer measures the work itself (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def alternate(contenders: dict[str, Callable[[], object]], repeats: int, device: str | torch.device = "cpu",
              clock: Callable[[], float] = time.perf_counter, warmup: bool = True) -> dict[str, float]:
    """Median seconds of each contender, run in turn `repeats` times after one untimed warm-up each (`warmup=False`
    when the caller already ran each once, e.g. to read its output).

    `clock=time.process_time` measures the CPU time of this process: on a shared machine it leaves out the time other
    jobs hold the core.
    """
    if warmup:
        for run in contenders.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            synchronize(device)
            start = clock()
            run()
            synchronize(device)
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def abab(first: Callable[[], object], second: Callable[[], object], repeats: int, device: str | torch.device = "cpu",
         clock: Callable[[], float] = time.perf_counter) -> tuple[float, float]:
    """Median seconds of `first` and `second` (see `alternate`)."""
    medians = alternate({"first": first, "second": second}, repeats, device, clock)
    return medians["first"], medians["second"]
