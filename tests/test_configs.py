"""Every Baseline config (and the quickstart) runs one training and one validation batch on tiny synthetic data; every
experiment composed from its blocks resolves to the config it had before they were shared."""

from __future__ import annotations

import re
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


# ------------------------------------------------------------------------------------------- composed configs
EXPERIMENTS = sorted((CONFIGS / "experiments").rglob("*.yaml")) + [CONFIGS / "quickstart.yaml"]
RESOLVED = Path(__file__).parent / "data" / "resolved_configs"
"""`fit --print_config` of every experiment, printed before the experiments were split into the shared blocks of
configs/data, model, optim and inference (lightning 2.6.6, jsonargparse 4.53: other versions print other defaults)."""


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: str(p.relative_to(CONFIGS).with_suffix("")))
def test_resolved_config_is_unchanged(config: Path, capsys: pytest.CaptureFixture) -> None:
    expected = RESOLVED / config.relative_to(CONFIGS)
    assert expected.is_file(), f"no resolved config {expected} for {config}"
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(config), "--print_config"])
    assert stop.value.code in (0, None)
    assert capsys.readouterr().out == expected.read_text()


def test_every_resolved_config_has_its_experiment() -> None:
    assert {p.relative_to(RESOLVED) for p in RESOLVED.rglob("*.yaml")} == {p.relative_to(CONFIGS) for p in EXPERIMENTS}


@pytest.mark.parametrize("folder", ["model", "optim"])
def test_every_block_is_used_by_an_experiment(folder: str) -> None:
    """configs/model and configs/optim hold only blocks that experiments include (data and inference files are
    also given on the command line)."""
    included = {(config.parent / value).resolve() for config in EXPERIMENTS
                for value in re.findall(rf"^\s*\w+: (\S*{folder}/\S+\.yaml)$", config.read_text(), re.MULTILINE)}
    assert set((CONFIGS / folder).glob("*.yaml")) - included == set()
