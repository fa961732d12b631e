"""Throughput of the Baseline and every method on a paper model and crop, eager and with the speed options.

    python benchmarks/gpu.py [--models deeplabv3_r50 fpn_r18_ch128 segformer_mit-b4] [--size 512] [--batch 8]
                             [--classes 150] [--repeats 10] [--methods Baseline MCIBI ...] [--variants eager fast]
                             [--compile-backend inductor] [--json gpu.json] [--markdown gpu.md]

Models are SegModel blocks of `configs/model/` (without pretrained weights). Per model, method and variant:

- `eager`: float32, contiguous tensors, no compilation;
- `fast`: the speed options (`segcentroids.callbacks.SpeedOptions`): the SegModel compiled, model and images
  channels-last, cuDNN autotuning, and bf16 autocast on CUDA (float32 on the CPU);

it reports training images/s (forward, backward, SGD step and the method's own batch hooks, as `benchmarks/cost.py`
times them), inference images/s (whole-image eval forward), the peak memory of a training step (CUDA:
`max_memory_allocated`; CPU: the tensors the step creates), training TFLOP/s (forward + backward FLOPs counted by
`torch.utils.flop_counter`, divided by the step time) and its share of the device's dense bf16 peak (`PEAK_BF16_TFLOPS`;
none for a CPU or an unknown device). Contenders of one model run in turn (ABAB), medians. A method that cannot be
built on a model (e.g. a stride it needs) gets a row with the reason. On a CPU it runs unchanged at a small size (the
tests run it with `--size 32 --batch 1`); absolute times mean something only on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import warnings
from pathlib import Path

import torch
import yaml
from cost import METHODS, peak_memory_mib, train_gflops, train_step
from timing import alternate
from workload import blocky_labels

from segcentroids.callbacks import SpeedOptions
from segcentroids.methods import Baseline
from segcentroids.models import SegModel

MODEL_BLOCKS = Path(__file__).resolve().parents[1] / "configs" / "model"
PEAK_BF16_TFLOPS = {  # dense bf16 tensor-core peaks from the vendors' data sheets
    "H100 SXM": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4,
    "A100": 312.0, "A10": 125.0, "L40S": 362.0, "L4": 121.0, "RTX 4090": 165.2, "B200": 2250.0,
}
VARIANTS = ("eager", "fast")


def device_peak(name: str) -> float | None:
    """The dense bf16 peak (TFLOP/s) of a device by its CUDA name, longest matching key first."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_TFLOPS[key]
    return None


def segmodel_of(block: str, classes: int) -> SegModel:
    """The SegModel of `configs/model/<block>.yaml`, without pretrained weights."""
    path = MODEL_BLOCKS / f"{block}.yaml"
    if not path.is_file():
        raise SystemExit(f"--models: no model block {path}")
    init_args = dict(yaml.safe_load(path.read_text())["init_args"], encoder_weights=None)
    if "num_classes" in init_args:
        init_args["num_classes"] = classes
    return SegModel(**init_args)


def build(method: str, block: str, args: argparse.Namespace, variant: str) -> Baseline:
    cls, kwargs = (Baseline, {}) if method == "Baseline" else METHODS[method]
    if method == "MLSeg":
        kwargs = {**kwargs, "kappa": min(kwargs["kappa"], args.classes)}
    torch.manual_seed(0)
    model = cls(segmodel=segmodel_of(block, args.classes), num_classes=args.classes, **kwargs).to(args.device)
    if variant == "fast":
        SpeedOptions(compile=True, backend=args.compile_backend, channels_last=True,
                     cudnn_benchmark=args.device.startswith("cuda")).apply(model)
    return model


def make_batch(args: argparse.Namespace, variant: str) -> dict:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    if variant == "fast":
        images = images.contiguous(memory_format=torch.channels_last)
    labels = blocky_labels(args.batch, args.size, args.classes, generator)
    return {"image": images.to(args.device), "mask": labels.to(args.device), "name": [""] * args.batch}


