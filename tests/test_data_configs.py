"""Every dataset config and test-protocol config runs (fast_dev_run) on its tiny tree, through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dataset_trees import (
    ade20k_tree,
    cihp_tree,
    cityscapes_tree,
    coco_stuff10k_tree,
    coco_stuff164k_tree,
    lip_tree,
    pascal_context_tree,
)

from segcentroids.cli import main
from segcentroids.inference import InferenceConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# data config -> (tree builder, its test-protocol configs)
DATASETS = {
    "ade20k": (ade20k_tree, ["ade20k", "ade20k_ms_flip"]),
    "cityscapes": (cityscapes_tree, ["cityscapes", "cityscapes_whole", "cityscapes_whole_ms_flip",
                                     "cityscapes_ms_flip"]),
    "cityscapes_train+val": (cityscapes_tree, ["cityscapes_whole"]),
    "coco_stuff10k": (coco_stuff10k_tree, ["coco_stuff", "coco_stuff_ms_flip"]),
    "coco_stuff164k": (coco_stuff164k_tree, ["coco_stuff"]),
    "pascal_context59": (pascal_context_tree, ["pascal_context", "pascal_context_ms_flip"]),
    "pascal_context60": (pascal_context_tree, ["pascal_context"]),
    "lip": (lip_tree, ["lip", "lip_flip"]),
    "cihp": (cihp_tree, ["lip_flip"]),
}
# slide-window blocks that experiments include (configs/experiments/**: `inference: ../../inference/<name>.yaml`)
WINDOW_BLOCKS = ["slide480x480", "slide480x480_unpadded", "slide512x512", "slide512x1024_stride512x768"]


def test_every_config_file_is_covered() -> None:
    protocols = {i for _, c in DATASETS.values() for i in c}
    assert {p.stem for p in (CONFIGS / "inference").glob("*.yaml")} == protocols | set(WINDOW_BLOCKS)
    data_files = {p.stem for p in (CONFIGS / "data").glob("*.yaml")}
    assert set(DATASETS) <= data_files


@pytest.mark.parametrize("name", sorted({i for _, c in DATASETS.values() for i in c}) + WINDOW_BLOCKS)
def test_inference_configs_are_valid(name: str) -> None:
    config = InferenceConfig(**yaml.safe_load((CONFIGS / "inference" / f"{name}.yaml").read_text()))
    assert config.mode in ("whole", "slide")


@pytest.mark.parametrize(("dataset", "protocol"), [(d, c[-1]) for d, (_, c) in DATASETS.items()])
def test_fast_dev_run(dataset: str, protocol: str, tmp_path: Path) -> None:
    builder = DATASETS[dataset][0]
    builder(tmp_path / "data")
    protocol_config = yaml.safe_load((CONFIGS / "inference" / f"{protocol}.yaml").read_text())
    slide = protocol_config["mode"] == "slide"
    multiscale = len(protocol_config.get("scales", [1.0])) > 1
    main([
        "fit",
        "--config", str(CONFIGS / "quickstart.yaml"),
        "--data", str(CONFIGS / "data" / f"{dataset}.yaml"),
        f"--data.init_args.root={tmp_path / 'data'}",
        "--data.init_args.crop_size=[32,32]",
        "--data.init_args.scale=null",
        "--data.init_args.test_scale=[64,64]",  # FPN's GroupNorm needs more than a 1x1 map at stride 32
        "--data.init_args.batch_size=2",
        "--data.init_args.num_workers=0",
        "--model.init_args.inference", str(CONFIGS / "inference" / f"{protocol}.yaml"),
        *(["--model.init_args.inference.crop_size=[32,32]", "--model.init_args.inference.stride=[24,24]"] * slide),
        *(["--model.init_args.inference.scales=[0.75,1.0]"] if multiscale else []),  # two of the scales: faster
        "--model.init_args.segmodel.init_args.decoder_channels=32",
        "--trainer.fast_dev_run=true",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    ])


def test_cihp_lip_train_config_trains_on_lip_and_validates_on_cihp(tmp_path: Path) -> None:
    """MCIBI Table 4's data: fit reads LIP's train images (train_root), validation reads CIHP's."""
    lip_tree(tmp_path / "lip")
    cihp_tree(tmp_path / "cihp")
    main([
        "fit", "--config", str(CONFIGS / "quickstart.yaml"),
        "--data", str(CONFIGS / "data" / "cihp_lip-train.yaml"),
        f"--data.init_args.root={tmp_path / 'cihp'}", f"--data.init_args.train_root={tmp_path / 'lip'}",
        "--data.init_args.crop_size=[32,32]", "--data.init_args.scale=null", "--data.init_args.test_scale=[64,64]",
        "--data.init_args.batch_size=2", "--data.init_args.num_workers=0",
        "--model.init_args.segmodel.init_args.decoder_channels=32", "--trainer.fast_dev_run=true",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    ])
