"""Test-time inference (whole / slide / multi-scale + flip) against answers known in advance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segcentroids.inference import InferenceConfig, infer, slide_windows, unflip_logits

NUM_CLASSES = 20


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


class PixelModel(nn.Module):
    """A 1x1 convolution: every output pixel depends on its input pixel only (equivariant to shifts and flips).

    ``stride`` > 1 returns the logits average-pooled by ``stride`` (a feature-stride model); ``calls`` records the
    batch size of every forward.
    """

    def __init__(self, stride: int = 1, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, num_classes, 1)
        self.stride = stride
        self.calls: list[int] = []

    def forward(self, images: Tensor) -> Tensor:
        self.calls.append(images.shape[0])
        logits = self.conv(images)
        return F.avg_pool2d(logits, self.stride) if self.stride > 1 else logits


class PositionModel(PixelModel):
    """``PixelModel`` plus a term that depends on the position inside the input (not shift-invariant)."""

    def forward(self, images: Tensor) -> Tensor:
        logits = super().forward(images)
        height, width = logits.shape[-2:]
        rows = torch.arange(height, dtype=logits.dtype).view(height, 1)
        cols = torch.arange(width, dtype=logits.dtype).view(1, width)
        return logits + (rows * 10 + cols).expand(height, width)


def naive_windows(size: int, crop: int, stride: int) -> list[int]:
    """Window starts along one axis written out by hand: 0, stride, ... while the window fits; a last window ends
    at the border when the previous ones did not reach it."""
    if size <= crop:
        return [0]
    starts = list(range(0, size - crop + 1, stride))
    if starts[-1] + crop < size:
        starts.append(size - crop)
    return starts


def test_window_grid_covers_the_image_like_mmsegmentation() -> None:
    for size, crop, stride in [(10, 4, 3), (12, 4, 4), (4, 4, 2), (17, 5, 5), (1024, 512, 341), (2048, 1024, 768)]:
        starts = sorted({left for _, left in slide_windows(crop, size, (crop, crop), (stride, stride))})
        assert starts == naive_windows(size, crop, stride), (size, crop, stride)


def test_slide_equals_whole_on_a_pixelwise_model() -> None:
    model = PixelModel()
    images = torch.randn(2, 3, 23, 37)
    whole = infer(model, images, (23, 37), InferenceConfig())
    slide = infer(model, images, (23, 37), InferenceConfig(mode="slide", crop_size=(8, 16), stride=(5, 11)))
    torch.testing.assert_close(slide, whole, atol=1e-5, rtol=1e-5)


def test_slide_pads_images_smaller_than_the_window_and_crops_back() -> None:
    model = PixelModel()
    images = torch.randn(1, 3, 6, 9)
    slide = infer(model, images, (6, 9), InferenceConfig(mode="slide", crop_size=(8, 16), stride=(4, 4)))
    assert model.calls == [1]  # padded to 8x16: a single window
    torch.testing.assert_close(slide, model.conv(images), atol=1e-5, rtol=1e-5)


class MeanModel(PixelModel):
    """``PixelModel`` plus the mean of its whole input: zero padding changes the output."""

    def forward(self, images: Tensor) -> Tensor:
        return super().forward(images) + images.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)


def test_unpadded_slide_takes_a_short_side_whole_like_mmseg0() -> None:
    """``pad_to_window=False``: the 6-pixel-high image is one unpadded window high; along the width the 16-wide
    windows start at 0 and 4 (naive grid); each pixel averages conv + the mean of each window that holds it."""
    model = MeanModel()
    images = torch.randn(1, 3, 6, 20)
    config = InferenceConfig(mode="slide", crop_size=(8, 16), stride=(4, 4), pad_to_window=False)
    out = infer(model, images, (6, 20), config)
    total, counts = torch.zeros(1, NUM_CLASSES, 6, 20), torch.zeros(6, 20)
    for left in naive_windows(20, 16, 4):
        window = images[..., left : left + 16]
        total[..., left : left + 16] += model.conv(window) + window.mean()
        counts[:, left : left + 16] += 1
    torch.testing.assert_close(out, total / counts, atol=1e-5, rtol=1e-5)
    padded = infer(model, images, (6, 20), InferenceConfig(mode="slide", crop_size=(8, 16), stride=(4, 4)))
    assert not torch.allclose(padded, out, atol=1e-3)  # padding with 0 changes each window's mean


def test_slide_averages_overlapping_windows() -> None:
    """Each pixel gets the mean, over the windows that hold it, of its position term inside that window."""
    model = PositionModel()
    height, width, crop, stride = 11, 14, (6, 8), (3, 4)
    images = torch.randn(1, 3, height, width)
    out = infer(model, images, (height, width), InferenceConfig(mode="slide", crop_size=crop, stride=stride))
    position_sum = torch.zeros(height, width)
    counts = torch.zeros(height, width)
    for top in naive_windows(height, crop[0], stride[0]):
        for left in naive_windows(width, crop[1], stride[1]):
            for y in range(top, top + crop[0]):
                for x in range(left, left + crop[1]):
                    position_sum[y, x] += (y - top) * 10 + (x - left)
                    counts[y, x] += 1
    expected = model.conv(images) + position_sum / counts
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-5)


def test_slide_windows_run_in_batches() -> None:
    model = PixelModel()
    images = torch.randn(3, 3, 16, 16)
    config = InferenceConfig(mode="slide", crop_size=(8, 8), stride=(4, 4), window_batch_size=4)
    infer(model, images, (16, 16), config)
    windows = 3 * 3 * 3  # 3x3 windows per image, 3 images
    assert sum(model.calls) == windows
    assert model.calls == [4] * (windows // 4) + [windows % 4]


def test_slide_resizes_strided_window_logits_to_the_window() -> None:
    model = PixelModel(stride=4)
    images = torch.randn(1, 3, 16, 24)
    out = infer(model, images, (16, 24), InferenceConfig(mode="slide", crop_size=(16, 8), stride=(16, 8)))
    # windows do not overlap: each one is its own coarse prediction upsampled to the window
    expected = torch.cat(
        [F.interpolate(model(images[..., i : i + 8]), size=(16, 8), mode="bilinear") for i in (0, 8, 16)], dim=-1
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_whole_resizes_to_out_size() -> None:
    model = PixelModel(stride=2)
    images = torch.randn(2, 3, 10, 12)
    out = infer(model, images, (15, 18), InferenceConfig())
    assert out.shape == (2, NUM_CLASSES, 15, 18)
    torch.testing.assert_close(out, F.interpolate(model(images), size=(15, 18), mode="bilinear"))


def test_flip_averages_to_whole_on_a_flip_equivariant_model() -> None:
    model = PixelModel()
    images = torch.randn(2, 3, 12, 10)
    whole = infer(model, images, (12, 10), InferenceConfig())
    flipped = infer(model, images, (12, 10), InferenceConfig(flip=True))
    torch.testing.assert_close(flipped, whole.log_softmax(dim=1), atol=1e-5, rtol=1e-5)


def test_multiscale_flip_averages_probabilities_of_every_view() -> None:
    """Oracle: for a linear pixelwise model, logits of a resized view resized back = model(image resized there and
    back); the output is log of the mean softmax over the scales and the two flips."""
    model = PixelModel()
    images = torch.randn(1, 3, 12, 16)
    scales = [0.5, 1.0, 1.5]
    out = infer(model, images, (12, 16), InferenceConfig(scales=scales, flip=True))
    probs = []
    for scale in scales:
        size = (int(12 * scale + 0.5), int(16 * scale + 0.5))
        for flip in (False, True):
            view = images.flip(-1) if flip else images
            view = F.interpolate(view, size=size, mode="bilinear") if scale != 1.0 else view
            logits = F.interpolate(model.conv(view), size=(12, 16), mode="bilinear")
            probs.append((logits.flip(-1) if flip else logits).softmax(dim=1))
    expected = torch.stack(probs).mean(dim=0).log()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_multiscale_with_slide_inside_each_scale_matches_multiscale_whole() -> None:
    model = PixelModel()
    images = torch.randn(2, 3, 20, 28)
    common = {"scales": [0.75, 1.0, 1.25], "flip": True}
    whole = infer(model, images, (20, 28), InferenceConfig(**common))
    model.calls.clear()
    slide = infer(model, images, (20, 28), InferenceConfig(mode="slide", crop_size=(12, 12), stride=(8, 8), **common))
    torch.testing.assert_close(slide, whole, atol=1e-5, rtol=1e-4)
    assert max(model.calls) == 8  # windows of both flips and both images share batches


class MirroredPartsModel(PixelModel):
    """Mirror-symmetric like a human-parsing model: left and right classes share their pixel weights, and a position
    term makes channel 14 grow to the right and channel 15 to the left. The logits of the mirrored image, mirrored
    back, are the original ones with 14 and 15 exchanged: un-flipping with the swap gives the same logits back,
    without the swap it does not."""

    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            for left, right in ((14, 15), (16, 17), (18, 19)):
                self.conv.weight[right] = self.conv.weight[left]
                self.conv.bias[right] = self.conv.bias[left]

    def forward(self, images: Tensor) -> Tensor:
        logits = super().forward(images)
        width = logits.shape[-1]
        ramp = torch.linspace(-3.0, 3.0, width)
        extra = torch.zeros_like(logits)
        extra[:, 14] = ramp
        extra[:, 15] = ramp.flip(0)
        return logits + extra


def test_flip_swaps_left_right_channels_when_unflipping() -> None:
    model = MirroredPartsModel()
    images = torch.randn(1, 3, 8, 12)
    expected = infer(model, images, (8, 12), InferenceConfig()).log_softmax(dim=1)
    pairs = [(14, 15), (16, 17), (18, 19)]
    swapped = infer(model, images, (8, 12), InferenceConfig(flip=True, flip_pairs=pairs))
    torch.testing.assert_close(swapped, expected, atol=1e-5, rtol=1e-5)
    plain = infer(model, images, (8, 12), InferenceConfig(flip=True))
    assert not torch.allclose(plain, expected, atol=1e-3)


def test_unflip_logits_by_hand() -> None:
    logits = torch.arange(2 * 4 * 1 * 3, dtype=torch.float32).view(2, 4, 1, 3)
    out = unflip_logits(logits, [(1, 3)])
    assert out[0, 0, 0].tolist() == [2.0, 1.0, 0.0]
    assert out[0, 1, 0].tolist() == logits[0, 3, 0].flip(0).tolist()
    assert out[0, 3, 0].tolist() == logits[0, 1, 0].flip(0).tolist()
    assert out[1, 2, 0].tolist() == logits[1, 2, 0].flip(0).tolist()


def test_flip_pairs_beyond_the_classes_are_an_error() -> None:
    config = InferenceConfig(flip=True, flip_pairs=[(6, 9)])
    with pytest.raises(ValueError, match="inference.flip_pairs"):
        infer(PixelModel(num_classes=8), torch.randn(1, 3, 4, 4), (4, 4), config)


def test_tta_output_is_a_log_probability() -> None:
    model = PixelModel()
    out = infer(model, torch.randn(1, 3, 8, 8), (8, 8), InferenceConfig(scales=[1.0, 0.5]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(1, 8, 8))
    assert float(out.max()) <= 0.0


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"mode": "slide"}, "crop_size"),
        ({"mode": "slide", "crop_size": (8, 8)}, "stride"),
        ({"mode": "slide", "crop_size": (8, 0), "stride": (4, 4)}, "crop_size"),
        ({"mode": "tiles"}, "mode"),
        ({"scales": []}, "scales"),
        ({"scales": [1.0, -0.5]}, "scales"),
        ({"flip_pairs": [(14, 14)]}, "flip_pairs"),
        ({"flip_pairs": [(14, 15), (15, 16)]}, "flip_pairs"),
        ({"window_batch_size": 0}, "window_batch_size"),
    ],
)
def test_bad_config_names_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"inference.{key}"):
        InferenceConfig(**kwargs)
