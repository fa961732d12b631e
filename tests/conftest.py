"""Shared fixtures: tiny models and data, and the CLI run in-process."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
import yaml

if TYPE_CHECKING:
    from segcentroids.models import SegModel

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TINY_DATA = str(CONFIGS / "data" / "synthetic_tiny.yaml")


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


TINY_RUN = [
    f"--data={TINY_DATA}",
    # a paper config's crop and scales survive the switch of data class: reset them to the tiny images
    "--data.init_args.crop_size=null",
    "--data.init_args.scale=null",
    "--data.init_args.test_scale=null",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
"""Arguments that shrink any config to a tiny CPU run (the run folder aside)."""


def tiny_overrides(run_dir: Path, *extra: str) -> list[str]:
    """Arguments that shrink any config to a tiny CPU run in `run_dir`."""
    return [*TINY_RUN, f"--trainer.default_root_dir={run_dir}", *extra]


def segmodel_args(config: Path) -> dict:
    """The SegModel init_args of an experiment file, read through its `segmodel:` block file (configs/model/)."""
    segmodel = yaml.safe_load(config.read_text())["model"]["init_args"]["segmodel"]
    if isinstance(segmodel, str):  # a path relative to the experiment file, as jsonargparse resolves it
        segmodel = yaml.safe_load((config.parent / segmodel).read_text())
    return segmodel["init_args"]


def tiny_segmodel_args(arch: str = "fpn", **overrides) -> dict:
    """SegModel arguments of the tests' small CPU model: ResNet-18 from scratch (no download), 32 decoder channels;
    `overrides` replace or add any SegModel argument (also as a CLI `init_args` block)."""
    return {"arch": arch, "encoder_name": "resnet18", "encoder_weights": None, "decoder_channels": 32, **overrides}


def tiny_segmodel(arch: str = "fpn", seed: int | None = None, **overrides) -> SegModel:
    """The tests' small SegModel (`tiny_segmodel_args`). With `seed`, torch is seeded first (equal seeds, equal
    weights)."""
    from segcentroids.models import SegModel  # here: most test files never build a model

    if seed is not None:
        torch.manual_seed(seed)
    return SegModel(**tiny_segmodel_args(arch, **overrides))
