"""``segcentroids convert-coco-lvis``: the COCO+LVIS labels (1284 classes) from LVIS v1 instances and COCO-Stuff stuff.

ESSNet's rule (Jain et al. 2021, the dataset MLSeg evaluates on): on every COCO 2017 image of an LVIS v1 split, each
pixel takes the LVIS category of the first instance (in annotation order) that covers it; pixels no instance covers
take the first COCO-Stuff stuff region that covers them, its id mapped by ``coco_lvis.stuff_to_coco_lvis`` (the ten
stuff classes LVIS has by name keep the LVIS id, "other" is unlabelled); the rest is 0 (unlabelled). Images with
neither kind of annotation, or absent from the stuff annotations, are left out. Writes uint16 PNGs to
``<out>/annotations/<split>/<name>.png`` and links ``<out>/images/<split>/<name>.jpg`` to the COCO image.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segcentroids.data.coco_lvis import stuff_to_coco_lvis

SPLITS = {"train": ("lvis_v1_train.json", "stuff_train2017.json"), "val": ("lvis_v1_val.json", "stuff_val2017.json")}


def compose_label(lvis: Iterable[tuple[int, np.ndarray]], stuff: Iterable[tuple[int, np.ndarray]],
                  shape: tuple[int, int]) -> np.ndarray:
    """uint16 label ``shape`` from ``(stored id, boolean mask)`` LVIS instances and (mapped) stuff regions, each in
    annotation order: first instance wins, then first stuff region on the pixels no instance covers."""
    label = np.zeros(shape, dtype=np.uint16)
    for masks in (lvis, stuff):
        covered = label > 0
        layer = np.zeros(shape, dtype=np.uint16)
        taken = np.zeros(shape, dtype=bool)
        for category, mask in masks:
            new = mask & ~taken
            layer[new] = category
            taken |= new
        label[~covered] = layer[~covered]
    return label


def _load(path: Path) -> Any:
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise SystemExit("segcentroids convert-coco-lvis: needs pycocotools (pip install pycocotools)") from None
    if not path.is_file():
        raise SystemExit(f"segcentroids convert-coco-lvis: annotation file {path} does not exist")
    try:
        return COCO(str(path))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise SystemExit(f"segcentroids convert-coco-lvis: cannot read annotation file {path} ({error})") from None


def _image_path(image: dict, coco_root: Path) -> Path:
    """The COCO image of an LVIS image entry (``coco_url`` ends with ``<train2017|val2017>/<file>``)."""
    folder, name = image["coco_url"].split("/")[-2:]
    return coco_root / folder / name


def _annotations(index: Any, image_id: int) -> list[dict]:
    return index.loadAnns(index.getAnnIds(imgIds=[image_id]))


def _stuff_id(category: int, mapping: dict[int, int], stuff_file: Path) -> int:
    if category not in mapping:
        raise SystemExit(f"segcentroids convert-coco-lvis: {stuff_file} has category id {category}, not a COCO-Stuff "
                         f"stuff id (92..183)")
    return mapping[category]


def convert_split(lvis_file: Path, stuff_file: Path, coco_root: Path, out: Path, split: str) -> dict[str, int]:
    """Writes one split's labels and image links; returns counts of written and left-out images."""
    labels_dir, images_dir = out / "annotations" / split, out / "images" / split
    for folder in (labels_dir, images_dir):
        if folder.is_dir() and any(folder.iterdir()):
            raise SystemExit(f"segcentroids convert-coco-lvis: {folder} is not empty; nothing is overwritten")
        folder.mkdir(parents=True, exist_ok=True)
    lvis, stuff = _load(lvis_file), _load(stuff_file)
    mapping = stuff_to_coco_lvis()
    counts = {"written": 0, "no_stuff_entry": 0, "no_annotation": 0}
    for image_id, image in lvis.imgs.items():
        if image_id not in stuff.imgs:
            counts["no_stuff_entry"] += 1
            continue
        instances = [(a["category_id"], lvis.annToMask(a) > 0) for a in _annotations(lvis, image_id)]
        regions = [(_stuff_id(a["category_id"], mapping, stuff_file), stuff.annToMask(a) > 0)
                   for a in _annotations(stuff, image_id)]
        if not instances and not regions:
            counts["no_annotation"] += 1
            continue
        source = _image_path(image, coco_root)
        if not source.is_file():
            raise SystemExit(f"segcentroids convert-coco-lvis: image file {source} does not exist")
        label = compose_label(instances, regions, (image["height"], image["width"]))
        assert cv2.imwrite(str(labels_dir / f"{source.stem}.png"), label)
        (images_dir / source.name).symlink_to(source.resolve())
        counts["written"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segcentroids convert-coco-lvis", description=__doc__.split("\n\n")[0])
    parser.add_argument("--coco-root", type=Path, required=True,
                        help="COCO 2017: train2017/, val2017/ and annotations/stuff_{train,val}2017.json")
    parser.add_argument("--lvis-root", type=Path, required=True, help="folder of lvis_v1_train.json, lvis_v1_val.json")
    parser.add_argument("--out", type=Path, required=True, help="the COCO+LVIS root to write (COCOLVISDataModule)")
    parser.add_argument("--splits", nargs="+", choices=sorted(SPLITS), default=sorted(SPLITS))
    args = parser.parse_args(argv)
    for split in args.splits:
        lvis_name, stuff_name = SPLITS[split]
        counts = convert_split(args.lvis_root / lvis_name, args.coco_root / "annotations" / stuff_name,
                               args.coco_root, args.out, split)
        print(f"{split}: {counts['written']} labels written; left out: {counts['no_stuff_entry']} images without a "
              f"COCO-Stuff entry, {counts['no_annotation']} without any annotation")
    return 0
