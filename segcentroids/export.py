"""Export a method's whole-image inference graph: images `[B, 3, H, W]` -> class logits `[B, K, H, W]`.

`inference_module(method)` wraps the method's own whole-image evaluation (`method(images)` resized bilinearly to the
image size, what `Baseline.infer` does under `inference.mode=whole` at scale 1 without flip); `export` writes it as
ONNX (TorchScript-based exporter, `dynamo=False`), TorchScript (`torch.jit.trace`) or a `torch.export`
ExportedProgram, with dynamic batch, height and width. Training-only parts (auxiliary head, plug-in losses, MVSC's
centroids, PNE's projection head, MCIBI's memory-update state, MLSeg's loss and metrics) are never run by the graph and
are left out of it; `training_only_names(method)` lists them.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.core.module import _jit_is_scripting
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from segcentroids.config_errors import load_class
from segcentroids.methods import Baseline
from segcentroids.runs import RunFolderError, read_checkpoint

FORMATS = ("onnx", "torchscript", "exported_program")
Format = Literal["onnx", "torchscript", "exported_program"]
SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts", "exported_program": ".pt2"}
DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "logits"
DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}
EXPORT_HELP = ("Export a trained model's whole-image inference graph (images -> logits at the image size) to ONNX, "
               "TorchScript or a torch.export program (segcentroids export --help).")


class InferenceGraph(nn.Module):
    """The method's whole-image inference: logits at the feature stride, resized bilinearly to the image size."""

    def __init__(self, method: Baseline) -> None:
        super().__init__()
        self.method = method

    def forward(self, images: Tensor) -> Tensor:
        logits = self.method(images)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


