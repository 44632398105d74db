"""Landmark metrics and ensemble aggregation against hand-worked examples."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medq.common.errors import SpecError
from medq.common.families.chest.metrics import (
    AGGREGATORS,
    aggregate_predictions,
    landmark_report,
    quality_buckets,
    quality_labels,
    radial_errors,
)
from medq.common.specs import AGGREGATIONS

S = 224 / 299  # a 299-px original at the 224-px model scale


def two_images():
    """Image A: 299x299 COVID; image B: 448x448 Normal. Offsets are 3-4-5 triangles.

    A: every landmark off by (3, 4) = 5 px, except L0 by (6, 8) = 10 px and L14 by (7, 24) = 25 px.
    B: every landmark off by (6, 8) = 10 px, except L1 by (9, 12) = 15 px.
    """
    true = np.tile(np.array([100.0, 120.0]), (2, 15, 1))
    pred = true.copy()
    pred[0] += (3, 4)
    pred[0, 0] = true[0, 0] + (6, 8)
    pred[0, 14] = true[0, 14] + (7, 24)
    pred[1] += (6, 8)
    pred[1, 1] = true[1, 1] + (9, 12)
    sizes = np.array([[299, 299], [448, 448]])
    return pred, true, sizes, ["COVID", "Normal"]


def test_radial_errors_are_euclidean():
    pred, true, _, _ = two_images()
    errors = radial_errors(pred, true)
    assert errors.shape == (2, 15)
    assert errors[0, 0] == 10 and errors[0, 1] == 5 and errors[0, 14] == 25
    assert errors[1, 0] == 10 and errors[1, 1] == 15


def test_report_pooled_statistics():
    report = landmark_report(*two_images())
    # 30 errors: thirteen 5s, fifteen 10s (A's L0 + B's 14), one 15, one 25. Sum 65+150+15+25 = 255.
    assert report["n_images"] == 2
    assert report["mean_error_px"] == pytest.approx(255 / 30)  # 8.5
    # sorted positions 14 and 15 (0-based) are both 10
    assert report["median_error_px"] == pytest.approx(10.0)
    # p95, linear: position 0.95 * 29 = 27.55 between sorted[27] = 10 and sorted[28] = 15
    assert report["p95_error_px"] == pytest.approx(10 + 0.55 * 5)  # 12.75
    # deviations from 8.5: 13 x 3.5^2 + 15 x 1.5^2 + 6.5^2 + 16.5^2 = 159.25+33.75+42.25+272.25 = 507.5
    assert report["std_error_px"] == pytest.approx(math.sqrt(507.5 / 30))


def test_report_at_model_scale():
    report = landmark_report(*two_images())
    # A (299 px) errors scale by 224/299, B (448 px) by 1/2: sums 100 * 224/299 and 155 / 2.
    assert report["mean_error_px_224"] == pytest.approx((100 * S + 77.5) / 30)
    # scaled, sorted: 13 x 5*S (3.75), 14 x 5 (B), 10*S (7.49), 7.5, 25*S: positions 14, 15 are 5
    assert report["median_error_px_224"] == pytest.approx(5.0)
    # a 5 px error on a 299-px image is 5 * 224 / 299 = 3.7458 px at model scale
    assert report["per_landmark"][3]["mean_error_px_224"] == pytest.approx((5 * S + 5) / 2)


def test_model_scale_rescales_x_and_y_separately():
    # one 448 x 224 image, L0 off by (8, 3) = sqrt(73) px; at 224 x 224: (4, 3) = 5 px
    true = np.zeros((1, 15, 2))
    pred = true.copy()
    pred[0, 0] = (8, 3)
    report = landmark_report(pred, true, np.array([[448, 224]]), ["Normal"])
    assert report["per_landmark"][0]["mean_error_px"] == pytest.approx(math.sqrt(73))
    assert report["per_landmark"][0]["mean_error_px_224"] == pytest.approx(5.0)
    assert report["mean_error_px_224"] == pytest.approx(5 / 15)
    # normalised by width: sqrt(73) / 448 for L0, 0 elsewhere
    assert report["normalised_error"] == pytest.approx(math.sqrt(73) / 448 / 15)


def test_report_normalised_error_uses_each_image_width():
    report = landmark_report(*two_images())
    assert report["normalised_error"] == pytest.approx((100 / 299 + 155 / 448) / 30)


def test_report_per_landmark():
    report = landmark_report(*two_images())
    rows = report["per_landmark"]
    assert [r["landmark"] for r in rows] == list(range(15))
    assert rows[0]["mean_error_px"] == pytest.approx(10.0)  # A 10, B 10
    assert rows[0]["mean_error_px_224"] == pytest.approx((10 * S + 5) / 2)
    assert rows[1]["mean_error_px"] == pytest.approx(10.0)  # A 5, B 15
    assert rows[1]["median_error_px"] == pytest.approx(10.0)
    assert rows[14]["mean_error_px"] == pytest.approx(17.5)  # A 25, B 10
    assert rows[7]["mean_error_px"] == pytest.approx(7.5)  # A 5, B 10


def test_report_per_category():
    report = landmark_report(*two_images())
    assert report["per_category"] == {
        "COVID": {"n_images": 1, "mean_error_px": pytest.approx(100 / 15), "mean_error_px_224": pytest.approx(100 * S / 15)},
        "Normal": {"n_images": 1, "mean_error_px": pytest.approx(155 / 15), "mean_error_px_224": pytest.approx(77.5 / 15)},
    }


def test_report_quality_buckets():
    report = landmark_report(*two_images())
    # original px: 5 counts as "5-8.5px" (13), 10 as "8.5-15px" (15), 15 and 25 need review (2)
    assert report["quality"] == {
        "<5px": 0.0,
        "5-8.5px": pytest.approx(13 / 30),
        "8.5-15px": pytest.approx(15 / 30),
        ">=15px (review)": pytest.approx(2 / 30),
    }


def test_quality_edges_go_to_the_upper_bucket():
    assert quality_labels() == ["<5px", "5-8.5px", "8.5-15px", ">=15px (review)"]
    buckets = quality_buckets(np.array([0.0, 4.99, 5.0, 8.49, 8.5, 14.99, 15.0, 40.0]))
    assert buckets == {"<5px": 0.25, "5-8.5px": 0.25, "8.5-15px": 0.25, ">=15px (review)": 0.25}


def test_report_is_plain_json():
    report = landmark_report(*two_images())
    assert json.loads(json.dumps(report)) == report

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return type(value) in (int, float, str)

    assert plain(report)


def test_report_refuses_mismatched_inputs():
    pred, true, sizes, cats = two_images()
    with pytest.raises(ValueError, match="categories"):
        landmark_report(pred, true, sizes, ["COVID"])
    with pytest.raises(ValueError, match="image_sizes"):
        landmark_report(pred, true, sizes[:1], cats)
    with pytest.raises(ValueError, match="shape"):
        landmark_report(pred, true[:, :14], sizes, cats)


def test_metrics_module_does_not_import_torch():
    code = "import sys, medq.common.families.chest.metrics; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


# --- aggregation ---------------------------------------------------------------------------


def members(*values: float) -> np.ndarray:
    """(M, 1, 15, 2): member m predicts `values[m]` for every coordinate."""
    return np.stack([np.full((1, 15, 2), v) for v in values])


def test_aggregation_names_equal_the_spec_names():
    assert AGGREGATORS.names() == sorted(AGGREGATIONS)


def test_median_resists_an_outlier_member():
    preds = members(1.0, 1.2, 50.0)
    np.testing.assert_allclose(aggregate_predictions(preds, "median"), np.full((1, 15, 2), 1.2))
    np.testing.assert_allclose(aggregate_predictions(preds, "mean"), np.full((1, 15, 2), 52.2 / 3))  # 17.4


def test_weighted_favours_the_low_loss_member():
    # losses 1 and 2 -> weights 1/1 : 1/2 -> 2/3 and 1/3; 0 * 2/3 + 3 * 1/3 = 1
    out = aggregate_predictions(members(0.0, 3.0), "weighted", val_losses=[1.0, 2.0])
    assert out.shape == (1, 15, 2)
    np.testing.assert_allclose(out, np.full((1, 15, 2), 1.0))
    # losses 1, 1, 2 -> weights 2/5, 2/5, 1/5; (0 + 1) * 2/5 + 6 * 1/5 = 1.6
    out = aggregate_predictions(members(0.0, 1.0, 6.0), "weighted", val_losses=[1.0, 1.0, 2.0])
    np.testing.assert_allclose(out, np.full((1, 15, 2), 1.6))


@pytest.mark.parametrize("losses", [None, [1.0, 0.0], [1.0, -2.0], [1.0], [1.0, float("nan")]])
def test_weighted_refuses_missing_or_bad_losses(losses):
    with pytest.raises(SpecError, match="weighted"):
        aggregate_predictions(members(0.0, 3.0), "weighted", val_losses=losses)


def test_unknown_aggregation_lists_valid_names():
    with pytest.raises(SpecError, match="'vote'.*mean, median, weighted"):
        aggregate_predictions(members(0.0), "vote")