def bf16_if_fast(args: argparse.Namespace, variant: str) -> contextlib.AbstractContextManager:
    if variant == "fast" and args.device.startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def contenders(method: str, block: str, args: argparse.Namespace) -> dict[str, dict]:
    """Per variant: the model, its batch, its training step and its inference (or the reason it cannot run)."""
    out: dict[str, dict] = {}
    for variant in args.variants:
        try:
            model, batch = build(method, block, args, variant), make_batch(args, variant)
        except (ValueError, RuntimeError) as error:
            out[variant] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
            continue
        step_args = argparse.Namespace(bf16=variant == "fast" and args.device.startswith("cuda"), device=args.device)

        def inference(model: Baseline = model, batch: dict = batch, variant: str = variant) -> None:
            model.eval()
            with torch.no_grad(), bf16_if_fast(args, variant):
                model(batch["image"])

        out[variant] = {"model": model, "batch": batch, "train": train_step(model, batch, step_args),
                        "inference": inference}
    return out


def measure(block: str, method: str, args: argparse.Namespace) -> list[dict]:
    runs = contenders(method, block, args)
    ready = {variant: run for variant, run in runs.items() if "error" not in run}
    timed: dict[str, dict[str, float]] = {}
    if ready:
        start = time.perf_counter()
        train = alternate({v: r["train"] for v, r in ready.items()}, args.repeats, args.device)
        inference = alternate({v: r["inference"] for v, r in ready.items()}, args.repeats, args.device)
        timed = {v: {"train_s": train[v], "inference_s": inference[v]} for v in ready}
        print(f"[gpu] {block} {method}: timed in {time.perf_counter() - start:.0f} s", flush=True)
    peak = device_peak(args.device_name)
    rows = []
    for variant, run in runs.items():
        row = {"model": block, "method": method, "variant": variant}
        if "error" in run:
            rows.append({**row, "error": run["error"]})
            continue
        flops = train_gflops(run["model"], run["batch"]) * args.batch * 1e9
        seconds = timed[variant]
        tflops = flops / seconds["train_s"] / 1e12
        rows.append({**row, "train_images_per_s": round(args.batch / seconds["train_s"], 2),
                     "inference_images_per_s": round(args.batch / seconds["inference_s"], 2),
                     "peak_train_memory_MiB": round(peak_memory_mib(run["train"], args.device), 1),
                     "train_tflops": float(f"{tflops:.4g}"),
                     "share_of_bf16_peak": None if peak is None else round(tflops / peak, 4)})
    return rows


def markdown(result: dict) -> str:
    lines = [f"Throughput ({result['setting']}; device: {result['device_name']}, dense bf16 peak "
             f"{result['peak_bf16_tflops'] or '-'} TFLOP/s).", "",
             "| model | method | variant | train img/s | inference img/s | peak train MiB | train TFLOP/s | "
             "share of bf16 peak |", "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['method']} | {row['variant']} | n/a: {row['error']} ||||| ")
            continue
        share = "-" if row["share_of_bf16_peak"] is None else f"{100 * row['share_of_bf16_peak']:.1f} %"
        lines.append(f"| {row['model']} | {row['method']} | {row['variant']} | {row['train_images_per_s']} | "
                     f"{row['inference_images_per_s']} | {row['peak_train_memory_MiB']} | {row['train_tflops']} | "
                     f"{share} |")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["deeplabv3_r50", "fpn_r18_ch128", "segformer_mit-b4"],
                        help="configs/model/<name>.yaml blocks")
    parser.add_argument("--methods", nargs="+", choices=["Baseline", *METHODS], default=["Baseline", *METHODS])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--size", type=int, default=512, help="square crop")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the fast variant")
    parser.add_argument("--json", help="also write the JSON here")
    parser.add_argument("--markdown", help="also write the Markdown table here")
    args = parser.parse_args(argv)
    args.device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    warnings.filterwarnings("ignore", message=".*self.log.*")
    rows = [row for block in args.models for method in args.methods for row in measure(block, method, args)]
    setting = f"{args.size}x{args.size}, batch {args.batch}, K={args.classes}, {args.repeats} repeats"
    result = {"setting": setting, "device_name": args.device_name, "peak_bf16_tflops": device_peak(args.device_name),
              "rows": rows}
    print(json.dumps(result, indent=2))
    table = markdown(result)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return result


if __name__ == "__main__":
    main()
