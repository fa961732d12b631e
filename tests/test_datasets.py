"""The papers' DataModules load tiny trees in each exact layout with exactly the right labels.

The expected train ids come from rules written here, independently of the package's lookup tables.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from dataset_trees import (
    CITYSCAPES_OFFICIAL,
    COCO_UNUSED_0_BASED,
    ade20k_tree,
    cihp_tree,
    cityscapes_tree,
    coco_stuff10k_tree,
    coco_stuff164k_tree,
    lip_tree,
    pascal_context_tree,
    write_image,
    write_png,
)

from segcentroids.data import (
    ADE20KDataModule,
    CIHPDataModule,
    CityscapesDataModule,
    COCOStuff10kDataModule,
    COCOStuff164kDataModule,
    LeftRightFlip,
    LIPDataModule,
    PascalContext59DataModule,
    PascalContext60DataModule,
)

UNDEFINED = -1
COCO_USED_0_BASED = [v for v in range(182) if v not in COCO_UNUSED_0_BASED]


# ------------------------------------------------------------------------------------ rules written for the test
def reduce_zero(value: int, num_classes: int) -> int:
    if value == 0 or value == 255:
        return 255
    return value - 1 if value <= num_classes else UNDEFINED


def cityscapes_label_ids(value: int) -> int:
    return CITYSCAPES_OFFICIAL.get(value, UNDEFINED)


def as_stored(num_classes: int) -> Callable[[int], int]:
    return lambda value: value if value < num_classes or value == 255 else UNDEFINED


def coco_stuffthingmaps(value: int) -> int:
    if value in COCO_UNUSED_0_BASED or value == 255:
        return 255
    return COCO_USED_0_BASED.index(value) if value < 182 else UNDEFINED


def coco_mat(value: int) -> int:
    if value == 0:
        return 255
    return coco_stuffthingmaps(value - 1) if value <= 182 else UNDEFINED


def coco10k_converted(value: int) -> int:
    return reduce_zero(value, 171)


def apply_rule(rule: Callable[[int], int], raw: np.ndarray) -> np.ndarray:
    return np.vectorize(rule, otypes=[np.int64])(raw.astype(np.int64))


# --------------------------------------------------------------------------------------------- map_labels tables
@pytest.mark.parametrize(
    ("module", "rule"),
    [
        (ADE20KDataModule, lambda v: reduce_zero(v, 150)),
        (PascalContext59DataModule, lambda v: reduce_zero(v, 59)),
        (PascalContext60DataModule, as_stored(60)),
        (CityscapesDataModule, cityscapes_label_ids),
        (COCOStuff10kDataModule, coco_mat),
        (COCOStuff164kDataModule, coco_stuffthingmaps),
        (LIPDataModule, as_stored(20)),
    ],
)
def test_map_labels_on_every_stored_value(module: type, rule: Callable[[int], int]) -> None:
    raw = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(module.map_labels(raw).astype(np.int64), apply_rule(rule, raw))
    wide = raw.astype(np.int32) + 300  # values no uint8 table holds are undefined, not wrapped
    assert (module.map_labels(wide) == UNDEFINED).all()


@pytest.mark.parametrize(
    ("module", "num_classes"),
    [
        (ADE20KDataModule, 150),
        (CityscapesDataModule, 19),
        (COCOStuff10kDataModule, 171),
        (COCOStuff164kDataModule, 171),
        (PascalContext59DataModule, 59),
        (PascalContext60DataModule, 60),
        (LIPDataModule, 20),
    ],
)
def test_class_names_and_palette(module: type, num_classes: int, tmp_path: Path) -> None:
    data = module(root=tmp_path)
    assert data.num_classes == num_classes
    assert len(set(data.class_names)) == num_classes
    assert len(data.palette) == num_classes and len(set(data.palette)) == num_classes
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in data.palette)
    assert data.ignore_index == 255
    assert set(module.SPLIT_SIZES) >= {"train", "val"}


def test_paper_values_of_class_names() -> None:
    assert CityscapesDataModule.CLASS_NAMES[13] == "car" and CityscapesDataModule.CLASS_NAMES[18] == "bicycle"
    assert ADE20KDataModule.CLASS_NAMES[0] == "wall" and ADE20KDataModule.CLASS_NAMES[149] == "flag"
    assert COCOStuff164kDataModule.CLASS_NAMES[0] == "person" and COCOStuff164kDataModule.CLASS_NAMES[80] == "banner"
    assert LIPDataModule.CLASS_NAMES[14:20] == (
        "left-arm", "right-arm", "left-leg", "right-leg", "left-shoe", "right-shoe"
    )


# ------------------------------------------------------------------------------------------ loading the trees
def load_split(data, split: str, image_suffix: str = "") -> dict[str, np.ndarray]:
    """``{name: mask}`` of every item of an evaluation split (masks at the stored size)."""
    data.setup({"val": "validate", "test": "test"}[split])
    dataset = data.datasets[split]
    masks = {}
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["image"].dtype.is_floating_point and item["image"].shape[0] == 3
        name = item["name"][: -len(image_suffix)] if image_suffix else item["name"]
        masks[name] = item["mask"].numpy()
    return masks


def assert_split_matches(masks: dict[str, np.ndarray], stored: dict, split: str, rule: Callable) -> None:
    expected = {name: raw for (s, name), raw in stored.items() if s == split}
    assert sorted(masks) == sorted(expected)
    for name, raw in expected.items():
        np.testing.assert_array_equal(masks[name], apply_rule(rule, raw), err_msg=name)


def test_ade20k_tree(tmp_path: Path) -> None:
    stored = ade20k_tree(tmp_path)
    data = ADE20KDataModule(root=tmp_path, num_workers=0, check_files=True)
    assert_split_matches(load_split(data, "val"), stored, "val", lambda v: 255 if v == 0 else v - 1)
    assert len(data.list_split("train")) == 3
    # the root may also be the ADEChallengeData2016 folder itself
    assert len(ADE20KDataModule(root=tmp_path / "ADEChallengeData2016").list_split("val")) == 2


def test_cityscapes_tree_with_every_label_id(tmp_path: Path) -> None:
    stored = cityscapes_tree(tmp_path)
    data = CityscapesDataModule(root=tmp_path, num_workers=0, check_files=True)
    masks = load_split(data, "val", image_suffix="_leftImg8bit")
    converted = "frankfurt_000000_000019"
    assert_split_matches(
        {k: v for k, v in masks.items() if k != converted},
        {k: v for k, v in stored.items() if k[1] != converted},
        "val",
        cityscapes_label_ids,
    )
    np.testing.assert_array_equal(masks[converted], stored[("val", converted)])  # labelTrainIds: as stored
    train = data.list_split("train")
    assert len(train) == 4 and all(label.name.endswith("_gtFine_labelIds.png") for _, label in train)


def test_coco_stuff10k_mat_tree(tmp_path: Path) -> None:
    stored = coco_stuff10k_tree(tmp_path)
    data = COCOStuff10kDataModule(root=tmp_path, num_workers=0, check_files=True)
    assert_split_matches(load_split(data, "test"), stored, "test", coco_mat)
    assert [image.stem for image, _ in data.list_split("train")] == [f"COCO_train2014_{i:012d}" for i in range(3)]


def test_coco_stuff10k_converted_tree(tmp_path: Path) -> None:
    stored = coco_stuff10k_tree(tmp_path, converted=True)
    data = COCOStuff10kDataModule(root=tmp_path, num_workers=0, check_files=True)
    assert_split_matches(load_split(data, "val"), stored, "test", coco10k_converted)


def test_coco_stuff164k_tree_with_unused_ids_and_255(tmp_path: Path) -> None:
    stored = coco_stuff164k_tree(tmp_path)
    data = COCOStuff164kDataModule(root=tmp_path, num_workers=0, check_files=True)
    masks = load_split(data, "val")
    raw_name, converted_name = "000000000000", "000000000001"
    np.testing.assert_array_equal(masks[raw_name], apply_rule(coco_stuffthingmaps, stored[("val", raw_name)]))
    np.testing.assert_array_equal(masks[converted_name], stored[("val", converted_name)])
    assert len(data.list_split("train")) == 2


def test_pascal_context_tree(tmp_path: Path) -> None:
    stored = pascal_context_tree(tmp_path)
    data = PascalContext59DataModule(root=tmp_path, num_workers=0, check_files=True)
    assert_split_matches(load_split(data, "val"), stored, "val", lambda v: 255 if v == 0 else v - 1)
    assert [image.stem for image, _ in data.list_split("train")] == ["2008_000000", "2008_000001"]


def test_pascal_context60_keeps_background(tmp_path: Path) -> None:
    stored = pascal_context_tree(tmp_path)
    data = PascalContext60DataModule(root=tmp_path, num_workers=0, check_files=True)
    assert_split_matches(load_split(data, "val"), stored, "val", lambda v: v)
    assert data.class_names[0] == "background" and data.class_names[1:] == list(PascalContext59DataModule.CLASS_NAMES)


# ------------------------------------------------------------------------------------------- test-server ids
@pytest.mark.parametrize("module", [ADE20KDataModule, PascalContext59DataModule, PascalContext60DataModule,
                                    CityscapesDataModule, COCOStuff10kDataModule, COCOStuff164kDataModule,
                                    LIPDataModule])
def test_server_ids_round_trip_through_the_datasets_label_mapping(module: type, tmp_path: Path) -> None:
    """Every train id written in the server's ids reads back as itself through the dataset's own `map_labels`."""
    data = module(root=tmp_path)
    train_ids = np.arange(data.num_classes).reshape(1, -1)
    np.testing.assert_array_equal(module.map_labels(data.server_ids(train_ids)), train_ids)


def test_server_ids_by_hand(tmp_path: Path) -> None:
    cityscapes, ade = CityscapesDataModule(root=tmp_path), ADE20KDataModule(root=tmp_path)
    coco10k, coco164k = COCOStuff10kDataModule(root=tmp_path), COCOStuff164kDataModule(root=tmp_path)
    ids = np.array([[0, 13, 18]])  # road, car, bicycle: labelIds 7, 26, 33
    np.testing.assert_array_equal(cityscapes.server_ids(ids), [[7, 26, 33]])
    np.testing.assert_array_equal(ade.server_ids(np.array([[0, 149]])), [[1, 150]])
    person_banner = np.array([[0, 80]])  # COCO ids 1 (person) and 92 (banner)
    np.testing.assert_array_equal(coco10k.server_ids(person_banner), [[1, 92]])
    np.testing.assert_array_equal(coco164k.server_ids(person_banner), [[0, 91]])
    assert PascalContext59DataModule(root=tmp_path).server_ids(np.array([[0]]))[0, 0] == 1
    lip = LIPDataModule(root=tmp_path)
    assert lip.server_ids(ids) is ids  # stored ids are the train ids


def test_lip_tree_as_stored(tmp_path: Path) -> None:
    stored = lip_tree(tmp_path)
    data = LIPDataModule(root=tmp_path, num_workers=0, check_files=True)
    assert_split_matches(load_split(data, "val"), stored, "val", lambda v: v)


def test_lip_training_flip_swaps_left_and_right(tmp_path: Path) -> None:
    stored = lip_tree(tmp_path)
    data = LIPDataModule(
        root=tmp_path, num_workers=0, crop_size=(10, 8), scale=None, ratio_range=(1.0, 1.0), cat_max_ratio=1.0,
        flip_prob=1.0, photometric=False,
    )
    data.setup("fit")
    swap = {14: 15, 15: 14, 16: 17, 17: 16, 18: 19, 19: 18}
    for index in range(2):
        item = data.datasets["train"][index]
        raw = stored[("train", item["name"])]
        expected = apply_rule(lambda v: swap.get(v, v), raw[:, ::-1])
        np.testing.assert_array_equal(item["mask"].numpy(), expected)
        assert any(isinstance(t, LeftRightFlip) for t in data.datasets["train"].transform.transforms)


def test_cityscapes_train_plus_val(tmp_path: Path) -> None:
    """`train_split="train+val"` (MCIBI Table 8) trains on the 4 train and 4 val images of the tree; val stays val."""
    stored = cityscapes_tree(tmp_path)
    data = CityscapesDataModule(root=tmp_path, num_workers=0, train_split="train+val")
    names = sorted(image.name.removesuffix("_leftImg8bit.png") for image, _ in data.list_split("train"))
    assert names == sorted(name for _, name in stored) and len(names) == 8
    assert len(data.list_split("val")) == 4
    assert len(CityscapesDataModule(root=tmp_path, num_workers=0).list_split("train")) == 4
    with pytest.raises(ValueError, match="train_split"):
        CityscapesDataModule(root=tmp_path, train_split="trainval")


def test_cihp_tree_as_stored_with_lip_flip(tmp_path: Path) -> None:
    stored = cihp_tree(tmp_path)
    data = CIHPDataModule(root=tmp_path, num_workers=0, check_files=True)
    assert data.num_classes == 20 and data.class_names[14:16] == ["left-arm", "right-arm"]
    assert_split_matches(load_split(data, "val"), stored, "val", lambda v: v)
    assert [image.stem for image, _ in data.list_split("train")] == ["0000000", "0000001", "0000002"]
    assert all(label.parent.name == "Category_ids" for _, label in data.list_split("test"))
    assert isinstance(data.flip_transform(), LeftRightFlip)
    assert LeftRightFlip().pairs == ((14, 15), (16, 17), (18, 19))


def test_cihp_trains_on_lip_with_train_root(tmp_path: Path) -> None:
    """MCIBI Table 4: the train split from a LIP tree, val and test from CIHP."""
    cihp_tree(tmp_path / "cihp")
    lip = lip_tree(tmp_path / "lip")
    data = CIHPDataModule(root=tmp_path / "cihp", train_root=tmp_path / "lip", num_workers=0)
    assert sorted(image.stem for image, _ in data.list_split("train")) == sorted(
        name for split, name in lip if split == "train")
    assert len(data.list_split("val")) == 2 and all("Validation" in str(image) for image, _ in data.list_split("val"))


def test_left_right_flip_on_wide_masks() -> None:
    mask = np.array([[14, 16, 18, 3], [255, 15, 17, 19]], dtype=np.int64)
    out = LeftRightFlip(p=1.0)(image=np.zeros((2, 4, 3), np.uint8), mask=mask)["mask"]
    np.testing.assert_array_equal(out, [[3, 19, 17, 15], [18, 16, 14, 255]])


def test_training_batches_have_the_crop_size(tmp_path: Path) -> None:
    cityscapes_tree(tmp_path)
    data = CityscapesDataModule(root=tmp_path, num_workers=0, batch_size=2, crop_size=(4, 8), scale=(16, 8))
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (2, 3, 4, 8) and batch["mask"].shape == (2, 4, 8)
    values = set(np.unique(batch["mask"].numpy()).tolist())
    assert values <= set(range(19)) | {255}


# ----------------------------------------------------------------------------------------------------- errors
def test_undefined_label_value_names_the_file(tmp_path: Path) -> None:
    ade20k_tree(tmp_path)
    bad = tmp_path / "ADEChallengeData2016" / "annotations" / "validation" / "ADE_valid_00000001.png"
    write_png(bad, np.full((12, 16), 151, dtype=np.uint8))
    with pytest.raises(ValueError, match="ADE_valid_00000001.png.*151"):
        ADE20KDataModule(root=tmp_path, num_workers=0, check_files=True).setup("validate")


def test_unpaired_files_are_named(tmp_path: Path) -> None:
    cityscapes_tree(tmp_path)
    write_image(tmp_path / "leftImg8bit" / "train" / "aachen" / "aachen_000009_000019_leftImg8bit.png", (8, 16), 0)
    with pytest.raises(ValueError, match="aachen_000009_000019_leftImg8bit.png"):
        CityscapesDataModule(root=tmp_path).list_split("train")


def test_listed_name_without_files_is_named(tmp_path: Path) -> None:
    coco_stuff10k_tree(tmp_path)
    with (tmp_path / "imageLists" / "test.txt").open("a") as handle:
        handle.write("COCO_test2014_000000999999\n")
    with pytest.raises(ValueError, match="COCO_test2014_000000999999"):
        COCOStuff10kDataModule(root=tmp_path).list_split("test")


def test_corrupt_mat_file_names_the_file(tmp_path: Path) -> None:
    coco_stuff10k_tree(tmp_path)
    (tmp_path / "annotations" / "COCO_test2014_000000000001.mat").write_bytes(b"not a mat file" * 4)
    with pytest.raises(ValueError, match="COCO_test2014_000000000001.mat"):
        COCOStuff10kDataModule(root=tmp_path, num_workers=0, check_files=True).setup("test")


def test_unknown_split_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        LIPDataModule(root=tmp_path).list_split("trainval")
