"""ADE20K's 16k/4k re-split of the training images (Specialize and Fuse Sec. 5.4): disjoint, covering, proportional,
deterministic whatever the listing order, and equal to the documented rule written again here (docs/datasets.md)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from dataset_trees import ade20k_tree

from segcentroids.cli import main
from segcentroids.data import ADE20KDataModule
from segcentroids.data.ade20k import held_out_names
from tests.conftest import CONFIGS

SPLIT = "train16k_val4k"


def documented_rule(names: list[str], seed: int) -> set[str]:
    """docs/datasets.md: the round(n * 4000 / 20210) names with the smallest sha256("<seed>:<name>") hex digest."""
    count = round(len(names) * 4000 / 20210)
    return set(sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())[:count])


def stems(data: ADE20KDataModule, split: str) -> list[str]:
    return [image.stem for image, _ in data.list_split(split)]


def test_full_size_holds_out_exactly_4000_of_20210() -> None:
    names = [f"ADE_train_{i:08d}" for i in range(1, 20211)]
    held_out = held_out_names(names, seed=0)
    assert len(held_out) == 4000 and held_out <= set(names)
    assert held_out == documented_rule(names, seed=0)
    shuffled = names[:]
    random.Random(1).shuffle(shuffled)
    assert held_out_names(shuffled, seed=0) == held_out  # the listing order does not matter
    assert held_out_names(names, seed=1) != held_out  # the seed picks another split
    assert ADE20KDataModule(root="x", split_protocol=SPLIT).SPLIT_SIZES == {"train": 16210, "val": 4000, "test": 4000}


def test_tiny_tree_split_is_disjoint_covering_and_proportional(tmp_path: Path) -> None:
    ade20k_tree(tmp_path, train_count=101)
    data = ADE20KDataModule(root=tmp_path, split_protocol=SPLIT, num_workers=0)
    train, val, test = stems(data, "train"), stems(data, "val"), stems(data, "test")
    training = stems(ADE20KDataModule(root=tmp_path), "train")
    assert len(training) == 101
    assert val == test and len(val) == round(101 * 4000 / 20210) == 20 and len(train) == 81
    assert not set(train) & set(val) and sorted(train + val) == sorted(training)  # disjoint and covering
    assert all("valid" not in name for name in train + val)  # the official validation folder is not read
    assert set(val) == documented_rule(training, seed=0)
    again = ADE20KDataModule(root=tmp_path / "ADEChallengeData2016", split_protocol=SPLIT)
    assert stems(again, "val") == val and stems(again, "train") == train
    other = ADE20KDataModule(root=tmp_path, split_protocol=SPLIT, split_seed=3)
    assert set(stems(other, "val")) == documented_rule(training, seed=3) != set(val)


def test_official_protocol_is_unchanged(tmp_path: Path) -> None:
    ade20k_tree(tmp_path)
    data = ADE20KDataModule(root=tmp_path)
    assert len(stems(data, "train")) == 3 and stems(data, "val") == ["ADE_valid_00000000", "ADE_valid_00000001"]


def test_bad_split_protocol_names_the_key() -> None:
    with pytest.raises(ValueError, match="split_protocol"):
        ADE20KDataModule(root="x", split_protocol="16k")


def test_too_few_images_to_split(tmp_path: Path) -> None:
    ade20k_tree(tmp_path, train_count=1)
    with pytest.raises(ValueError, match="at least 2 training images"):
        ADE20KDataModule(root=tmp_path, split_protocol=SPLIT).list_split("val")


def test_ablation_data_config_runs_through_the_cli(tmp_path: Path) -> None:
    """The S&F ablations' data config (fit then validate on the held-out part) with the quickstart model."""
    ade20k_tree(tmp_path / "data", train_count=12)
    main(["fit", "--config", str(CONFIGS / "quickstart.yaml"),
          "--data", str(CONFIGS / "data" / "ade20k_train16k_val4k_batch4.yaml"),
          f"--data.init_args.root={tmp_path / 'data'}", "--data.init_args.crop_size=[32,32]",
          "--data.init_args.scale=null", "--data.init_args.test_scale=[64,64]", "--data.init_args.batch_size=2",
          "--data.init_args.num_workers=0", "--model.init_args.segmodel.init_args.decoder_channels=32",
          "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false",
          "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={tmp_path / 'run'}"])
