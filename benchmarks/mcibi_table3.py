"""MCIBI Table 3: complexity of the context modules alone on a [1, 2048, 128, 128] feature map (inference).

    python benchmarks/mcibi_table3.py [--size 128] [--classes 150] [--repeats 3] [--device cpu|cuda] [--json out.json]

Modules (ours, built from the package's shared pieces): ASPP (DeepLabV3's decoder, 2048 -> 512), PPM (PSPNet's),
DCA (R's 3x3 bottleneck 2048 -> 512, H1, the memory gather and the attention of Eq. 11-14, the concat fuse F of
Eq. 4) and ASPP+DCA (both, fused as MCIBI fuses C_wi). Parameters, GFLOPs (`torch.utils.flop_counter`) and median
inference time; the paper's numbers (V100, CUDA 11.0) beside. The other rows of the paper's table (CCNet, DANet, ANN,
DNL, APCNet) are modules this package does not have. The ablation runner fits and evaluates whole models, so this
table is a benchmark command (JSON, then Markdown), not an ablation YAML.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import repo_root  # noqa: F401
import torch
from segmentation_models_pytorch.base.modules import Conv2dReLU
from torch import Tensor, nn

from segcentroids.callbacks.run_recorder import flop_counter
from segcentroids.models.decoders import DeepLabV3Decoder, PSPNetDecoder
from segcentroids.nn.dataset_context import ContextFusion, DatasetContextAggregation

PAPER = {  # Table 3: parameters (M), FLOPs (G), time (ms)
    "ASPP": (42.21, 674.47, 101.44), "PPM": (23.07, 309.45, 29.57), "DCA": (14.82, 242.80, 47.64),
    "ASPP+DCA": (45.63, 730.56, 125.03),
}
IN_CHANNELS, CHANNELS, TRANSFORM = 2048, 512, 256


class DCA(nn.Module):
    """R = bottleneck(x); C_bi from the memory (Eq. 11-14); F = concat fuse (Eq. 4); with `aspp`, C_wi and the
    second fuse as MCIBI on DeepLabV3."""

    def __init__(self, num_classes: int, aspp: nn.Module | None = None) -> None:
        super().__init__()
        self.bottleneck = Conv2dReLU(IN_CHANNELS, CHANNELS, 3, padding=1)
        self.dca = DatasetContextAggregation(CHANNELS, num_classes, TRANSFORM)
        self.aspp = aspp
        self.fusion = ContextFusion(CHANNELS, "concat", CHANNELS if aspp is not None else None, TRANSFORM)
        self.register_buffer("memory", torch.randn(num_classes, CHANNELS))

    def forward(self, x: Tensor) -> Tensor:
        representations = self.bottleneck(x)
        _, beyond = self.dca(representations, self.memory)
        within = None if self.aspp is None else self.aspp([x])["decoder"]
        return self.fusion(representations, beyond, within)


def modules(num_classes: int) -> dict[str, nn.Module]:
    def aspp() -> nn.Module:
        return DeepLabV3Decoder([IN_CHANNELS], CHANNELS, 8)

    return {"ASPP": aspp(), "PPM": PSPNetDecoder([IN_CHANNELS], CHANNELS), "DCA": DCA(num_classes),
            "ASPP+DCA": DCA(num_classes, aspp())}


def measure(module: nn.Module, x: Tensor, repeats: int) -> dict[str, float]:
    module.eval()
    with torch.no_grad():
        with flop_counter() as counter:
            module([x]) if not isinstance(module, DCA) else module(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            module([x]) if not isinstance(module, DCA) else module(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1000)
    return {"params_M": sum(p.numel() for p in module.parameters()) / 1e6,
            "GFLOPs": counter.get_total_flops() / 2e9,  # multiply-adds, as the paper's FLOPs (fvcore / thop style)
            "time_ms": statistics.median(times)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    x = torch.randn(1, IN_CHANNELS, args.size, args.size, device=args.device)
    rows = {name: measure(module.to(args.device), x, args.repeats) for name, module in modules(args.classes).items()}
    result = {"setting": vars(args), "rows": rows, "paper": PAPER}
    print(json.dumps(result, indent=2))
    lines = [f"MCIBI Table 3 at [1, 2048, {args.size}, {args.size}], {args.device} (paper: V100, 128 x 128)", "",
             "| module | params (M) | paper | GFLOPs | paper | time (ms) | paper |", "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        p = PAPER[name]
        lines.append(f"| {name} | {row['params_M']:.2f} | {p[0]:.2f} | {row['GFLOPs']:.2f} | {p[1]:.2f} | "
                     f"{row['time_ms']:.1f} | {p[2]:.2f} |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(result, stream, indent=2)
    return result


if __name__ == "__main__":
    main()
