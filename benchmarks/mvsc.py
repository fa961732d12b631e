"""MVSC cost against the Baseline on the same SegModel: inference parameters and FLOPs, training-step time.

The centroids are training-only, so the inference graph must be the Baseline's (params and FLOPs ratio 1.00); the
training step adds the random grouping, L_fca, L_cos and the centroids through the classifier (target <= 1.05x).
Timings alternate the two models (ABAB) and report medians of single-threaded CPU time (one AdamW step included).
Also times the vectorised `grouped_class_means` against a loop over classes (`tests/references.py`).

    python benchmarks/mvsc.py --size 256 --classes 150 --batch 2 --repeats 7

Prints a JSON object and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import repo_root  # noqa: F401
import torch
from timing import abab
from workload import blocky_labels, train_step

from segcentroids.callbacks.run_recorder import inference_cost
from segcentroids.methods import MVSC, Baseline
from segcentroids.models import SegModel
from segcentroids.ops.grouping import grouped_class_means, random_class_groups
from segcentroids.ops.resample import nearest_labels
from tests.references import loop_grouped_class_means


def scene_labels(batch: int, size: int, classes: int) -> torch.Tensor:
    """Labels made of 16x16-pixel blocks of random classes (seed 0), the top 1/16 of the rows ignore."""
    return blocky_labels(batch, size, classes, torch.Generator().manual_seed(0), ignore_rows=size // 16)


def compare(name: str, make_segmodel: Callable[[], SegModel], size: int, classes: int, batch: int,
            repeats: int) -> dict:
    torch.manual_seed(0)
    segmodel = make_segmodel()
    baseline = Baseline(segmodel=segmodel, num_classes=classes)
    mvsc = MVSC(segmodel=make_segmodel(), num_classes=classes)
    mvsc.load_state_dict(baseline.state_dict(), strict=False)  # same weights: only the centroids are new
    images = torch.randn(batch, 3, size, size)
    labels = scene_labels(batch, size, classes)
    one = images[:1]
    params = (sum(p.numel() for p in baseline.parameters()), sum(p.numel() for p in mvsc.parameters()))
    costs = (inference_cost(baseline, one), inference_cost(mvsc, one))
    used = tuple(c["params_inference"] for c in costs)
    flops = tuple(c["gflops"] for c in costs)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-5) for m in (baseline, mvsc)]
    train = abab(lambda: train_step(baseline, images, labels, optimizers[0]),
                 lambda: train_step(mvsc, images, labels, optimizers[1]), repeats, clock=time.process_time)
    return {
        "pair": name, "size": size, "classes": classes, "groups": mvsc.groups, "dim": segmodel.out_channels,
        "train_batch": batch,
        "inference_params_M": [round(p / 1e6, 4) for p in used], "inference_params_ratio": round(used[1] / used[0], 4),
        "train_params_M": [round(p / 1e6, 4) for p in params], "train_params_ratio": round(params[1] / params[0], 4),
        "gflops": [round(f, 3) for f in flops], "flops_ratio": round(flops[1] / flops[0], 4),
        "train_step_ms": [round(t * 1e3, 1) for t in train], "train_step_ratio": round(train[1] / train[0], 3),
    }


def grouping_timing(batch: int, dim: int, size: int, classes: int, groups: int, repeats: int) -> dict:
    torch.manual_seed(0)
    features = torch.randn(batch, dim, size // 4, size // 4)
    labels = nearest_labels(scene_labels(batch, size, classes), (size // 4, size // 4))
    ours, _ = grouped_class_means(features, labels, groups, torch.Generator().manual_seed(0), num_classes=classes)
    group = random_class_groups(labels, groups, classes, torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, loop_grouped_class_means(features, labels, group, groups, classes))
    vectorised, loop = abab(
        lambda: grouped_class_means(features, labels, groups, torch.Generator().manual_seed(0), num_classes=classes),
        lambda: loop_grouped_class_means(features, labels, group, groups, classes), repeats, clock=time.process_time)
    return {"op": "grouped_class_means", "features": list(features.shape), "classes": classes, "groups": groups,
            "vectorised_ms": round(vectorised * 1e3, 2), "loop_ms": round(loop * 1e3, 2),
            "speedup": round(loop / vectorised, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="square input size")
    parser.add_argument("--classes", type=int, default=150, help="K (ADE20K: 150, COCO-Stuff: 171)")
    parser.add_argument("--batch", type=int, default=2, help="training batch")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    k = args.classes
    records = [
        compare("SegFormer mit_b0", lambda: SegModel(arch="segformer", encoder_name="mit_b0", encoder_weights=None,
                                                     decoder_channels=256), args.size, k, args.batch, args.repeats),
        compare("FPN resnet18", lambda: SegModel(arch="fpn", encoder_name="resnet18", encoder_weights=None,
                                                 decoder_channels=128), args.size, k, args.batch, args.repeats),
    ]
    grouping = grouping_timing(8, 256, 512, 171, 4, args.repeats)
    print(json.dumps({"models": records, "grouping": grouping}, indent=2))
    print("\n| pair | inference params (M) base / MVSC | ratio | GFLOPs base / MVSC | ratio | train params (M) "
          "| train step (ms) base / MVSC | ratio |")
    print("| --- | --- | ---: | --- | ---: | --- | --- | ---: |")
    for r in records:
        print(f"| {r['pair']} | {r['inference_params_M'][0]} / {r['inference_params_M'][1]} | "
              f"{r['inference_params_ratio']:.2f} | {r['gflops'][0]} / {r['gflops'][1]} | {r['flops_ratio']:.2f} | "
              f"{r['train_params_M'][0]} / {r['train_params_M'][1]} | {r['train_step_ms'][0]} / "
              f"{r['train_step_ms'][1]} | {r['train_step_ratio']} |")
    print(f"\ngrouped_class_means ({grouping['features']}, K={grouping['classes']}, G={grouping['groups']}): "
          f"{grouping['vectorised_ms']} ms vs loop over classes {grouping['loop_ms']} ms ({grouping['speedup']}x)")


if __name__ == "__main__":
    main()
