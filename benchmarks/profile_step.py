"""Where a method's training step (or inference) spends more time than the Baseline's: `torch.profiler` per op.

    python benchmarks/profile_step.py --method PNE [--mode train|inference] [--steps 5] [--top 15] [--json out.json]

Same SegModel, crop, batch and method settings as `benchmarks/cost.py` (FPN-R18, 128x128, batch 4, K = 8, one
thread). Each model runs `--steps` profiled steps after a warm-up; per op (`aten::...` and the named
`record_function` regions) it reports the self CPU time per step of the Baseline and of the method and their
difference, sorted by that difference: the ops that make up the method's extra time. Prints JSON, then a Markdown
table.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from cost import METHODS, build, infer, make_batch, train_step
from torch.profiler import ProfilerActivity, profile

from segcentroids.methods import Baseline


def self_times_ms(run, steps: int) -> dict[str, float]:
    """Self CPU milliseconds per step of every op name over `steps` profiled calls (after one warm-up)."""
    run()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            run()
    totals: dict[str, float] = defaultdict(float)
    for event in profiler.key_averages():
        totals[event.key] += event.self_cpu_time_total / 1e3 / steps
    return dict(totals)


def compare(method: str, args: argparse.Namespace) -> dict:
    batch = make_batch(args)
    make = train_step if args.mode == "train" else infer
    baseline = make(build(Baseline, {}, args), batch, args)
    model = make(build(*METHODS[method], args), batch, args)
    base, ours = self_times_ms(baseline, args.steps), self_times_ms(model, args.steps)
    rows = [{"op": op, "baseline_ms": round(base.get(op, 0.0), 2), "method_ms": round(ours.get(op, 0.0), 2),
             "extra_ms": round(ours.get(op, 0.0) - base.get(op, 0.0), 2)} for op in set(base) | set(ours)]
    rows.sort(key=lambda row: row["extra_ms"], reverse=True)
    return {"method": method, "mode": args.mode, "baseline_total_ms": round(sum(base.values()), 1),
            "method_total_ms": round(sum(ours.values()), 1), "ops": rows[: args.top]}


def markdown(result: dict) -> str:
    lines = [f"{result['method']} {result['mode']} step: {result['method_total_ms']} ms self CPU time per step vs "
             f"the Baseline's {result['baseline_total_ms']} ms; the ops with the most extra time.", "",
             "| op | Baseline ms | method ms | extra ms |", "|---|---|---|---|"]
    lines += [f"| `{r['op']}` | {r['baseline_ms']} | {r['method_ms']} | {r['extra_ms']} |" for r in result["ops"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=list(METHODS), required=True)
    parser.add_argument("--mode", choices=["train", "inference"], default="train")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args(argv)
    defaults = {"arch": "fpn", "encoder": "resnet18", "decoder_channels": 64, "size": 128, "batch": 4, "classes": 8,
                "device": "cpu", "bf16": False, "channels_last": False}
    for key, value in defaults.items():
        setattr(args, key, value)
    torch.set_num_threads(1)
    result = compare(args.method, args)
    print(json.dumps(result, indent=2))
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
