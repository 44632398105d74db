"""Dice and IoU against masks counted by hand, every reduction and both empty-mask rules."""

import numpy as np
import pytest

from medq.common.families.ct_lesions.metrics import confusion_counts, dice_iou, seg_report


def masks():
    """Two 4x4 images, classes 0 (lesion) and 1 (rest).
    Image 0: truth has class 0 in the top row (4 px); the prediction in the top-left 2x2 block:
    TP 2, FP 2, FN 2 -> Dice 4/8 = 0.5, IoU 2/6.
    Image 1: class 0 in neither mask (empty vs empty)."""
    truth = np.ones((2, 4, 4), dtype=np.int64)
    pred = np.ones((2, 4, 4), dtype=np.int64)
    truth[0, 0, :] = 0
    pred[0, :2, :2] = 0
    return pred, truth


def test_counts_by_hand():
    pred, truth = masks()
    counts = confusion_counts(pred, truth, 2)
    assert counts[0, 0].tolist() == [2, 2, 2] and counts[1, 0].tolist() == [0, 0, 0]
    assert counts[0, 1].tolist() == [10, 2, 2]  # 12 truth px of class 1, 2 taken by the prediction


def test_each_reduction_and_each_empty_rule():
    pred, truth = masks()
    one = dice_iou(pred, truth, 2, empty="one")
    assert one["dice_per_image"][0] == pytest.approx((0.5 + 1.0) / 2)  # the empty image counts 1
    assert one["iou_per_image"][0] == pytest.approx((1 / 3 + 1.0) / 2)
    assert one["dice_pooled"][0] == pytest.approx(0.5) and one["iou_pooled"][0] == pytest.approx(1 / 3)
    assert one["empty_images"].tolist() == [1, 0]
    skip = dice_iou(pred, truth, 2, empty="skip")
    assert skip["dice_per_image"][0] == pytest.approx(0.5) and skip["iou_per_image"][0] == pytest.approx(1 / 3)
    # class 1: image 0 Dice 20/24, image 1 perfect
    assert skip["dice_per_image"][1] == pytest.approx((20 / 24 + 1.0) / 2)
    assert skip["dice_pooled"][1] == pytest.approx(2 * 26 / (2 * 26 + 2 + 2))


def test_a_class_absent_everywhere_is_nan_when_skipped_and_pooled():
    truth = pred = np.ones((2, 3, 3), dtype=np.int64)
    scores = dice_iou(pred, truth, 2, empty="skip")
    assert np.isnan(scores["dice_per_image"][0]) and np.isnan(scores["dice_pooled"][0])
    assert dice_iou(pred, truth, 2, empty="one")["dice_per_image"][0] == 1.0


def test_the_report_names_its_reductions_and_averages_the_lesion_classes():
    pred, truth = masks()
    report = seg_report(pred, truth, ["lesion", "rest"], lesions=[0])
    assert report["per_class"]["lesion"]["dice_pooled"] == pytest.approx(0.5)
    assert report["lesion_mean"]["dice_per_image"] == pytest.approx(0.75)
    assert "counts 'one'" in report["reductions"]["per_image"] and report["n_images"] == 2


def test_masks_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="must both be"):
        confusion_counts(np.zeros((1, 2, 2)), np.zeros((1, 2, 3)), 2)
