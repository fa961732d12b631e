"""Hot ops: each vectorised op against a straightforward loop on the same inputs (equal outputs, speed ratio).

    python benchmarks/kernels.py [--repeats 5] [--json kernels.json]

- memory update: `FeatureMemory.update` (MCIBI Eq. 6, label resolution) vs the per-class loop (boolean masks), from
  the same initialised memory (the case of `benchmarks/mcibi.py`);
- PNE pairs: `PNELoss` (forward + backward) vs the per-image, per-pair loop;
- pyramid targets: `ops.pyramid_targets` vs the per-cell loop;
- grouped class means: `ops.grouped_class_means` vs the per-class, per-group masked means (the same random groups,
  drawn inside both timed calls).
The loops are the tests' oracles (`tests/references.py`). Outputs must agree (max abs difference printed,
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


def memory_update(repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    batch, channels, classes = 4, 256, 19
    features = torch.randn(batch, channels, 32, 32, generator=g)
    labels = blocky_labels(batch, 128, classes, g, block=16)
    case = memory_case("label", features, labels, classes, repeats)  # ours vs the loop, from one initialised memory
    diff = case["max_abs_diff_vs_own_loop"]
    if diff > 1e-4:
        raise AssertionError(f"FeatureMemory.update differs from the per-class loop by {diff}")
    return row("FeatureMemory.update (label res.)", case["shape"], case["loop_ms"] / 1e3, case["ours_ms"] / 1e3, diff)


def pne_loss(repeats: int) -> dict:
    embeddings, logits, labels = realistic_case(B=2, K=19, h=64, w=128, D=64)
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
    return row("PNELoss fwd+bwd (pairs)", "B=2 K=19 D=64 64x128, S=100", loop_s, ours_s, diff)


def pyramid(repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    labels = blocky_labels(2, 192, 8, g, block=12)  # blocks straddle cells: mixed, unity and ignore cells
    strides = [32, 16, 8, 4]
    loop_s, ours_s = abab(lambda: loop_pyramid_targets(labels, strides), lambda: pyramid_targets(labels, strides),
                          max(1, repeats // 2))
    fast, slow = pyramid_targets(labels, strides), loop_pyramid_targets(labels, strides)
    diff = 0.0
    for got, want in zip(fast[0] + fast[1], slow[0] + slow[1]):
        torch.testing.assert_close(got, want)
        diff = max(diff, float((got - want).abs().max()))
    return row("pyramid_targets", "B=2 192x192, strides 32/16/8/4", loop_s, ours_s, diff)


def class_means(repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    batch, dim, classes, groups = 4, 128, 150, 4  # ADE20K's 150 classes at 1/4 of a 256 crop
    features = torch.randn(batch, dim, 64, 64, generator=g)
    labels = blocky_labels(batch, 64, classes, g, block=4)
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
    return row("grouped_class_means", f"B={batch} D={dim} 64x64 K={classes} G={groups}", loop_s, ours_s,
               float((ours - loop).abs().max()))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [memory_update(args.repeats), pne_loss(args.repeats), pyramid(args.repeats), class_means(args.repeats)]
    print(json.dumps(rows, indent=2))
    print("| op | inputs | loop ms | vectorised ms | speed-up | max abs diff |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['op']} | {r['shape']} | {r['loop_ms']} | {r['vectorised_ms']} | {r['speedup']}x | "
              f"{r['max_abs_diff']:.2e} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
