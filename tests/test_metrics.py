"""SegmentationMetrics against an independent NumPy computation of mmsegmentation's metrics."""

import math

import numpy as np
import pytest
import torch

from segcentroids.metrics import SegmentationMetrics, format_table, segmentation_scores
from tests.references import loop_segmentation_scores


def assert_close(ours: dict, ref: dict) -> None:
    np.testing.assert_allclose(ours["IoU"].numpy(), ref["IoU"], rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(ours["Acc"].numpy(), ref["Acc"], rtol=1e-5, equal_nan=True)
    for key in ("mIoU", "mAcc", "aAcc"):
        np.testing.assert_allclose(float(ours[key]), ref[key], rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_batches_match_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 6
    metric = SegmentationMetrics(num_classes=k)
    preds, targets = [], []
    for _ in range(3):
        t = rng.integers(0, k, size=(2, 9, 11))
        t[rng.random(t.shape) < 0.2] = 255
        p = np.where(rng.random(t.shape) < 0.6, np.where(t == 255, 0, t), rng.integers(0, k, size=t.shape))
        metric.update(torch.from_numpy(p), torch.from_numpy(t))
        preds.append(p)
        targets.append(t)
    assert_close(metric.compute(), loop_segmentation_scores(preds, targets, k))


def test_absent_classes_are_nan_and_left_out_of_means() -> None:
    k = 4
    target = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 2, 1, 1]])  # class 2 predicted but absent from GT; class 3 absent everywhere
    metric = SegmentationMetrics(num_classes=k)
    metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    scores = metric.compute()
    assert math.isnan(scores["IoU"][3]) and math.isnan(scores["Acc"][3])
    assert scores["IoU"][2] == 0 and math.isnan(scores["Acc"][2])
    # IoU: class0 1/2, class1 1, class2 0 -> mean of three; Acc: class0 1/2, class1 1 -> mean of two
    assert float(scores["mIoU"]) == pytest.approx(100 * (0.5 + 1 + 0) / 3)
    assert float(scores["mAcc"]) == pytest.approx(100 * (0.5 + 1) / 2)
    assert float(scores["aAcc"]) == pytest.approx(75.0)
    assert_close(scores, loop_segmentation_scores([pred], [target], k))


def test_all_ignore_gives_nan_without_error() -> None:
    metric = SegmentationMetrics(num_classes=3)
    metric.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), 255))
    scores = metric.compute()
    assert torch.isnan(scores["IoU"]).all() and math.isnan(float(scores["mIoU"])) and math.isnan(float(scores["aAcc"]))


def test_ignored_pixels_do_not_count_even_when_predicted() -> None:
    metric = SegmentationMetrics(num_classes=2)
    metric.update(torch.tensor([[1, 1]]), torch.tensor([[1, 255]]))
    scores = metric.compute()
    assert scores["IoU"].tolist() == [pytest.approx(float("nan"), nan_ok=True), 100.0]


def test_score_maps_are_argmaxed_and_shape_mismatch_is_reported() -> None:
    metric = SegmentationMetrics(num_classes=3)
    logits = torch.zeros(1, 3, 2, 2)
    logits[:, 2] = 1.0
    metric.update(logits, torch.full((1, 2, 2), 2))
    assert float(metric.compute()["mIoU"]) == 100.0
    with pytest.raises(ValueError, match="same shape"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 3, 3, dtype=torch.long))


def test_functional_core_and_table() -> None:
    confmat = torch.tensor([[3, 1], [0, 0]])
    scores = segmentation_scores(confmat)
    assert scores["IoU"][0] == pytest.approx(75.0) and scores["IoU"][1] == 0.0
    table = format_table(scores, ["road", "sky"])
    assert "road" in table and "sky" in table and "mIoU" in table and "nan" in table


def test_confusion_figure_normalises_each_ground_truth_row() -> None:
    """Rows = ground truth, each divided by its class's pixels, in % (mmseg's confusion_matrix.py); an empty class
    keeps a zero row; the cells carry the values."""
    from segcentroids.plots import confusion_figure, row_normalized

    confmat = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    expected = [[75, 25, 0], [0, 0, 0], [25, 25, 50]]
    torch.testing.assert_close(row_normalized(confmat) * 100, torch.tensor(expected, dtype=torch.float64))
    figure = confusion_figure(confmat, ["a", "b", "c"], "test confusion")
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.texts] == [str(v) for row in expected for v in row]
    assert [t.get_text() for t in axes.get_yticklabels()] == ["a", "b", "c"]
    assert axes.get_xlabel() == "prediction" and axes.get_ylabel() == "ground truth"
