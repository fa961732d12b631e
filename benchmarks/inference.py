"""Test-time inference cost: batched windows/views against one window at a time, and each protocol against whole.

A Baseline (FPN ResNet-18, random weights) in eval mode on one image; settings alternate (ABAB...) and the median
of the repeats is reported, with the ratio to one-window-at-a-time and to whole-image inference.

    python benchmarks/inference.py --height 256 --width 512 --repeats 5

Prints a JSON list and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
from timing import alternate

from segcentroids.inference import InferenceConfig, infer
from segcentroids.methods import Baseline
from segcentroids.models import SegModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    height, width = args.height, args.width
    model = Baseline(SegModel("fpn", "resnet18", encoder_weights=None, decoder_channels=128), num_classes=19).eval()
    images = torch.randn(1, 3, height, width)
    crop, stride = (height // 2, width // 2), (3 * height // 8, 3 * width // 8)
    slide = {"mode": "slide", "crop_size": crop, "stride": stride}
    ms_flip = {"scales": [0.75, 1.0, 1.25], "flip": True}
    settings = {
        "whole": InferenceConfig(),
        "slide, 1 window per forward": InferenceConfig(**slide, window_batch_size=1),
        "slide, batched windows": InferenceConfig(**slide, window_batch_size=64),
        "MS+flip whole, 1 view per forward": InferenceConfig(**ms_flip, window_batch_size=1),
        "MS+flip whole, flips batched": InferenceConfig(**ms_flip, window_batch_size=64),
        "MS+flip slide, 1 window per forward": InferenceConfig(**slide, **ms_flip, window_batch_size=1),
        "MS+flip slide, batched windows": InferenceConfig(**slide, **ms_flip, window_batch_size=64),
    }
    def run(config: InferenceConfig) -> Callable[[], object]:
        return lambda: infer(model, images, (height, width), config)

    with torch.no_grad():
        medians = alternate({name: run(config) for name, config in settings.items()}, args.repeats)
    whole = medians["whole"]
    records = []
    for name in settings:
        median = medians[name]
        single = name.replace("batched windows", "1 window per forward").replace("flips batched", "1 view per forward")
        records.append({
            "setting": name,
            "image": [height, width],
            "window": list(crop) if "slide" in name else None,
            "stride": list(stride) if "slide" in name else None,
            "median_ms": round(1000 * median, 1),
            "x_whole": round(median / whole, 2),
            "speedup_vs_one_at_a_time": round(medians[single] / median, 2) if single != name else None,
        })
    print(json.dumps(records, indent=2))
    print("\n| setting | median ms | x whole | speed-up of batching |")
    print("| --- | ---: | ---: | ---: |")
    for r in records:
        speedup = "-" if r["speedup_vs_one_at_a_time"] is None else f"{r['speedup_vs_one_at_a_time']:.2f}"
        print(f"| {r['setting']} | {r['median_ms']:.1f} | {r['x_whole']:.2f} | {speedup} |")


if __name__ == "__main__":
    main()
