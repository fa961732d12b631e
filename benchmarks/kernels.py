"""Hot ops: each vectorised op against a straightforward loop on the same inputs (equal outputs, speed ratio).

    python benchmarks/kernels.py [--repeats 5] [--paper-shapes] [--json kernels.json]

- memory update: `FeatureMemory.update` (MCIBI Eq. 6, label resolution) vs the per-class loop (boolean masks), from
  the same initialised memory (the case of `benchmarks/mcibi.py`);
- PNE pairs: `PNELoss` (forward + backward) vs the per-image, per-pair loop;
- pyramid targets: `ops.pyramid_targets` vs the per-cell loop;
- grouped class means: `ops.grouped_class_means` vs the per-class, per-group masked means (the same random groups,
  drawn inside both timed calls).
`--paper-shapes` runs each op at the shapes of the paper configs (`PAPER_SHAPES`: MCIBI's memory on Cityscapes,
batch 8 of 512x1024 at stride 8, 512 channels, and on ADE20K, batch 16 of 512x512, K = 150; PNE on Cityscapes at
stride 8, D = 256; Specialize-and-Fuse's pyramid on ADE20K crops 512x512, batch 16, strides 32..4; MVSC's grouped means
on ADE20K at stride 4, K = 150); the default shapes are small. The loops are the tests' oracles
(`tests/references.py`). Outputs must agree (max abs difference printed,
`torch.testing.assert_close` tolerances); timings alternate loop and vectorised (ABAB), medians. One thread.
Prints JSON, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import repo_root  # noqa: F401
import torch
from mcibi import memory_case
from pne import realistic_case
from timing import abab
from workload import blocky_labels

from segcentroids.losses import PNELoss
from segcentroids.ops import pyramid_targets
from segcentroids.ops.grouping import grouped_class_means, random_class_groups
from tests.references import loop_grouped_class_means, loop_pne_loss, loop_pyramid_targets


def row(op: str, shape: str, loop_s: float, ours_s: float, diff: float) -> dict:
    return {"op": op, "shape": shape, "loop_ms": round(loop_s * 1e3, 2), "vectorised_ms": round(ours_s * 1e3, 2),
            "speedup": round(loop_s / ours_s, 1), "max_abs_diff": diff}


SMALL_SHAPES = {
    "memory": [{"batch": 4, "channels": 256, "classes": 19, "feature": (32, 32), "image": (128, 128)}],
    "pne": [{"B": 2, "K": 19, "h": 64, "w": 128, "D": 64}],
    "pyramid": [{"batch": 2, "size": 192, "classes": 8}],
    "means": [{"batch": 4, "dim": 128, "size": 64, "classes": 150, "groups": 4}],
}
PAPER_SHAPES = {
    "memory": [{"batch": 8, "channels": 512, "classes": 19, "feature": (64, 128), "image": (512, 1024)},
               {"batch": 16, "channels": 512, "classes": 150, "feature": (64, 64), "image": (512, 512)}],
    "pne": [{"B": 8, "K": 19, "h": 64, "w": 128, "D": 256}],
    "pyramid": [{"batch": 16, "size": 512, "classes": 150}],
    "means": [{"batch": 16, "dim": 256, "size": 128, "classes": 150, "groups": 4}],
}


def memory_update(repeats: int, batch: int, channels: int, classes: int, feature: tuple[int, int],
                  image: tuple[int, int]) -> dict:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(batch, channels, *feature, generator=g)
    labels = blocky_labels(batch, image, classes, g, block=16)
    case = memory_case("label", features, labels, classes, repeats)  # ours vs the loop, from one initialised memory
    diff = case["max_abs_diff_vs_own_loop"]
    if diff > 1e-4:
        raise AssertionError(f"FeatureMemory.update differs from the per-class loop by {diff}")
    return row("FeatureMemory.update (label res.)", case["shape"], case["loop_ms"] / 1e3, case["ours_ms"] / 1e3, diff)


def pne_loss(repeats: int, B: int, K: int, h: int, w: int, D: int) -> dict:
    embeddings, logits, labels = realistic_case(B=B, K=K, h=h, w=w, D=D)
    options = {"samples_per_set": 100, "max_anchor_set": 199}
    loss = PNELoss(sampling="first", **options)

    def forward_backward(fn: Callable) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        def run() -> tuple[torch.Tensor, torch.Tensor]:
            x = embeddings.clone().requires_grad_()
            value = fn(x, logits, labels)
            value.backward()
            return value.detach(), x.grad
        return run

    ours_fn = forward_backward(loss)
    loop_fn = forward_backward(lambda x, lg, lb: loop_pne_loss(x, lg, lb, **options))
    loop_s, ours_s = abab(loop_fn, ours_fn, repeats)
    (ours_value, ours_grad), (loop_value, loop_grad) = ours_fn(), loop_fn()
    torch.testing.assert_close(ours_value, loop_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_grad, loop_grad, rtol=1e-4, atol=1e-7)
    diff = max(float((ours_value - loop_value).abs()), float((ours_grad - loop_grad).abs().max()))
    return row("PNELoss fwd+bwd (pairs)", f"B={B} K={K} D={D} {h}x{w}, S=100", loop_s, ours_s, diff)


def pyramid(repeats: int, batch: int, size: int, classes: int) -> dict:
    g = torch.Generator().manual_seed(0)
    labels = blocky_labels(batch, size, classes, g, block=12)  # blocks straddle cells: mixed, unity and ignore cells
    strides = [32, 16, 8, 4]
    loop_s, ours_s = abab(lambda: loop_pyramid_targets(labels, strides), lambda: pyramid_targets(labels, strides),
                          max(1, repeats // 2))
    fast, slow = pyramid_targets(labels, strides), loop_pyramid_targets(labels, strides)
    diff = 0.0
    for got, want in zip(fast[0] + fast[1], slow[0] + slow[1]):
        torch.testing.assert_close(got, want)
        diff = max(diff, float((got - want).abs().max()))
    return row("pyramid_targets", f"B={batch} {size}x{size}, strides 32/16/8/4", loop_s, ours_s, diff)


def class_means(repeats: int, batch: int, dim: int, size: int, classes: int, groups: int) -> dict:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(batch, dim, size, size, generator=g)  # ADE20K's 150 classes at 1/4 of the crop
    labels = blocky_labels(batch, size, classes, g, block=4)
    ours, _ = grouped_class_means(features, labels, groups, torch.Generator().manual_seed(0), num_classes=classes)
    group = random_class_groups(labels, groups, classes, torch.Generator().manual_seed(0))
    loop = loop_grouped_class_means(features, labels, group, groups, classes)
    torch.testing.assert_close(ours, loop)
    loop_s, ours_s = abab(
        lambda: loop_grouped_class_means(features, labels, random_class_groups(labels, groups, classes,
                                                                               torch.Generator().manual_seed(0)),
                                         groups, classes),
        lambda: grouped_class_means(features, labels, groups, torch.Generator().manual_seed(0), num_classes=classes),
        repeats)
    return row("grouped_class_means", f"B={batch} D={dim} {size}x{size} K={classes} G={groups}", loop_s, ours_s,
               float((ours - loop).abs().max()))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--paper-shapes", action="store_true", help="the shapes of the paper configs")
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    shapes = PAPER_SHAPES if args.paper_shapes else SMALL_SHAPES
    ops = {"memory": memory_update, "pne": pne_loss, "pyramid": pyramid, "means": class_means}
    rows = []
    for name, cases in shapes.items():
        for shape in cases:
            rows.append(ops[name](args.repeats, **shape))
            print(json.dumps(rows[-1]), flush=True)  # each row as it is measured (the paper shapes take minutes)
    print("| op | inputs | loop ms | vectorised ms | speed-up | max abs diff |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['op']} | {r['shape']} | {r['loop_ms']} | {r['vectorised_ms']} | {r['speedup']}x | "
              f"{r['max_abs_diff']:.2e} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
