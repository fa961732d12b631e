"""MLSeg cost against its baseline on the same SegModel: parameters, inference FLOPs, training-step and inference time.

Pairs: Segmenter (ViT + mask transformer over all K classes) vs MLSeg (mask_transformer psi), and the plain Baseline
(1x1 classifier) vs MLSeg (linear psi) on DeepLabV3. Timings alternate the two models (ABAB) and report medians,
single-threaded on CPU. Also times the ground-truth re-indexing (lookup table, ours) against the one-hot comparison
over the selected classes (the authors' formulation).

    python benchmarks/mlseg.py --size 256 --classes 150 --kappa 50 --repeats 5

Prints a JSON object and a Markdown table. Targets (issue 7): params <= 1.08x, FLOPs <= 1.03x, inference <= 1.1x.

The large label sets MLSeg is made for (issue 19): the Baseline (1x1 classifier over all K classes) against MLSeg
(linear psi over the top kappa) on the same DeepLabV3, at K = 847 (ADE20K-Full) and 1284 (COCO+LVIS), kappa 100:
training step, inference (logits at the label size) and the peak memory of the tensors each creates, in one process,
ABAB medians. Target: MLSeg below the Baseline in time and memory.

    python benchmarks/mlseg.py --large-k 847 1284 --size 512 --kappa 100 --batch 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
from cost import peak_memory_mib
from timing import abab
from workload import blocky_labels, infer, train_step

from segcentroids.callbacks.run_recorder import inference_cost
from segcentroids.data.labels import ignore_index_for
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


def large_k(classes: int, kappa: int, size: int, batch: int, repeats: int, encoder: str) -> dict:
    """Baseline vs MLSeg (linear psi, kappa) on DeepLabV3 `encoder` at K = `classes`: training step and inference
    at the label size (median seconds, ABAB) and the peak memory of the tensors each creates (MiB)."""

    def model(method: type[Baseline], **kwargs) -> Baseline:
        torch.manual_seed(0)
        segmodel = SegModel(arch="deeplabv3", encoder_name=encoder, encoder_weights=None, decoder_channels=256)
        return method(segmodel=segmodel, num_classes=classes, ignore_index=ignore_index_for(classes), **kwargs)

    baseline = model(Baseline)
    mlseg = model(MLSeg, kappa=kappa, classifier="linear", rank_temperature="per_rank")
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator)
    labels = blocky_labels(batch, size, classes, generator, ignore_rows=0)
    one = images[:1]

    def evaluate(method: Baseline) -> None:
        method.eval()
        with torch.no_grad():
            method.evaluation_outputs(one, labels[:1], "val")

    train = abab(lambda: train_step(baseline, images, labels), lambda: train_step(mlseg, images, labels), repeats)
    test = abab(lambda: evaluate(baseline), lambda: evaluate(mlseg), repeats)
    memory = {name: (peak_memory_mib(lambda m=m: train_step(m, images, labels), "cpu"),
                     peak_memory_mib(lambda m=m: evaluate(m), "cpu"))
              for name, m in (("baseline", baseline), ("mlseg", mlseg))}
    return {
        "classes": classes, "kappa": kappa, "size": size, "train_batch": batch, "encoder": encoder,
        "train_step_ms": [round(t * 1e3, 1) for t in train], "train_step_ratio": round(train[1] / train[0], 3),
        "inference_ms": [round(t * 1e3, 1) for t in test], "inference_ratio": round(test[1] / test[0], 3),
        "train_peak_MiB": [round(memory[n][0], 1) for n in ("baseline", "mlseg")],
        "train_memory_ratio": round(memory["mlseg"][0] / memory["baseline"][0], 3),
        "inference_peak_MiB": [round(memory[n][1], 1) for n in ("baseline", "mlseg")],
        "inference_memory_ratio": round(memory["mlseg"][1] / memory["baseline"][1], 3),
    }


def print_large_k(records: list[dict]) -> None:
    print(json.dumps({"large_k": records}, indent=2))
    print("\n| K | kappa | train step ms base / MLSeg | ratio | inference ms base / MLSeg | ratio "
          "| train peak MiB base / MLSeg | ratio | inference peak MiB base / MLSeg | ratio |")
    print("| ---: | ---: | --- | ---: | --- | ---: | --- | ---: | --- | ---: |")
    for r in records:
        print(f"| {r['classes']} | {r['kappa']} | {r['train_step_ms'][0]} / {r['train_step_ms'][1]} | "
              f"{r['train_step_ratio']} | {r['inference_ms'][0]} / {r['inference_ms'][1]} | {r['inference_ratio']} | "
              f"{r['train_peak_MiB'][0]} / {r['train_peak_MiB'][1]} | {r['train_memory_ratio']} | "
              f"{r['inference_peak_MiB'][0]} / {r['inference_peak_MiB'][1]} | {r['inference_memory_ratio']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="square input size")
    parser.add_argument("--classes", type=int, default=150, help="K")
    parser.add_argument("--kappa", type=int, default=50)
    parser.add_argument("--batch", type=int, default=2, help="training batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vit", default="tu-vit_small_patch16_224", help="Segmenter encoder")
    parser.add_argument("--cnn", default="resnet18", help="DeepLabV3 encoder")
    parser.add_argument("--large-k", type=int, nargs="+", help="only the large label set case, at these K")
    args = parser.parse_args()
    torch.set_num_threads(1)
    k, kappa = args.classes, args.kappa
    if args.large_k:
        print_large_k([large_k(classes, kappa, args.size, args.batch, args.repeats, args.cnn)
                       for classes in args.large_k])
        return

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
