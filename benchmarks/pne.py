"""PNE benchmark: the vectorised PNE loss against a per-pair loop, and PNE's training / inference cost vs Baseline.

    python benchmarks/pne.py [--repeats 5] [--image-size 128] [--encoder resnet18] [--batch 2]

1. Loss (forward + backward) on a realistic case: 19 classes, 1/8-resolution Cityscapes-size maps (128 x 256),
   batch 8, 256-d embeddings, a trained-looking prediction (boundaries off by one pixel, 1% confused with a
   neighbour class), class-dependent embeddings, `sampling="first"`, S = 100, max anchor set 199, against the tests'
   loop (`tests/references.py::loop_pne_loss`). Same value to 1e-5; speed ratio loop / vectorised.
2. Training step (forward, backward, SGD step) of PNE vs Baseline on the same SegModel, alternating (ABAB), medians.
3. Inference: PNE's eval forward vs Baseline's with the same weights: identical output, time ratio.
Prints JSON, then a Markdown table. Single thread (`torch.set_num_threads(1)`).
"""

from __future__ import annotations

import argparse
import json

import repo_root  # noqa: F401
import torch
import torch.nn.functional as F
from timing import alternate
from workload import train_step

from segcentroids.losses import PNELoss
from segcentroids.methods import PNE, Baseline
from segcentroids.models import SegModel
from tests.references import loop_pne_loss


def realistic_case(B: int = 8, K: int = 19, h: int = 128, w: int = 256, D: int = 256, seed: int = 0):
    """Scenes of 32 x 32 regions of 19 classes; a trained-looking prediction: boundaries off by one pixel and 1% of
    the pixels confused with one fixed neighbour class ((k + 1) mod K); 5% ignore; embeddings = a random direction
    per class plus noise (so that similarities, and the loss, vary)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, K, (B, 1, h // 32, w // 32), generator=g).float()
    labels = F.interpolate(coarse, size=(h, w), mode="nearest")[:, 0].long()
    pred = torch.roll(labels, shifts=(1, 1), dims=(1, 2))
    confused = torch.rand(B, h, w, generator=g) < 0.01
    pred = torch.where(confused, (labels + 1) % K, pred)
    logits = torch.randn(B, K, h, w, generator=g) + 4 * F.one_hot(pred, K).permute(0, 3, 1, 2)
    labels[torch.rand(B, h, w, generator=g) < 0.05] = 255
    directions = torch.randn(K, D, generator=g)
    embeddings = directions[labels.clamp_max(K - 1)].permute(0, 3, 1, 2) + 2 * torch.randn(B, D, h, w, generator=g)
    return embeddings, logits, labels


def bench_loss(repeats: int) -> dict:
    embeddings, logits, labels = realistic_case()
    options = {"samples_per_set": 100, "max_anchor_set": 199}
    loss = PNELoss(sampling="first", **options)

    def vectorised():
        x = embeddings.clone().requires_grad_()
        value = loss(x, logits, labels)
        value.backward()
        return value

    def loop():
        x = embeddings.clone().requires_grad_()
        value = loop_pne_loss(x, logits, labels, **options)
        value.backward()
        return value

    ours, ref = vectorised().item(), loop().item()
    _, stats = loss.compute(embeddings, logits, labels)
    med = alternate({"vectorised": vectorised, "loop": loop}, repeats, warmup=False)  # both just ran once
    return {"case": "B=8, K=19, 128x256, D=256, S=100", "pairs": int(stats["pairs"]), "anchors": int(stats["anchors"]),
            "value_vectorised": ours, "value_loop": ref, "abs_diff": abs(ours - ref),
            "vectorised_s": med["vectorised"], "loop_s": med["loop"], "speedup": med["loop"] / med["vectorised"]}


def make_models(num_classes: int, encoder: str) -> tuple[Baseline, PNE]:
    def segmodel():
        torch.manual_seed(0)
        return SegModel(arch="deeplabv3", encoder_name=encoder, encoder_weights=None,
                        decoder_channels=512 if encoder != "resnet18" else 128)

    baseline = Baseline(segmodel=segmodel(), num_classes=num_classes)
    pne = PNE(segmodel=segmodel(), num_classes=num_classes)
    pne.load_state_dict(baseline.state_dict(), strict=False)
    return baseline, pne


def bench_training(repeats: int, size: int, encoder: str, batch: int, num_classes: int = 19) -> dict:
    baseline, pne = make_models(num_classes, encoder)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.randint(0, num_classes, (batch, size // 32, size // 32), generator=g)
    labels = F.interpolate(labels[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()

    def step(model):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        return lambda: train_step(model, images, labels, optimizer)

    med = alternate({"baseline": step(baseline), "pne": step(pne)}, repeats)
    return {"case": f"DeepLabV3 {encoder} (stride 8), batch {batch}, {size}x{size}, 19 classes",
            "baseline_s": med["baseline"],
            "pne_s": med["pne"], "ratio": med["pne"] / med["baseline"]}


def bench_inference(repeats: int, size: int, encoder: str, batch: int, num_classes: int = 19) -> dict:
    baseline, pne = make_models(num_classes, encoder)
    baseline.eval(), pne.eval()
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        identical = torch.equal(baseline(images), pne(images))
        med = alternate({"baseline": lambda: baseline(images), "pne": lambda: pne(images)}, repeats, warmup=False)
    return {"identical": identical, "baseline_s": med["baseline"], "pne_s": med["pne"],
            "ratio": med["pne"] / med["baseline"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--encoder", default="resnet18",
                        help="DeepLabV3 encoder (decoder 512 channels unless resnet18)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--skip-loss", action="store_true", help="skip the loop comparison (minutes)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"loss": None if args.skip_loss else bench_loss(args.repeats),
               "training_step": bench_training(args.repeats, args.image_size, args.encoder, args.batch),
               "inference": bench_inference(args.repeats, args.image_size, args.encoder, args.batch)}
    print(json.dumps(results, indent=2))
    loss, train, infer = results["loss"], results["training_step"], results["inference"]
    print("\n| measure | reference | PNE | ratio |\n| --- | ---: | ---: | ---: |")
    if loss is not None:
        print(f"| loss fwd+bwd ({loss['case']}, {loss['pairs']} sets; |diff| {loss['abs_diff']:.1e}) | loop "
              f"{loss['loop_s'] * 1e3:.1f} ms | {loss['vectorised_s'] * 1e3:.1f} ms | {loss['speedup']:.1f}x faster |")
    print(f"| training step ({train['case']}) | Baseline {train['baseline_s'] * 1e3:.0f} ms | "
          f"{train['pne_s'] * 1e3:.0f} ms | {train['ratio']:.2f}x |")
    print(f"| inference (identical: {infer['identical']}) | Baseline {infer['baseline_s'] * 1e3:.0f} ms | "
          f"{infer['pne_s'] * 1e3:.0f} ms | {infer['ratio']:.2f}x |")


if __name__ == "__main__":
    main()
