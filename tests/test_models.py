"""SegModel and FCNHead: shapes, strides, channels, gradients and errors (tiny CPU inputs, no weights)."""

import pytest
import torch

from segcentroids.models import ARCHS, SegModel
from segcentroids.nn import FCNHead
from tests.conftest import tiny_segmodel, tiny_segmodel_args

SIZE = 64
NUM_CLASSES = 5
EXPECTED_STRIDE = {
    "fcn": 8,
    "pspnet": 8,
    "deeplabv3": 8,
    "ocr": 8,
    "deeplabv3plus": 4,
    "fpn": 4,
    "upernet": 4,
    "segformer": 4,
    "hrnetv2": 4,
    "identity": 32,
}


def build(arch: str, encoder_name: str = "resnet18", **kwargs) -> SegModel:
    return tiny_segmodel(arch, encoder_name=encoder_name, num_classes=NUM_CLASSES, **kwargs)


def check_outputs(model: SegModel, out: dict, batch: int = 2, size: int = SIZE) -> None:
    """The output dict agrees with the model's attributes."""
    expected_keys = {"encoder", "decoder"} | ({"soft_regions"} if model.arch == "ocr" else set())
    assert set(out) == expected_keys
    side = size // model.output_stride
    assert out["decoder"].shape == (batch, model.out_channels, side, side)
    assert [f.shape[1] for f in out["encoder"]] == model.encoder_channels
    assert out["encoder"][-2].shape[1] == model.aux_channels
    assert torch.isfinite(out["decoder"]).all()
    if model.arch == "ocr":
        assert out["soft_regions"].shape == (batch, NUM_CLASSES, side, side)


def backprop_reaches_every_parameter(model: SegModel, out: dict) -> None:
    loss = out["decoder"].square().mean() + out.get("soft_regions", torch.zeros(())).square().mean()
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient for {missing[:5]}"


