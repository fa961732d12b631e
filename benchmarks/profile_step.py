"""Where a method's training step (or inference) spends more time than the Baseline's: `torch.profiler` per op.

    python benchmarks/profile_step.py --method PNE [--mode train|inference] [--steps 5] [--top 15] [--json out.json]

Same SegModel, crop, batch and method settings as `benchmarks/cost.py` (FPN-R18, 128x128, batch 4, K = 8, one
thread). Each model runs `--steps` profiled steps after a warm-up, in turn with the other; per op (`aten::...` and the
named `record_function` regions) it reports the self CPU time per step of the Baseline and of the method and their
difference, sorted by that difference: the ops that make up the method's extra time. Then the same times summed by
kind of op (arithmetic: convolutions and matrix products, what the FLOPs count; moves: gathers, scatters, copies,
sorts; other: elementwise, normalisation, pooling, reductions) and the throughput of the arithmetic: the Baseline's
and that of the method's extra FLOPs (`torch.utils.flop_counter`, as `cost.py` counts them). A time ratio above the
FLOPs ratio comes from extra time outside the arithmetic, or from extra FLOPs that run slower than the Baseline's.
Prints JSON, then Markdown tables.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict

from cost import METHODS, SETTING, build, emit, infer, make_batch, train_gflops, train_step, use_setting
from torch.profiler import ProfilerActivity, profile

from segcentroids.callbacks.run_recorder import inference_cost
from segcentroids.methods import Baseline

ARITHMETIC = re.compile(r"conv|^aten::(mm|bmm|addmm|baddbmm|addbmm|_grouped_mm|matmul|linear)$")
MOVES = re.compile(r"^aten::(index|gather|scatter|copy_|cat|repeat|clone|contiguous|sort|nonzero|masked_select|take)")


def self_times_ms(run) -> dict[str, float]:
    """Self CPU milliseconds of every op name in one profiled call."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run()
    return {event.key: event.self_cpu_time_total / 1e3 for event in profiler.key_averages()}


def alternating_self_times(baseline, model, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Per-step self times of each op, Baseline and method profiled in turn (ABAB, after a warm-up each, as every
    benchmark times), so that a drift of the machine reaches both alike."""
    baseline(), model()
    totals: tuple[dict[str, float], dict[str, float]] = (defaultdict(float), defaultdict(float))
    for _ in range(steps):
        for run, total in zip((baseline, model), totals):
            for op, ms in self_times_ms(run).items():
                total[op] += ms / steps
    return dict(totals[0]), dict(totals[1])


def compare(method: str, args: argparse.Namespace) -> dict:
    batch = make_batch(args)
    make = train_step if args.mode == "train" else infer
    baseline = make(build(Baseline, {}, args), batch, args)
    model = make(build(*METHODS[method], args), batch, args)
    base, ours = alternating_self_times(baseline, model, args.steps)
    rows = [{"op": op, "baseline_ms": round(base.get(op, 0.0), 2), "method_ms": round(ours.get(op, 0.0), 2),
             "extra_ms": round(ours.get(op, 0.0) - base.get(op, 0.0), 2)} for op in set(base) | set(ours)]
    rows.sort(key=lambda row: row["extra_ms"], reverse=True)
    gflops = (train_gflops if args.mode == "train" else inference_gflops)
    base_gflops = gflops(build(Baseline, {}, args), batch)
    method_gflops = gflops(build(*METHODS[method], args), batch)
    return {"method": method, "mode": args.mode, "baseline_total_ms": round(sum(base.values()), 1),
            "method_total_ms": round(sum(ours.values()), 1), "ops": rows[: args.top],
            "categories": categories(base, ours, base_gflops, method_gflops)}


def inference_gflops(model, batch: dict) -> float:
    """FLOPs of the eval forward, per image."""
    return inference_cost(model, batch["image"][:1])["gflops"]


def category(op: str) -> str:
    """Which kind of work an op is: `arithmetic` (convolutions and matrix products, what the FLOPs count), `moves`
    (gathers, scatters, copies, sorts) or `other` (elementwise, normalisation, pooling, reductions)."""
    if ARITHMETIC.search(op):
        return "arithmetic"
    return "moves" if MOVES.search(op) else "other"


def categories(base: dict[str, float], ours: dict[str, float], base_gflops: float, method_gflops: float) -> dict:
    """Self time per category, and the arithmetic's throughput: the Baseline's, and that of the method's extra FLOPs
    (GFLOP/s). Extra arithmetic slower than the Baseline's is work on shapes the kernels run less efficiently."""
    totals = {name: {"baseline_ms": 0.0, "method_ms": 0.0} for name in ("arithmetic", "moves", "other")}
    for times, key in ((base, "baseline_ms"), (ours, "method_ms")):
        for op, ms in times.items():
            totals[category(op)][key] += ms
    for values in totals.values():
        values["extra_ms"] = values["method_ms"] - values["baseline_ms"]
    arithmetic, images = totals["arithmetic"], SETTING["batch"]
    extra_ms = arithmetic["extra_ms"]
    summary = {name: {key: round(value, 2) for key, value in values.items()} for name, values in totals.items()}
    summary["gflops_per_image"] = {"baseline": round(base_gflops, 3), "method": round(method_gflops, 3)}
    summary["arithmetic_gflop_per_s"] = {
        "baseline": round(base_gflops * images / arithmetic["baseline_ms"] * 1e3, 1),
        "method_extra": round((method_gflops - base_gflops) * images / extra_ms * 1e3, 1) if extra_ms > 0 else None,
    }
    return summary


def markdown(result: dict) -> str:
    lines = [f"{result['method']} {result['mode']} step: {result['method_total_ms']} ms self CPU time per step vs "
             f"the Baseline's {result['baseline_total_ms']} ms; the ops with the most extra time.", "",
             "| op | Baseline ms | method ms | extra ms |", "|---|---|---|---|"]
    lines += [f"| `{r['op']}` | {r['baseline_ms']} | {r['method_ms']} | {r['extra_ms']} |" for r in result["ops"]]
    summary = result["categories"]
    lines += ["", "| kind of op | Baseline ms | method ms | extra ms |", "|---|---|---|---|"]
    for name in ("arithmetic", "moves", "other"):
        times = summary[name]
        lines.append(f"| {name} | {times['baseline_ms']} | {times['method_ms']} | {times['extra_ms']} |")
    rate, flops = summary["arithmetic_gflop_per_s"], summary["gflops_per_image"]
    lines += ["", f"GFLOPs per image: Baseline {flops['baseline']}, method {flops['method']}; arithmetic throughput: "
                  f"Baseline {rate['baseline']} GFLOP/s, the method's extra FLOPs {rate['method_extra']} GFLOP/s."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=list(METHODS), required=True)
    parser.add_argument("--mode", choices=["train", "inference"], default="train")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json", help="also write the JSON here")
    args = use_setting(parser.parse_args(argv))
    result = compare(args.method, args)
    return emit(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
