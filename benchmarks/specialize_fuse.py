"""Specialize and Fuse cost against the Baseline on the same SegModel, and pyramid targets against a per-cell loop.

Baseline = SegModel + dropout + 1x1 classifier. SpecializeFuse = the same SegModel + unity head + semantic pyramid
head (coarse-to-fine context), L = 4 levels. Parameters and FLOPs are those of the inference graph (fused inference
runs both heads). Timings alternate the two models (ABAB) and report medians, single-threaded on CPU unless
`--device cuda`. The pyramid targets (max/min pooling over cells, ours) are checked equal to a straightforward
per-cell Python loop (the tests' `tests/references.py::loop_pyramid_targets`) and timed against it.

    python benchmarks/specialize_fuse.py --arch fpn --encoder resnet50 --decoder-channels 256 --size 256 \
        --semantic-channels 256 --classes 150 --repeats 5

The paper's own comparison (Table 5: HRNet-W48 with its FCN head against HRNet-W48 + the pyramid heads): the
Baseline is HRNetV2 + a 1x1 conv-BN-ReLU (720 channels) + classifier; SpecializeFuse reads the raw concatenation.

    python benchmarks/specialize_fuse.py --arch hrnetv2 --encoder tu-hrnet_w48 --decoder-channels 720 \
        --method-decoder-channels none --semantic-channels 512 --size 256 --classes 150 --repeats 5

Prints a JSON object and a Markdown table. Targets (issue 5): training step <= 1.3x, inference <= 1.15x.
"""

from __future__ import annotations

import argparse
import json

import repo_root  # noqa: F401
import torch
from timing import abab
from workload import infer, train_step

from segcentroids.callbacks.run_recorder import inference_cost
from segcentroids.methods import Baseline, SpecializeFuse
from segcentroids.models import SegModel
from segcentroids.ops import pyramid_targets
from tests.references import loop_pyramid_targets


def decoder_channels_arg(value: str) -> int | str | None:
    """`--method-decoder-channels`: an int, `none` (no 1x1 conv) or `same` (as `--decoder-channels`)."""
    if value.lower() == "none":
        return None
    return "same" if value.lower() == "same" else int(value)


def blocky_labels(batch: int, size: int, classes: int, generator: torch.Generator) -> torch.Tensor:
    """Scene-like labels: 16x16-pixel blocks of random classes, a few pixels changed, a few ignored."""
    labels = torch.randint(0, classes, (batch, size // 16, size // 16), generator=generator)
    labels = labels.repeat_interleave(16, -1).repeat_interleave(16, -2)
    noise = torch.rand(labels.shape, generator=generator)
    labels[noise < 0.02] = 255
    labels[noise > 0.98] = 0
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="fpn")
    parser.add_argument("--encoder", default="resnet50")
    parser.add_argument("--decoder-channels", type=int, default=256)
    parser.add_argument("--method-decoder-channels", type=decoder_channels_arg,
                        default="same", help="SegModel decoder_channels of SpecializeFuse ('none': hrnetv2's raw "
                        "concatenation, as the paper); default: --decoder-channels")
    parser.add_argument("--semantic-channels", type=int, default=256, help="D_s (512 in the paper)")
    parser.add_argument("--unity-channels", type=int, default=64, help="D_u")
    parser.add_argument("--context", default="coarse_to_fine")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target-size", type=int, default=512, help="label size for the targets benchmark")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    device = args.device

    if args.method_decoder_channels == "same":
        args.method_decoder_channels = args.decoder_channels

    def segmodel(decoder_channels: int | None) -> SegModel:
        torch.manual_seed(0)
        return SegModel(args.arch, args.encoder, encoder_weights=None, decoder_channels=decoder_channels)

    baseline = Baseline(segmodel=segmodel(args.decoder_channels), num_classes=args.classes).to(device)
    method = SpecializeFuse(
        segmodel=segmodel(args.method_decoder_channels), num_classes=args.classes,
        semantic_channels=args.semantic_channels, unity_channels=args.unity_channels, context=args.context,
    ).to(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=generator).to(device)
    labels = blocky_labels(args.batch, args.size, args.classes, generator).to(device)

    costs = (inference_cost(baseline, images[:1]), inference_cost(method, images[:1]))
    params = tuple(c["params_inference"] for c in costs)  # the graph inference runs (no aux head)
    flops = tuple(c["gflops"] for c in costs)
    train = abab(lambda: train_step(baseline, images, labels), lambda: train_step(method, images, labels),
                 args.repeats, device)
    inference = abab(lambda: infer(baseline, images), lambda: infer(method, images), args.repeats, device)

    target_labels = blocky_labels(2, args.target_size, args.classes, generator)
    strides = [32, 16, 8, 4]
    fast = pyramid_targets(target_labels, strides)
    slow = loop_pyramid_targets(target_labels, strides)
    same = all(torch.equal(a, b) for a, b in zip(fast[0] + fast[1], slow[0] + slow[1]))
    loop_s, vector_s = abab(lambda: loop_pyramid_targets(target_labels, strides),
                            lambda: pyramid_targets(target_labels, strides), max(1, args.repeats // 2), "cpu")

    record = {
        "setting": {k: v for k, v in vars(args).items()},
        "params": {"baseline": params[0], "specialize_fuse": params[1], "ratio": round(params[1] / params[0], 3)},
        "inference_gflops": {"baseline": round(flops[0], 2), "specialize_fuse": round(flops[1], 2),
                             "ratio": round(flops[1] / flops[0], 3)},
        "train_step_s": {"baseline": round(train[0], 4), "specialize_fuse": round(train[1], 4),
                         "ratio": round(train[1] / train[0], 3)},
        "inference_s": {"baseline": round(inference[0], 4), "specialize_fuse": round(inference[1], 4),
                        "ratio": round(inference[1] / inference[0], 3)},
        "pyramid_targets": {"labels": [2, args.target_size, args.target_size], "same_result": same,
                            "loop_s": round(loop_s, 4), "vectorised_s": round(vector_s, 5),
                            "speedup": round(loop_s / vector_s, 1)},
    }
    print(json.dumps(record, indent=2))
    print("\n| quantity | Baseline | SpecializeFuse | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for key, label in (("params", "parameters"), ("inference_gflops", "inference GFLOPs (1 image)"),
                       ("train_step_s", "training step (s)"), ("inference_s", "inference (s)")):
        r = record[key]
        print(f"| {label} | {r['baseline']} | {r['specialize_fuse']} | {r['ratio']:.3f}x |")
    t = record["pyramid_targets"]
    print(f"\npyramid_targets on {t['labels']}: loop {t['loop_s']} s, vectorised {t['vectorised_s']} s "
          f"({t['speedup']}x), same result: {t['same_result']}")


if __name__ == "__main__":
    main()