@pytest.mark.parametrize("arch", ARCHS)
def test_resnet_archs_shapes_strides_gradients(arch: str) -> None:
    torch.manual_seed(0)
    model = build(arch)
    assert model.output_stride == EXPECTED_STRIDE[arch]
    out = model(torch.randn(2, 3, SIZE, SIZE))
    check_outputs(model, out)
    if arch in ("fcn", "pspnet", "deeplabv3", "ocr"):  # full-depth encoder, dilated: last two stages stay at 1/8
        assert [f.shape[-1] for f in out["encoder"][-3:]] == [SIZE // 8] * 3
        assert model.encoder_channels[-1] == 512
    backprop_reaches_every_parameter(model, out)


@pytest.mark.parametrize("arch", ["fpn", "upernet", "segformer"])
def test_mit_encoder_stride4_archs(arch: str) -> None:
    model = build(arch, "mit_b0")
    out = model(torch.randn(2, 3, SIZE, SIZE))
    assert model.output_stride == 4
    check_outputs(model, out)


@pytest.mark.parametrize(
    ("arch", "encoder_name", "output_stride", "expected_stride"),
    [
        ("fcn", "tu-resnet18", None, 8),  # dilated by timm
        ("fpn", "tu-hrnet_w18_small", None, 4),  # HRNetV2 branches at strides 4-32
        ("identity", "tu-vit_tiny_patch16_224", None, 16),  # Segmenter-style plain ViT
        ("deeplabv3", "tu-vit_tiny_patch16_224", 16, 16),
    ],
)
def test_timm_encoders(arch: str, encoder_name: str, output_stride: int | None, expected_stride: int) -> None:
    model = build(arch, encoder_name, output_stride=output_stride)
    assert model.output_stride == expected_stride
    check_outputs(model, model(torch.randn(2, 3, SIZE, SIZE)))


@pytest.mark.parametrize(("arch", "encoder_name"), [("ocr", "tu-hrnet_w18_small"), ("fcn", "mit_b0")])
def test_single_input_archs_at_stride4_on_concatenated_stages(arch: str, encoder_name: str) -> None:
    model = build(arch, encoder_name, output_stride=4)  # HRNetV2 / OCRNet-HRNet style
    assert model.output_stride == 4
    out = model(torch.randn(2, 3, SIZE, SIZE))
    check_outputs(model, out)
    backprop_reaches_every_parameter(model, out)


def test_hrnetv2_is_the_concatenation_of_the_resized_stages() -> None:
    model = build("hrnetv2", "tu-hrnet_w18_small", decoder_channels=None).eval()
    images = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        out = model(images)
        stages = model.encoder(images)[2:]
    size = stages[0].shape[-2:]
    expected = torch.cat([stages[0]] + [torch.nn.functional.interpolate(s, size=size, mode="bilinear") for s in
                                        stages[1:]], dim=1)
    assert model.out_channels == 16 + 32 + 64 + 128
    torch.testing.assert_close(out["decoder"], expected)


def test_hrnetv2_stage_reductions_and_projection() -> None:
    model = build("hrnetv2", stage_channels=[4, 8, 12, 16], decoder_channels=24)
    assert [block[0].out_channels for block in model.decoder.reduce] == [4, 8, 12, 16]
    assert model.decoder.project[0].in_channels == 40
    out = model(torch.randn(2, 3, SIZE, SIZE))
    check_outputs(model, out)
    assert out["decoder"].shape[1] == 24
    backprop_reaches_every_parameter(model, out)


def test_hrnetv2_options_errors() -> None:
    with pytest.raises(ValueError, match="one entry per stride 4-32 encoder stage"):
        build("hrnetv2", stage_channels=[4, 8])
    with pytest.raises(ValueError, match="stage_channels applies to arch 'hrnetv2' only"):
        build("fpn", stage_channels=[4, 8, 12, 16])
    with pytest.raises(ValueError, match="arch 'fpn' needs decoder_channels"):
        build("fpn", decoder_channels=None)


def test_hrnet_uses_hrnetv2_branches() -> None:
    model = build("fpn", "tu-hrnet_w18_small")
    assert model.encoder_channels[2:] == [16, 32, 64, 128]  # w18_small: 16 channels in the first branch


def test_vit_encoder_pyramid_is_on_the_patch_grid() -> None:
    model = build("identity", "tu-vit_tiny_patch16_224")
    out = model(torch.randn(1, 3, 96, 64))
    assert out["decoder"].shape == (1, 192, 6, 4)
    assert model.out_channels == 192
    assert len(out["encoder"]) == 5


@pytest.mark.parametrize("output_stride", [16, 32])
def test_dilated_arch_other_strides(output_stride: int) -> None:
    model = build("fcn", output_stride=output_stride).eval()
    assert model.output_stride == output_stride
    with torch.no_grad():
        check_outputs(model, model(torch.randn(1, 3, SIZE, SIZE)), batch=1)


@pytest.mark.parametrize("arch", ["fpn", "deeplabv3plus", "segformer", "ocr"])
def test_any_input_size_is_padded_and_cropped_back(arch: str) -> None:
    model = build(arch).eval()
    height, width = 70, 90  # not multiples of 8 or 32 (CamVid's 360 x 480 is not a multiple of 32 either)
    with torch.no_grad():
        out = model(torch.randn(1, 3, height, width))
    stride = model.output_stride
    assert out["decoder"].shape[-2:] == (-(-height // stride), -(-width // stride))
    assert out["encoder"][0].shape[-2:] == (height, width)
    strides = [min(2**level, model.size_divisor) for level in range(1, len(out["encoder"]))]
    assert [f.shape[-2:] for f in out["encoder"][1:]] == [(-(-height // s), -(-width // s)) for s in strides]


def test_in_channels_and_non_square_input() -> None:
    model = build("pspnet", in_channels=4).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 4, 64, 96))
    assert out["decoder"].shape == (1, 32, 8, 12)
    assert model.encoder_channels[0] == 4


def test_arch_name_is_case_insensitive() -> None:
    assert build("FCN").arch == "fcn"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arch": "unet"}, "unknown arch 'unet'"),
        ({"encoder_name": "resnet7"}, "unknown encoder 'resnet7'"),
        ({"encoder_name": "tu-not_a_model"}, "unknown timm model 'not_a_model'"),
        ({"encoder_name": "mit_b0"}, r"encoder 'mit_b0' cannot run at output stride 8 \(arch 'fcn'\)"),
        ({"arch": "deeplabv3plus", "encoder_name": "mit_b0"}, "'mit_b0'.*arch 'deeplabv3plus'"),
        ({"encoder_name": "densenet121"}, "'densenet121'.*arch 'fcn'.*do not support dilated mode"),
        ({"arch": "ocr", "encoder_name": "tu-hrnet_w18_small"}, "'tu-hrnet_w18_small'.*arch 'ocr'.*timm refused"),
        ({"encoder_name": "tu-vit_tiny_patch16_224"}, "single fixed stride of 16"),
        ({"arch": "fpn", "encoder_name": "tu-vit_tiny_patch16_224"}, "plain ViT"),
        ({"arch": "fpn", "output_stride": 8}, "arch 'fpn' outputs stride 4"),
        ({"output_stride": 2}, r"supports output_stride \(4, 8, 16, 32\)"),
        ({"arch": "identity", "output_stride": 4}, r"supports output_stride \(8, 16, 32\)"),
        ({"encoder_name": "tu-vit_tiny_patch16_224", "output_stride": 4}, "plain ViT"),
        ({"arch": "ocr", "num_classes": None}, "'ocr' needs num_classes"),
    ],
)
def test_bad_configuration_gives_clear_error(kwargs: dict, match: str) -> None:
    arguments = {**tiny_segmodel_args("fcn"), "num_classes": NUM_CLASSES, **kwargs}
    with pytest.raises(ValueError, match=match):
        SegModel(**arguments)


@pytest.mark.parametrize("num_convs", [1, 2])
def test_fcn_head_on_aux_features(num_convs: int) -> None:
    model = build("fcn")
    head = FCNHead(model.aux_channels, NUM_CLASSES, channels=16, num_convs=num_convs)
    features = model(torch.randn(2, 3, SIZE, SIZE))["encoder"][-2]
    logits = head(features)
    assert logits.shape == (2, NUM_CLASSES, SIZE // 8, SIZE // 8)
    logits.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_timm_kwargs_with_an_smp_encoder_warn_and_are_ignored() -> None:
    with pytest.warns(UserWarning, match=r"encoder_kwargs \['img_size'\] are ignored"):
        model = build("fcn", encoder_kwargs={"img_size": 64})
    assert model.output_stride == 8


def test_timm_kwargs_reach_timm() -> None:
    model = build("fpn", "tu-hrnet_w18_small", encoder_kwargs={"feature_location": "incre"})  # overrides the default
    assert model.encoder_channels[2:] == [128, 256, 512, 1024]
