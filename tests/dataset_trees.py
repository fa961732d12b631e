"""Tiny dataset trees in each dataset's exact on-disk layout, for the DataModule and checker tests.

Each builder writes images and labels as the dataset's own release (or mmsegmentation's converter) stores them and
returns ``{(split, name): stored label array}``; the tests map those arrays with rules they write themselves.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import scipy.io

# Cityscapes: labelId -> trainId, from the official table (cityscapesScripts labels.py), -1 written as 255.
CITYSCAPES_OFFICIAL = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255, 11: 2, 12: 3, 13: 4,
    14: 255, 15: 255, 16: 255, 17: 5, 18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18, 255: 255,
}  # fmt: skip
# COCO thing ids never used (0-based, as in the stuffthingmaps).
COCO_UNUSED_0_BASED = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}


def labels_with_values(values: list[int], shape: tuple[int, int], seed: int) -> np.ndarray:
    """uint8 label map of ``shape`` holding every value of ``values`` at least once, in a shuffled order."""
    count = shape[0] * shape[1]
    assert count >= len(values)
    rng = np.random.default_rng(seed)
    cells = np.resize(np.asarray(values, dtype=np.uint8), count)
    return rng.permutation(cells).reshape(shape)


def write_image(path: Path, shape: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)


def write_png(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), label)


def ade20k_tree(root: Path, shape: tuple[int, int] = (12, 16), train_count: int = 3
                ) -> dict[tuple[str, str], np.ndarray]:
    """``ADEChallengeData2016/{images,annotations}/{training,validation}``; labels 0..150 (0 = other);
    ``train_count`` training images and 2 validation images."""
    base = root / "ADEChallengeData2016"
    stored = {}
    for split, folder, count in (("train", "training", train_count), ("val", "validation", 2)):
        for index in range(count):
            name = f"ADE_{folder[:5]}_{index:08d}"
            values = list(range(0, 151)) if index == 0 else [0, 0, 0, 5, 150]
            label = labels_with_values(values, shape, seed=index)
            write_image(base / "images" / folder / f"{name}.jpg", shape, index)
            write_png(base / "annotations" / folder / f"{name}.png", label)
            stored[(split, name)] = label
    return stored


def cityscapes_tree(root: Path, shape: tuple[int, int] = (8, 16)) -> dict[tuple[str, str], np.ndarray]:
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/<split>/<city>/*_gtFine_*`` with every labelId.

    In ``val``, the first image of ``frankfurt`` also has a ``_labelTrainIds.png`` (which must be preferred); the
    other gtFine files (``_color.png``, ``_instanceIds.png``, ``_polygons.json``) are there as in the release.
    """
    stored = {}
    seed = 0
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt", "lindau"))):
        for city in cities:
            for index in range(2):
                seed += 1
                name = f"{city}_{index:06d}_000019"
                label_ids = labels_with_values(sorted(CITYSCAPES_OFFICIAL), shape, seed)
                write_image(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", shape, seed)
                gt = root / "gtFine" / split / city
                write_png(gt / f"{name}_gtFine_labelIds.png", label_ids)
                write_png(gt / f"{name}_gtFine_instanceIds.png", label_ids)
                write_image(gt / f"{name}_gtFine_color.png", shape, seed)
                (gt / f"{name}_gtFine_polygons.json").write_text("{}")
                stored[(split, name)] = label_ids
                if split == "val" and city == "frankfurt" and index == 0:
                    train_ids = labels_with_values([*range(19), 255], shape, seed + 100)
                    write_png(gt / f"{name}_gtFine_labelTrainIds.png", train_ids)
                    stored[(split, name)] = train_ids
    return stored


def coco_stuff10k_tree(root: Path, shape: tuple[int, int] = (16, 16), converted: bool = False) -> dict:
    """COCO-Stuff-10k: ``images/<name>.jpg``, ``annotations/<name>.mat`` (field S, 0..182), ``imageLists``.

    With ``converted``: mmsegmentation's layout, ``images/{train2014,test2014}`` and
    ``annotations/{train2014,test2014}/<name>_labelTrainIds.png`` holding 0..171 (0 = unlabelled).
    """
    stored = {}
    (root / "imageLists").mkdir(parents=True, exist_ok=True)
    for split, list_name, folder, count in (("train", "train", "train2014", 3), ("test", "test", "test2014", 2)):
        names = [f"COCO_{folder}_{index:012d}" for index in range(count)]
        (root / "imageLists" / f"{list_name}.txt").write_text("\n".join(names) + "\n")
        for index, name in enumerate(names):
            if converted:
                label = labels_with_values(list(range(0, 172)), shape, seed=index)
                write_image(root / "images" / folder / f"{name}.jpg", shape, index)
                write_png(root / "annotations" / folder / f"{name}_labelTrainIds.png", label)
            else:
                label = labels_with_values(list(range(0, 183)), shape, seed=index)
                write_image(root / "images" / f"{name}.jpg", shape, index)
                (root / "annotations").mkdir(parents=True, exist_ok=True)
                scipy.io.savemat(root / "annotations" / f"{name}.mat", {"S": label, "names": np.array(["x"])})
            stored[(split, name)] = label
    return stored


def coco_stuff164k_tree(root: Path, shape: tuple[int, int] = (16, 16)) -> dict[tuple[str, str], np.ndarray]:
    """``images/{train2017,val2017}/*.jpg`` + ``annotations/.../*.png`` stuffthingmaps (0..181 with the unused
    ids, and 255); one val image also has a converted ``_labelTrainIds.png`` (0..170, 255) beside it."""
    stored = {}
    for split, folder, count in (("train", "train2017", 2), ("val", "val2017", 2)):
        for index in range(count):
            name = f"{index:012d}"
            label = labels_with_values([*range(182), 255], shape, seed=index + 7)
            write_image(root / "images" / folder / f"{name}.jpg", shape, index)
            write_png(root / "annotations" / folder / f"{name}.png", label)
            stored[(split, name)] = label
            if split == "val" and index == 1:
                converted = labels_with_values([*range(171), 255], shape, seed=99)
                write_png(root / "annotations" / folder / f"{name}_labelTrainIds.png", converted)
                stored[(split, name)] = converted
    return stored


def pascal_context_tree(root: Path, shape: tuple[int, int] = (10, 12)) -> dict[tuple[str, str], np.ndarray]:
    """``VOCdevkit/VOC2010/{JPEGImages,SegmentationClassContext,ImageSets/SegmentationContext}``; labels 0..59."""
    base = root / "VOCdevkit" / "VOC2010"
    stored = {}
    (base / "ImageSets" / "SegmentationContext").mkdir(parents=True, exist_ok=True)
    for split, count, offset in (("train", 2, 0), ("val", 2, 10)):
        names = [f"2008_{offset + index:06d}" for index in range(count)]
        (base / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for index, name in enumerate(names):
            label = labels_with_values(list(range(60)), shape, seed=offset + index)
            write_image(base / "JPEGImages" / f"{name}.jpg", shape, index)
            write_png(base / "SegmentationClassContext" / f"{name}.png", label)
            stored[(split, name)] = label
    # an image of another split that no list names: must not be picked up
    write_image(base / "JPEGImages" / "2008_999999.jpg", shape, 0)
    return stored


def lip_tree(root: Path, shape: tuple[int, int] = (10, 8)) -> dict[tuple[str, str], np.ndarray]:
    """``{train,val}_images/*.jpg`` + ``{train,val}_segmentations/*.png``; 0..19 with left/right parts."""
    stored = {}
    for split, count in (("train", 2), ("val", 2)):
        for index in range(count):
            name = f"{index + 1}_{split}"
            label = labels_with_values([*range(20), 255], shape, seed=index + 3)
            write_image(root / f"{split}_images" / f"{name}.jpg", shape, index)
            write_png(root / f"{split}_segmentations" / f"{name}.png", label)
            stored[(split, name)] = label
    return stored


def cihp_tree(root: Path, shape: tuple[int, int] = (8, 10)) -> dict[tuple[str, str], np.ndarray]:
    """``instance-level_human_parsing/{Training,Validation}/{Images/*.jpg,Category_ids/*.png}`` (LIP's 0..19 and
    255), with the release's other folders (``Instance_ids``, ``Human_ids``, ``Instances``) beside them."""
    stored = {}
    for split, folder, count in (("train", "Training", 3), ("val", "Validation", 2)):
        base = root / "instance-level_human_parsing" / folder
        for index in range(count):
            name = f"{index:07d}"
            label = labels_with_values([*range(20), 255], shape, seed=index + 11)
            write_image(base / "Images" / f"{name}.jpg", shape, index)
            write_png(base / "Category_ids" / f"{name}.png", label)
            write_png(base / "Instance_ids" / f"{name}.png", label)
            write_png(base / "Human_ids" / f"{name}.png", label)
            stored[(split, name)] = label
        (base / f"{folder.lower()}_id.txt").write_text("".join(f"{i:07d}\n" for i in range(count)))
    return stored


# VSPW videos of the tiny tree: (split, video, frames); "static" repeats one frame (the same-augmentation test)
VSPW_VIDEOS = (("train", "1001_train_a", 3), ("train", "1002_static", 2), ("val", "2001_val_long", 17),
               ("val", "2002_val_short", 3))
VSPW_STORED = np.array([0, 1, 60, 124, 255, 7], dtype=np.uint8)  # class of the clip generator -> stored VSPW value


def vspw_tree(root: Path, shape: tuple[int, int] = (16, 24)) -> dict[tuple[str, str], np.ndarray]:
    """``VSPW_480p/data/<video>/{origin/*.jpg,mask/*.png}`` + ``train.txt``, ``val.txt``, ``test.txt``; masks hold
    0 (others), 1..124 and 255 (void) on shapes moving across the frames (``synthetic_clip``). The test video has
    frames only (the public release has no test masks). Keys are ``(split, "<video>/<frame>")``."""
    from segcentroids.data.clips import synthetic_clip

    base = root / "VSPW_480p"
    stored = {}
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": ["3001_test"]}
    for seed, (split, video, count) in enumerate(VSPW_VIDEOS):
        lists[split].append(video)
        frames, labels = synthetic_clip(count, shape, num_classes=len(VSPW_STORED), num_shapes=3, seed=seed)
        if video.endswith("static"):
            frames, labels = np.repeat(frames[:1], count, axis=0), np.repeat(labels[:1], count, axis=0)
        for index in range(count):
            name = f"{index:08d}"
            label = VSPW_STORED[labels[index]]
            label[0, 0] = 124  # every stored kind in every frame: 124 and, below, void
            label[0, 1] = 255
            assert cv2.imwrite(str(_mkdir(base / "data" / video / "origin") / f"{name}.jpg"),
                               frames[index][..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
            write_png(base / "data" / video / "mask" / f"{name}.png", label)
            stored[(split, f"{video}/{name}")] = label
    write_image(base / "data" / "3001_test" / "origin" / "00000000.jpg", shape, 0)
    for split, videos in lists.items():
        (base / f"{split}.txt").write_text("".join(f"{video}\n" for video in videos))
    return stored


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
