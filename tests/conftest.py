"""Shared fixtures: tiny models and data, and the CLI run in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
