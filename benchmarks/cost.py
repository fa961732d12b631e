"""Cost of each method against the Baseline on the same SegModel, crop and batch.

    python benchmarks/cost.py [--arch fpn] [--encoder resnet18] [--size 128] [--batch 4] [--classes 8]
                              [--repeats 5] [--methods MCIBI PNE ...] [--device cpu|cuda] [--bf16] [--channels-last]
                              [--json cost.json]

Per method: parameters (all / used by the inference graph), inference GFLOPs of one image at the crop
(`torch.utils.flop_counter`), training GFLOPs of one image (forward + backward), training step time (the method's
`training_step` + backward + SGD step + its own callbacks' batch hooks, e.g. MCIBI's memory update), inference time
(eval forward of the batch), and peak memory of a training step (CUDA: `max_memory_allocated` above what was allocated
before; CPU: the peak of the tensor storages the step creates, tracked op by op). Baseline and method are timed
alternately in one process (ABAB, after a warm-up), medians; ratios are method / Baseline. Every model is built from
the same seed on the same SegModel; the method arguments are the paper defaults with the CPU sizes of
configs/ablations/quickstart.yaml.
Prints JSON, then a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import warnings
import weakref
from collections.abc import Callable
from types import SimpleNamespace

import torch
from timing import abab, synchronize
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from workload import blocky_labels

from segcentroids.callbacks.run_recorder import flop_counter, inference_cost
from segcentroids.methods import MCIBI, MVSC, PNE, Baseline, MLSeg, SpecializeFuse
from segcentroids.models import SegModel

METHODS: dict[str, tuple[type[Baseline], dict]] = {
    "MCIBI": (MCIBI, {"memory_channels": 128, "transform_channels": 64}),
    "SpecializeFuse": (SpecializeFuse, {"unity_channels": 32, "semantic_channels": 128}),
    "PNE": (PNE, {}),
    "MLSeg": (MLSeg, {"kappa": 6, "classifier": "linear", "rank_temperature": "per_rank"}),
    "MVSC": (MVSC, {}),
}


# The setting of this benchmark, for the scripts that profile or vary it (`profile_step.py`, `overheads.py`).
SETTING = {"arch": "fpn", "encoder": "resnet18", "decoder_channels": 64, "size": 128, "batch": 4, "classes": 8,
           "device": "cpu", "bf16": False, "channels_last": False}


def use_setting(args: argparse.Namespace) -> argparse.Namespace:
    """`args` with this benchmark's setting (`SETTING`), on one CPU thread."""
    for key, value in SETTING.items():
        setattr(args, key, value)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*self.log.*")
    return args


def emit(result: dict, table: str, json_path: str | None) -> dict:
    """Prints the JSON, then the Markdown table; also writes the JSON to `json_path` if given."""
    print(json.dumps(result, indent=2))
    print(table)
    if json_path:
        with open(json_path, "w") as stream:
            json.dump(result, stream, indent=2)
    return result


