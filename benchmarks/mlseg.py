"""MLSeg cost against its baseline on the same SegModel: parameters, inference FLOPs, training-step and inference time.

Pairs: Segmenter (ViT + mask transformer over all K classes) vs MLSeg (mask_transformer psi), and the plain Baseline
(1x1 classifier) vs MLSeg (linear psi) on DeepLabV3. Timings alternate the two models (ABAB) and report medians,
single-threaded on CPU. Also times the ground-truth re-indexing (lookup table, ours) against the one-hot comparison
over the selected classes (the authors' formulation).

    python benchmarks/mlseg.py --size 256 --classes 150 --kappa 50 --repeats 5

Prints a JSON object and a Markdown table. Targets (issue 7): params <= 1.08x, FLOPs <= 1.03x, inference <= 1.1x.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
from timing import abab
from workload import infer, train_step

from segcentroids.callbacks.run_recorder import inference_cost
from segcentroids.methods import Baseline, MLSeg, Segmenter
from segcentroids.models import SegModel
from segcentroids.ops import labels_to_ranks, select_top_labels


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def compare(name: str, make_baseline: Callable[[], Baseline], make_mlseg: Callable[[], MLSeg], size: int,
            classes: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    baseline = make_baseline()
    torch.manual_seed(0)
    mlseg = make_mlseg()
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, classes, (batch, size, size))
    one = images[:1]
    params = (count_params(baseline), count_params(mlseg))
    flops = (inference_cost(baseline, one)["gflops"], inference_cost(mlseg, one)["gflops"])
    train = abab(lambda: train_step(baseline, images, labels), lambda: train_step(mlseg, images, labels), repeats)
    test = abab(lambda: infer(baseline, one), lambda: infer(mlseg, one), repeats)
    return {
        "pair": name, "size": size, "classes": classes, "kappa": mlseg.kappa, "train_batch": batch,
        "params_M": [round(p / 1e6, 3) for p in params], "params_ratio": round(params[1] / params[0], 4),
        "gflops": [round(f, 3) for f in flops], "flops_ratio": round(flops[1] / flops[0], 4),
        "train_step_ms": [round(t * 1e3, 1) for t in train], "train_step_ratio": round(train[1] / train[0], 3),
        "inference_ms": [round(t * 1e3, 1) for t in test], "inference_ratio": round(test[1] / test[0], 3),
    }


def one_hot_reindex(labels: torch.Tensor, selected: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Re-indexing by comparing every pixel with every selected class ([B, k, H, W] booleans)."""
    hits = selected[:, :, None, None] == labels[:, None]
    found, ranks = hits.long().max(dim=1)
    return torch.where((found > 0) & (labels != ignore_index), ranks, torch.full_like(ranks, ignore_index))


def reindex_timing(classes: int, kappa: int, size: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    labels = torch.randint(0, classes, (batch, size, size))
    labels[:, :8] = 255
    selected = select_top_labels(torch.randn(batch, classes), kappa)
    ours = labels_to_ranks(labels, selected, classes)
    assert torch.equal(ours, one_hot_reindex(labels, selected))
    table, one_hot = abab(lambda: labels_to_ranks(labels, selected, classes),
                          lambda: one_hot_reindex(labels, selected), repeats)
    return {"op": "labels_to_ranks", "batch": batch, "size": size, "classes": classes, "kappa": kappa,
            "lookup_ms": round(table * 1e3, 2), "one_hot_ms": round(one_hot * 1e3, 2),
            "speedup": round(one_hot / table, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="square input size")
    parser.add_argument("--classes", type=int, default=150, help="K")
    parser.add_argument("--kappa", type=int, default=50)
    parser.add_argument("--batch", type=int, default=2, help="training batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vit", default="tu-vit_small_patch16_224", help="Segmenter encoder")
    parser.add_argument("--cnn", default="resnet18", help="DeepLabV3 encoder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    k, kappa = args.classes, args.kappa

    def vit() -> SegModel:
        return SegModel(arch="identity", encoder_name=args.vit, encoder_weights=None)

    def cnn() -> SegModel:
        return SegModel(arch="deeplabv3", encoder_name=args.cnn, encoder_weights=None, decoder_channels=256)

    heads = vit().out_channels // 64
    records = [
        compare(f"Segmenter {args.vit}", lambda: Segmenter(segmodel=vit(), num_classes=k, num_heads=heads),
                lambda: MLSeg(segmodel=vit(), num_classes=k, kappa=kappa, num_heads=heads),
                args.size, k, args.batch, args.repeats),
        compare(f"DeepLabV3 {args.cnn}", lambda: Baseline(segmodel=cnn(), num_classes=k),
                lambda: MLSeg(segmodel=cnn(), num_classes=k, kappa=kappa, classifier="linear", num_heads=8),
                args.size, k, args.batch, args.repeats),
    ]
    reindex = reindex_timing(k, kappa, 512, 8, args.repeats)
    print(json.dumps({"models": records, "reindex": reindex}, indent=2))
    print("\n| pair | params (M) base / MLSeg | ratio | GFLOPs base / MLSeg | ratio | train step (ms) | ratio "
          "| inference (ms) | ratio |")
    print("| --- | --- | ---: | --- | ---: | --- | ---: | --- | ---: |")
    for r in records:
        print(f"| {r['pair']} | {r['params_M'][0]} / {r['params_M'][1]} | {r['params_ratio']} | "
              f"{r['gflops'][0]} / {r['gflops'][1]} | {r['flops_ratio']} | {r['train_step_ms'][0]} / "
              f"{r['train_step_ms'][1]} | {r['train_step_ratio']} | {r['inference_ms'][0]} / {r['inference_ms'][1]} "
              f"| {r['inference_ratio']} |")
    print(f"\nre-indexing (B={reindex['batch']}, {reindex['size']}^2, K={k}, kappa={kappa}): lookup "
          f"{reindex['lookup_ms']} ms vs one-hot comparison {reindex['one_hot_ms']} ms ({reindex['speedup']}x)")


if __name__ == "__main__":
    main()
