"""Every Baseline config (and the quickstart) runs one training and one validation batch on tiny synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest

from segcentroids.cli import main
from tests.conftest import CONFIGS, tiny_overrides

BASELINE_CONFIGS = sorted((CONFIGS / "experiments" / "baseline").glob("*.yaml")) + [CONFIGS / "quickstart.yaml"]
SMALL_MODEL = [
    "--model.init_args.segmodel.init_args.encoder_name=resnet18",
    "--model.init_args.segmodel.init_args.encoder_weights=null",
    "--model.init_args.segmodel.init_args.decoder_channels=32",
    "--model.init_args.inference.crop_size=[32,32]",
    "--model.init_args.inference.stride=[16,16]",
]


@pytest.mark.parametrize("config", BASELINE_CONFIGS, ids=lambda p: p.stem)
def test_fast_dev_run(config: Path, tmp_path: Path) -> None:
    main(["fit", "--config", str(config), *tiny_overrides(tmp_path), "--trainer.fast_dev_run=true", *SMALL_MODEL])
