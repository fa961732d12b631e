"""Validation image panels (input | ground truth | prediction) and colourisation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from segcentroids.callbacks import ValidationImageLogger
from segcentroids.callbacks.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TITLE_HEIGHT,
    class_legend,
    colorize,
    default_palette,
    denormalize,
    titled_panel,
)


def test_palette_is_distinct_and_colorize_blackens_ignore() -> None:
    palette = default_palette(21)
    assert len(set(palette)) == 21 and palette[0] == (128, 0, 0)  # VOC: class 0 of the shifted table is maroon
    labels = np.array([[0, 1], [255, 20]])
    rgb = colorize(labels, palette)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 1]) == palette[1] and tuple(rgb[1, 0]) == (0, 0, 0) and tuple(rgb[1, 1]) == palette[20]


def test_denormalize_inverts_imagenet_normalisation() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.float32)
    normalised = (rgb / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    back = denormalize(torch.from_numpy(normalised).permute(2, 0, 1).float())
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 1



def test_denormalize_uses_the_datamodules_normalisation() -> None:
    """Images normalised with EfficientNet-Lite's 0.5 / 0.5 come back with the DataModule's own values."""
    from types import SimpleNamespace

    from segcentroids.callbacks.images import normalization_of
    from segcentroids.data import SyntheticDataModule

    rgb = np.random.default_rng(1).integers(0, 256, (4, 6, 3)).astype(np.float32)
    datamodule = SyntheticDataModule(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    normalised = datamodule.test_transform()(image=rgb.astype(np.uint8))["image"]
    np.testing.assert_allclose(normalised.permute(1, 2, 0).numpy(), (rgb / 255 - 0.5) / 0.5, atol=1e-6)
    back = denormalize(normalised, *normalization_of(SimpleNamespace(datamodule=datamodule)))
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 1
    assert normalization_of(None) == (IMAGENET_MEAN, IMAGENET_STD)

class RecordingExperiment:
    def __init__(self) -> None:
        self.images: dict[str, np.ndarray] = {}

    def add_image(self, tag: str, image: np.ndarray, step: int, dataformats: str) -> None:
        assert dataformats == "HWC"
        self.images[tag] = image


def test_logger_makes_three_panel_images_for_the_first_n() -> None:
    experiment = RecordingExperiment()
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, global_step=3,
                              logger=SimpleNamespace(experiment=experiment),
                              datamodule=SimpleNamespace(palette=default_palette(4)))
    module = SimpleNamespace(num_classes=4, ignore_index=255)
    callback = ValidationImageLogger(num_images=3)
    callback.on_validation_epoch_start(trainer, module)
    for _ in range(2):  # two batches of two: only three images are kept
        batch = {"image": torch.zeros(2, 3, 8, 6), "mask": torch.full((2, 10, 12), 1)}
        callback.on_validation_batch_end(trainer, module, {"preds": torch.full((2, 10, 12), 2)}, batch, 0)
    callback.on_validation_epoch_end(trainer, module)
    assert sorted(experiment.images) == ["val/images/0", "val/images/1", "val/images/2"]
    panel = experiment.images["val/images/0"]
    body = panel[TITLE_HEIGHT : TITLE_HEIGHT + 10]  # below the title strip
    assert body.shape == (10, 36, 3)  # the input is resized to the label size, three panels side by side
    assert tuple(body[0, 12]) == default_palette(4)[1] and tuple(body[0, 24]) == default_palette(4)[2]


def test_panels_have_titles_and_a_legend_of_the_classes_shown() -> None:
    palette = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]
    label = np.array([[0, 0, 255], [1, 1, 255]])  # classes 0, 1 and ignore
    pred = np.array([[0, 0, 1], [1, 1, 1]])
    legend = class_legend([label, pred], palette, ["road", "car", "sky", "tree"], 255)
    assert legend == [("road", palette[0]), ("car", palette[1])]
    parts = [np.full((40, 120, 3), 128, dtype=np.uint8) for _ in range(3)]
    panel = titled_panel(parts, ["input", "ground truth", "prediction"], legend)
    assert panel.shape[1] == 360 and panel.shape[0] > TITLE_HEIGHT + 40
    np.testing.assert_array_equal(panel[TITLE_HEIGHT : TITLE_HEIGHT + 40], np.concatenate(parts, axis=1))
    header = panel[:TITLE_HEIGHT]
    for left in (0, 120, 240):  # dark title text over each part
        assert (header[:, left : left + 120] < 100).any()
    strip = panel[TITLE_HEIGHT + 40 :]
    colours = {tuple(c) for c in strip.reshape(-1, 3)}
    assert tuple(palette[0]) in colours and tuple(palette[1]) in colours
    assert tuple(palette[2]) not in colours and tuple(palette[3]) not in colours  # classes not shown: no swatch