def build(method: type[Baseline], kwargs: dict, args: argparse.Namespace) -> Baseline:
    torch.manual_seed(0)
    segmodel = SegModel(arch=args.arch, encoder_name=args.encoder, encoder_weights=None,
                        decoder_channels=args.decoder_channels)
    model = method(segmodel=segmodel, num_classes=args.classes, **kwargs).to(args.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_batch(args: argparse.Namespace) -> dict:
    generator = torch.Generator().manual_seed(0)
    labels = blocky_labels(args.batch, args.size, args.classes, generator)  # a few classes per image, some ignore
    images = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return {"image": images.to(args.device), "mask": labels.to(args.device), "name": [""] * args.batch}


def autocast(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    if not args.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16)



def train_step(model: Baseline, batch: dict, args: argparse.Namespace) -> Callable[[], None]:
    """One optimisation step as the Trainer runs it, with the method's own callbacks' batch hooks."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    callbacks = model.configure_callbacks() or []
    callbacks = [callbacks] if not isinstance(callbacks, (list, tuple)) else list(callbacks)
    trainer = SimpleNamespace(global_step=0, max_steps=1000, estimated_stepping_batches=1000, world_size=1,
                              is_global_zero=True, training=True, sanity_checking=False, current_epoch=0,
                              logger=None, loggers=[], log_every_n_steps=50, num_training_batches=1000,
                              max_epochs=1, lightning_module=model)

    def run() -> None:
        model.train()
        for callback in callbacks:
            callback.on_train_batch_start(trainer, model, batch, 0)
        with autocast(args):
            output = model.training_step(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        output["loss"].backward()
        optimizer.step()
        for callback in callbacks:
            callback.on_train_batch_end(trainer, model, output, batch, 0)
        trainer.global_step += 1

    return run


def infer(model: Baseline, batch: dict, args: argparse.Namespace) -> Callable[[], None]:
    def run() -> None:
        model.eval()
        with torch.no_grad(), autocast(args):
            model(batch["image"])

    return run



class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of CPU tensor storages alive at once among those created while the mode is active (activations,
    gradients, temporaries; not the parameters or optimizer state that existed before). Each new output storage is
    counted when an op creates it and uncounted when it is freed (a weakref finalizer): exact and independent of how
    the C allocator caches memory, unlike the resident set size."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, weakref.finalize] = {}
        self.current = 0
        self.peak = 0

    def _release(self, key: int, nbytes: int) -> None:
        if self.live.pop(key, None) is not None:
            self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # outputs that alias an input (in-place updates of weights and optimizer state, views) are not new memory
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                storage = tensor.untyped_storage()
                if id(storage) not in self.live and storage.data_ptr() not in inputs:
                    nbytes = storage.nbytes()
                    self.live[id(storage)] = weakref.finalize(storage, self._release, id(storage), nbytes)
                    self.current += nbytes
                    self.peak = max(self.peak, self.current)
        return out


def peak_memory_mib(fn: Callable[[], None], device: str) -> float:
    """Peak memory of one call of `fn` (after a warm-up call) above what was in use before it (MiB): CUDA's
    `max_memory_allocated`, or on CPU the peak of the tensors it creates (`PeakTensorMemory`)."""
    fn()
    if torch.device(device).type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with PeakTensorMemory() as tracker:
        fn()
    return tracker.peak / 2**20


def train_gflops(model: Baseline, batch: dict) -> float:
    """FLOPs of one training forward + backward, per image."""
    model.train()
    with torch.random.fork_rng(devices=[]), flop_counter() as counter:
        model.training_step(batch, 0)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9 / batch["image"].shape[0]


def measure(name: str, method: type[Baseline], kwargs: dict, baseline: Baseline, batch: dict,
            args: argparse.Namespace) -> dict:
    model = build(method, kwargs, args)
    base_train, train = abab(train_step(baseline, batch, args), train_step(model, batch, args), args.repeats,
                             args.device)
    base_infer, inference = abab(infer(baseline, batch, args), infer(model, batch, args), args.repeats, args.device)
    cost, base_cost = inference_cost(model, batch["image"][:1]), inference_cost(baseline, batch["image"][:1])
    memory = peak_memory_mib(train_step(model, batch, args), args.device)
    base_memory = peak_memory_mib(train_step(baseline, batch, args), args.device)
    flops, base_flops = train_gflops(model, batch), train_gflops(baseline, batch)

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else round(a / b, 3)

    return {
        "method": name,
        "params_M": round(cost["params"] / 1e6, 3), "inference_params_M": round(cost["params_inference"] / 1e6, 3),
        "baseline_params_M": round(base_cost["params"] / 1e6, 3),
        "inference_gflops": round(cost["gflops"], 3), "baseline_inference_gflops": round(base_cost["gflops"], 3),
        "train_gflops": round(flops, 3), "baseline_train_gflops": round(base_flops, 3),
        "train_step_ms": round(train * 1e3, 1), "baseline_train_step_ms": round(base_train * 1e3, 1),
        "inference_ms": round(inference * 1e3, 1), "baseline_inference_ms": round(base_infer * 1e3, 1),
        "peak_memory_MiB": None if memory is None else round(memory, 1),
        "baseline_peak_memory_MiB": None if base_memory is None else round(base_memory, 1),
        "ratios": {
            "params": ratio(cost["params"], base_cost["params"]),
            "inference_params": ratio(cost["params_inference"], base_cost["params_inference"]),
            "inference_flops": ratio(cost["gflops"], base_cost["gflops"]),
            "train_flops": ratio(flops, base_flops),
            "train_step": ratio(train, base_train),
            "inference": ratio(inference, base_infer),
            "peak_memory": ratio(memory, base_memory),
        },
    }


def markdown(rows: list[dict], setting: str) -> str:
    lines = [f"Cost against the Baseline ({setting}); ratio = method / Baseline, ABAB medians.", "",
             "| method | params (M) all / inference | inference GFLOPs/img (×) | train GFLOPs/img (×) | "
             "train step ms (×) | inference ms (×) | peak train memory MiB (×) |",
             "|---|---|---|---|---|---|---|"]
    if rows:  # the Baseline was measured beside every method: its medians over those measurements
        first = rows[0]

        def median(key: str) -> str:
            values = [r[key] for r in rows if r[key] is not None]
            return f"{statistics.median(values):.1f}" if values else "-"

        lines.append(f"| Baseline | {first['baseline_params_M']:.2f} / {first['baseline_params_M']:.2f} | "
                     f"{first['baseline_inference_gflops']:.3f} | {first['baseline_train_gflops']:.3f} | "
                     f"{median('baseline_train_step_ms')} | {median('baseline_inference_ms')} | "
                     f"{median('baseline_peak_memory_MiB')} |")
    for row in rows:
        r = row["ratios"]
        lines.append(
            f"| {row['method']} | {row['params_M']:.2f} / {row['inference_params_M']:.2f} | "
            f"{row['inference_gflops']:.3f} ({r['inference_flops']}) | {row['train_gflops']:.3f} ({r['train_flops']}) "
            f"| {row['train_step_ms']:.1f} ({r['train_step']}) | {row['inference_ms']:.1f} ({r['inference']}) | "
            f"{row['peak_memory_MiB']} ({r['peak_memory']}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="fpn")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--decoder-channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=128, help="square crop")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last model and images")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*self.log.*")
    setting = (f"{args.arch} {args.encoder}, {args.size}x{args.size}, batch {args.batch}, K={args.classes}, "
               f"{args.device}{' bf16' if args.bf16 else ''}{' channels_last' if args.channels_last else ''}, "
               f"{args.threads} thread(s), {args.repeats} repeats")
    batch = make_batch(args)
    baseline = build(Baseline, {}, args)
    rows = [measure(name, *METHODS[name], baseline, batch, args) for name in args.methods]
    result = {"setting": setting, "device_name": torch.cuda.get_device_name(args.device)
              if torch.device(args.device).type == "cuda" else "cpu", "rows": rows}
    return emit(result, markdown(rows, setting), args.json)


if __name__ == "__main__":
    main()
