"""Before and after of the overhead fixes of issue 22, in one process, against the Baseline.

    python benchmarks/overheads.py [--repeats 7] [--json overheads.json]

The `cost.py` setting (FPN-R18, 128x128, batch 4, K = 8, one thread). "Before" variants switch a fix off for the
duration of each call: PNE with its anchor-template products on the copy + `bmm` path (`ops.blocks`), and
Specialize-and-Fuse with the unity head's output convolution on a D_u-channel difference map per level (the head as
it was). Every contender's training step, and its inference, run in turn (Baseline, then each variant), after a
warm-up, medians. Per variant: time / Baseline, FLOPs / Baseline (`torch.utils.flop_counter`), their quotient (1.00:
the time is the arithmetic) and the peak memory of a training step / Baseline. Prints JSON, then a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from cost import METHODS, build, emit, infer, make_batch, peak_memory_mib, train_gflops, train_step, use_setting
from timing import alternate

import segcentroids.ops.blocks as blocks
from segcentroids.callbacks.run_recorder import inference_cost
from segcentroids.methods import PNE, Baseline, SpecializeFuse
from segcentroids.nn.pyramid_heads import UnityHead, average_pyramid


@contextlib.contextmanager
def copied_templates() -> Iterator[None]:
    """PNE before: every chunk's template block copied, then `bmm`."""
    grouped = blocks.grouped_path_applies
    blocks.grouped_path_applies = lambda rows, templates: False
    try:
        yield
    finally:
        blocks.grouped_path_applies = grouped


def _difference_map_unity(self: UnityHead, x: torch.Tensor) -> list[torch.Tensor]:
    """The unity head as it was: `Conv1x1_o` on a D_u-channel difference map at every level."""
    x_u = self.reduce(x)
    pixel = self.pixel(x_u)
    unity = []
    for k, pooled in zip(self.cell_factors, average_pyramid(x_u, self.cell_factors)):
        centroid = self.centroid(pooled)
        diff = pixel - centroid.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
        prob = torch.sigmoid(self.output(diff).float())
        unity.append(-F.max_pool2d(-prob, k).squeeze(1))
    return unity


@contextlib.contextmanager
def difference_maps() -> Iterator[None]:
    """Specialize-and-Fuse before: the unity head's difference maps."""
    forward = UnityHead.forward
    UnityHead.forward = _difference_map_unity
    try:
        yield
    finally:
        UnityHead.forward = forward


VARIANTS: dict[str, tuple[type[Baseline], Callable[[], contextlib.AbstractContextManager]]] = {
    "PNE before (templates copied)": (PNE, copied_templates),
    "PNE after": (PNE, contextlib.nullcontext),
    "Specialize-and-Fuse before (difference maps)": (SpecializeFuse, difference_maps),
    "Specialize-and-Fuse after": (SpecializeFuse, contextlib.nullcontext),
}


def within(switch: Callable[[], contextlib.AbstractContextManager], run: Callable[[], object]) -> Callable[[], None]:
    def call() -> None:
        with switch():
            run()
    return call


def measure(args: argparse.Namespace) -> dict:
    batch = make_batch(args)
    models = {"Baseline": (build(Baseline, {}, args), contextlib.nullcontext)}
    for name, (method, switch) in VARIANTS.items():
        models[name] = (build(method, METHODS[method.__name__][1], args), switch)
    train = alternate({name: within(switch, train_step(model, batch, args)) for name, (model, switch)
                       in models.items()}, args.repeats)
    inference = alternate({name: within(switch, infer(model, batch, args)) for name, (model, switch)
                           in models.items()}, args.repeats)
    rows = []
    for name, (model, switch) in models.items():
        with switch():
            flops = train_gflops(model, batch)
            inference_flops = inference_cost(model, batch["image"][:1])["gflops"]
            memory = peak_memory_mib(train_step(model, batch, args), "cpu")
        rows.append({"variant": name, "train_ms": train[name] * 1e3, "inference_ms": inference[name] * 1e3,
                     "train_gflops": flops, "inference_gflops": inference_flops, "peak_memory_MiB": memory})
    base = rows[0]
    for row in rows:
        for key in ("train_ms", "inference_ms", "train_gflops", "inference_gflops", "peak_memory_MiB"):
            row[f"{key}_ratio"] = round(row[key] / base[key], 3)
            row[key] = round(row[key], 2)
        row["train_time_per_flops"] = round(row["train_ms_ratio"] / row["train_gflops_ratio"], 3)
        row["inference_time_per_flops"] = round(row["inference_ms_ratio"] / row["inference_gflops_ratio"], 3)
    setting = (f"fpn resnet18, {args.size}x{args.size}, batch {args.batch}, K={args.classes}, cpu, one thread, "
               f"{args.repeats} repeats")
    return {"setting": setting, "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"Setting: {result['setting']}. Ratios to the Baseline; time/FLOPs 1.00 = the time is the arithmetic.",
             "", "| variant | train ms (×) | train FLOPs × | train time/FLOPs | inference ms (×) | inference FLOPs × | "
             "inference time/FLOPs | peak train memory MiB (×) |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | {r['train_ms']} ({r['train_ms_ratio']}) | {r['train_gflops_ratio']} | "
                     f"{r['train_time_per_flops']} | {r['inference_ms']} ({r['inference_ms_ratio']}) | "
                     f"{r['inference_gflops_ratio']} | {r['inference_time_per_flops']} | {r['peak_memory_MiB']} "
                     f"({r['peak_memory_MiB_ratio']}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="also write the JSON here")
    args = use_setting(parser.parse_args(argv))
    result = measure(args)
    return emit(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