class _TensorReads(TorchFunctionMode):
    """Records the ids of the tensors passed to any torch function."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ids.update(id(leaf) for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, Tensor))
        return func(*args, **kwargs)


def training_only_names(method: Baseline, sample: Tensor) -> list[str]:
    """Names of the parameters and buffers of `method` that its eval-mode forward on `sample` never reads: the
    training-only state (auxiliary head, plug-in loss heads, MVSC's centroids, MCIBI's update momentum and flags, the
    unity head under `fusion=finest`, BatchNorm's step counters)."""
    method.eval()
    with torch.no_grad(), _TensorReads() as reads:
        method(sample)
    state = [*method.named_parameters(), *method.named_buffers()]
    return [name for name, tensor in state if id(tensor) not in reads.ids]


def inference_module(method: Baseline, sample: Tensor | None = None) -> InferenceGraph:
    """`method`'s whole-image inference graph in eval mode, over a copy of the method without its training-only
    parameters and buffers (`training_only_names` on `sample`, default one 64x64 image); `method` is unchanged."""
    sample = torch.randn(1, 3, 64, 64) if sample is None else sample
    pruned = copy.deepcopy(method).eval()
    for name in training_only_names(pruned, sample):
        owner_name, _, attribute = name.rpartition(".")
        owner = pruned.get_submodule(owner_name)
        registry = owner._parameters if attribute in owner._parameters else owner._buffers
        registry[attribute] = None  # registered but absent: left out of the graph and of its state
    return InferenceGraph(pruned.requires_grad_(False)).eval()


class ExportError(RuntimeError):
    """A method's graph that a format cannot hold; the message names the method, the format and the op."""


def export(method: Baseline, format: Format, path: str | Path, sample_size: Sequence[int] = (2, 3, 64, 64),
           opset: int = DEFAULT_OPSET) -> Path:
    """Writes `method`'s inference graph to `path` in `format`, traced on a random image batch of `sample_size`
    (batch, channels, height, width); batch, height and width stay dynamic. Returns the path written."""
    if format not in FORMATS:
        raise ValueError(f"export format must be one of {list(FORMATS)}, got {format!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = torch.randn(*sample_size)
    module = inference_module(method, sample)
    with torch.no_grad():
        if format == "onnx":
            _export_onnx(module, sample, path, opset)
        elif format == "torchscript":
            with _jit_is_scripting():  # Lightning's guard: tracing reads every attribute, `trainer` included
                torch.jit.save(torch.jit.trace(module, (sample,)), str(path))
        else:
            dims = {axis: torch.export.Dim.AUTO for axis in DYNAMIC_AXES}
            torch.export.save(torch.export.export(module, (sample,), dynamic_shapes={"images": dims}), str(path))
    return path


def _export_onnx(module: InferenceGraph, sample: Tensor, path: Path, opset: int) -> None:
    """ONNX through the TorchScript-based exporter, dynamic batch / height / width; an op without an ONNX form is
    an `ExportError` that names it."""
    try:
        torch.onnx.export(module, (sample,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: DYNAMIC_AXES, OUTPUT_NAME: DYNAMIC_AXES})
    except (torch.onnx.errors.UnsupportedOperatorError, torch.onnx.errors.SymbolicValueError) as error:
        reason = str(error).splitlines()[0].split(" Please feel free")[0]
        raise ExportError(f"{type(module.method).__name__} has no ONNX graph at opset {opset}: {reason}; export "
                          f"it with --format torchscript or --format exported_program") from error


# ------------------------------------------------------------------------------------------ segcentroids export
def load_trained(method: Baseline, checkpoint_path: str | Path) -> Baseline:
    """`method` with the weights of a Lightning checkpoint written for it; one line naming the file and the mismatch
    (missing file, not a checkpoint, another method, other classes or shapes) otherwise."""
    checkpoint = read_checkpoint(checkpoint_path)
    written = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    built = f"{type(method).__module__}.{type(method).__qualname__}"
    if written and load_class(written) is not type(method):
        raise RunFolderError(f"checkpoint {checkpoint_path} was written by {written}, but the config builds {built}")
    try:
        method.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        details = " ".join(line.strip() for line in str(error).splitlines()[1:])
        raise RunFolderError(f"checkpoint {checkpoint_path} does not fit the {built} of the config: "
                             f"{details}") from None
    return method


def build_method(config_args: list[str]) -> Baseline:
    """The model the config files and overrides build, as `segcentroids test` builds it (DataModule facts linked)."""
    from segcentroids.cli import SegCLI
    from segcentroids.data import SegDataModule

    cli = SegCLI(Baseline, SegDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                 args_list=config_args)
    return cli.model


def parse_export_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """`--ckpt_path`, `--format`, `--output`, `--opset`; the rest are the config arguments (`--config`, overrides)."""
    parser = argparse.ArgumentParser(prog="segcentroids export", description=EXPORT_HELP, allow_abbrev=False)
    parser.add_argument("--ckpt_path", required=True, help="the Lightning checkpoint whose weights are exported")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx | torchscript | exported_program")
    parser.add_argument("--output", default=None,
                        help="file to write (default: the checkpoint's path with .onnx / .ts / .pt2)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    args, config_args = parser.parse_known_args(argv)
    if not any(arg == "--config" or arg.startswith("--config=") for arg in config_args):
        parser.error("--config is required (the run's config.yaml, or the config files it was trained with)")
    return args, config_args


def main(argv: list[str]) -> int:
    """`segcentroids export --config C --ckpt_path F --format onnx|torchscript|exported_program [--output P]
    [--opset N] [config overrides]`: writes the inference graph and prints its path."""
    args, config_args = parse_export_args(argv)
    try:
        read_checkpoint(args.ckpt_path)  # before building the model: a bad file fails in a second
        method = load_trained(build_method(config_args), args.ckpt_path)
        output = Path(args.output) if args.output else Path(args.ckpt_path).with_suffix(SUFFIXES[args.format])
        written = export(method, args.format, output, opset=args.opset)
    except (RunFolderError, ExportError) as error:
        print(f"segcentroids export: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {written} ({args.format}, images [B, 3, H, W] -> logits [B, {method.num_classes}, H, W])")
    return 0
