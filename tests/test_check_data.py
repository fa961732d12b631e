"""The dataset checker finds every planted fault, and passes a clean tree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dataset_trees import ade20k_tree, coco_stuff10k_tree, lip_tree, write_image, write_png

from segcentroids.data import ADE20KDataModule, COCOStuff10kDataModule, LIPDataModule
from segcentroids.data.check import check_dataset, main


def test_clean_tree_passes_and_histogram_counts_every_pixel(tmp_path: Path) -> None:
    stored = lip_tree(tmp_path)
    report = check_dataset(LIPDataModule(root=tmp_path), check_counts=False)
    assert report.ok, report.problems
    assert [s.split for s in report.splits] == ["train", "val"]  # LIP's test is the val data again
    for split in report.splits:
        raws = [raw for (s, _), raw in stored.items() if s == split.split]
        expected = np.zeros(20, dtype=np.int64)
        for raw in raws:
            for value in raw.ravel():
                if value != 255:
                    expected[value] += 1
        np.testing.assert_array_equal(split.class_pixels, expected)
        assert split.ignore_pixels == sum(int((raw == 255).sum()) for raw in raws)
    assert "lip" in report.format().lower() and "0 problem(s)" in report.format()


def test_published_split_sizes_are_checked(tmp_path: Path) -> None:
    lip_tree(tmp_path)
    problems = check_dataset(LIPDataModule(root=tmp_path)).problems
    assert "train: 2 image/label pairs, expected 30462" in problems
    assert "val: 2 image/label pairs, expected 10000" in problems


@pytest.fixture
def faulty_ade20k(tmp_path: Path) -> Path:
    """An ADE20K tree with one planted fault of each kind."""
    ade20k_tree(tmp_path)
    base = tmp_path / "ADEChallengeData2016"
    images, labels = base / "images" / "training", base / "annotations" / "training"
    write_image(images / "ADE_train_lonely_image.jpg", (12, 16), 0)  # image without a label
    write_png(labels / "ADE_train_lonely_label.png", np.zeros((12, 16), np.uint8))  # label without an image
    (images / "ADE_train_00000001.jpg").write_bytes(b"\xff\xd8 not really a jpeg")  # unreadable image
    (labels / "ADE_train_00000002.png").write_bytes(b"\x89PNG truncated")  # unreadable label
    write_png(base / "annotations" / "validation" / "ADE_valid_00000000.png", np.ones((12, 15), np.uint8))  # size
    bad = np.full((12, 16), 3, np.uint8)
    bad[0, 0], bad[5, 5] = 200, 151  # values the rule does not define
    write_png(base / "annotations" / "validation" / "ADE_valid_00000001.png", bad)
    return tmp_path


def test_checker_finds_every_planted_fault(faulty_ade20k: Path) -> None:
    report = check_dataset(ADE20KDataModule(root=faulty_ade20k), workers=2)
    problems = "\n".join(report.problems)
    assert not report.ok
    assert "ADE_train_lonely_image.jpg" in problems and "image(s) without a label" in problems
    assert "ADE_train_lonely_label.png" in problems and "label(s) without an image" in problems
    assert "train: 2 unreadable file(s)" in problems and "ADE_train_00000001.jpg" in problems
    assert "ADE_train_00000002.png" in problems
    assert "size mismatch" in problems and "ADE_valid_00000000.jpg 12x16 vs ADE_valid_00000000.png 12x15" in problems
    assert "label value 200 is not allowed" in problems and "label value 151 is not allowed" in problems
    assert "ADE_valid_00000001.png" in problems
    assert "train: 3 image/label pairs, expected 20210" in problems
    train = report.splits[0]
    assert train.pairs == 3 and train.checked == 3  # the paired files are still read
    assert train.images == 4 and train.labels == 4
    # the well-formed pairs' pixels are counted: ADE_train_00000000 holds every value 0..150
    assert train.class_pixels.sum() > 0


def test_main_exit_codes_and_json(faulty_ade20k: Path, tmp_path: Path) -> None:
    config = tmp_path / "data.yaml"
    config.write_text(
        "class_path: segcentroids.data.ADE20KDataModule\ninit_args:\n  root: /nonexistent\n  num_workers: 0\n"
    )
    out = tmp_path / "report.json"
    code = main(["--config", str(config), f"--data.init_args.root={faulty_ade20k}", "--json", str(out)])
    assert code == 1
    record = json.loads(out.read_text())
    assert record["ok"] is False and any("label value 200" in p for p in record["problems"])
    assert set(record["splits"]) == {"train", "val"}
    assert main(["--config", str(config)]) == 2  # the root does not exist: a usage error


def test_main_passes_a_clean_tree_from_a_run_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lip_tree(tmp_path / "lip")
    config = tmp_path / "run.yaml"
    config.write_text(
        "model:\n  class_path: segcentroids.methods.Baseline\n"
        f"data:\n  class_path: segcentroids.data.LIPDataModule\n  init_args:\n    root: {tmp_path / 'lip'}\n"
    )
    assert main(["--config", str(config), "--no-count-check"]) == 0
    assert "the dataset is ready" in capsys.readouterr().out
    assert main(["--config", str(config)]) == 1  # 2 images instead of the published 30,462


def test_corrupt_mat_annotation_is_unreadable(tmp_path: Path) -> None:
    coco_stuff10k_tree(tmp_path)
    (tmp_path / "annotations" / "COCO_train2014_000000000000.mat").write_bytes(b"MATLAB garbage" * 8)
    report = check_dataset(COCOStuff10kDataModule(root=tmp_path), splits=["train"], check_counts=False)
    assert report.problems == [
        f"train: 1 unreadable file(s): {tmp_path / 'annotations' / 'COCO_train2014_000000000000.mat'}"
    ]


def test_segcentroids_check_data_command(tmp_path: Path) -> None:
    from segcentroids.cli import main as cli_main

    lip_tree(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["check-data", "--data=segcentroids.data.LIPDataModule", f"--data.init_args.root={tmp_path}",
                  "--no-count-check"])
    assert exit_info.value.code == 0


def camvid_tree_with_faults(root: Path) -> None:
    """CamVid with 2 clean train pairs, and in val: an undefined label value, a size mismatch, an unreadable image."""
    for split in ("train", "val"):
        for index in range(3 if split == "val" else 2):
            write_image(root / split / f"f{index}.png", (12, 16), index)
            write_png(root / f"{split}annot" / f"f{index}.png", np.full((12, 16), index, np.uint8))
    write_png(root / "valannot" / "f0.png", np.full((12, 16), 12, np.uint8))  # 12 is neither a class nor void
    write_png(root / "valannot" / "f1.png", np.zeros((12, 15), np.uint8))
    (root / "val" / "f2.png").write_bytes(b"\x89PNG truncated")


def test_camvid_is_checked_like_every_dataset(tmp_path: Path) -> None:
    """CamVid pairs its folders with the same `scan_folders` as the others, so check-data walks it too."""
    from segcentroids.data import CamVidDataModule

    camvid_tree_with_faults(tmp_path)
    report = check_dataset(CamVidDataModule(root=tmp_path), splits=["train", "val"], check_counts=False)
    assert report.problems == [
        f"val: 1 unreadable file(s): {tmp_path / 'val' / 'f2.png'}",
        "val: 1 image/label size mismatch(es): f1.png 12x16 vs f1.png 12x15",
        f"val: label value 12 is not allowed by the dataset's rule, in 1 file(s): {tmp_path / 'valannot' / 'f0.png'}",
    ]
    assert report.splits[0].checked == 2 and report.splits[0].class_pixels.tolist()[:3] == [192, 192, 0]


def test_the_checker_and_the_dataset_find_the_same_bad_files(tmp_path: Path) -> None:
    """Both read pairs with `load_pair`: every pair the checker flags fails to load, naming the same file."""
    from segcentroids.data import CamVidDataModule

    camvid_tree_with_faults(tmp_path)
    data = CamVidDataModule(root=tmp_path, num_workers=0)
    data.setup("validate")
    problems = "\n".join(check_dataset(data, splits=["val"], check_counts=False).problems)
    for index, (image, label) in enumerate(data.datasets["val"].pairs):
        with pytest.raises((OSError, ValueError)) as error:
            data.datasets["val"].load(index)
        assert str(image) in str(error.value) or str(label) in str(error.value)
        assert image.name in problems  # an image and its label have the same name here


def test_a_datamodule_with_only_list_split_is_checked(tmp_path: Path) -> None:
    """A dataset added by implementing `list_split` alone (docs/data.md) is checked from its pairs."""
    from segcentroids.data import CamVidDataModule, SegDataModule

    camvid_tree_with_faults(tmp_path)

    class ListedPairs(CamVidDataModule):
        scan_split = SegDataModule.scan_split  # the base's: not implemented

        def list_split(self, split: str) -> list[tuple[Path, Path]]:
            return [(self.root / split / "f0.png", self.root / f"{split}annot" / "f0.png")]

    report = check_dataset(ListedPairs(root=tmp_path), splits=["train", "val"], check_counts=False)
    assert [split.pairs for split in report.splits] == [1, 1]
    assert report.problems == [
        f"val: label value 12 is not allowed by the dataset's rule, in 1 file(s): {tmp_path / 'valannot' / 'f0.png'}"
    ]
