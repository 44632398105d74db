"""Chest-landmark losses against values worked out by hand on tiny shapes."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from medq.common.errors import SpecError
from medq.common.families.chest.losses import (
    LOSSES,
    build_loss,
    complete_loss,
    distance_loss,
    mse_loss,
    symmetry_loss,
    wing_loss,
)
from medq.common.families.chest.spec import LANDMARK_LOSSES, EnsembleSpec

# A chest shape mirrored exactly about the vertical line x = 0.5 (normalised units).
# Midline 0, 1, 8, 9, 10 on x = 0.5; pairs (2,3), (4,5), (6,7), (11,12), (13,14) at x = 0.5 -/+ a.
MIRRORED = {
    0: (0.5, 0.1), 1: (0.5, 0.9), 8: (0.5, 0.4), 9: (0.5, 0.6), 10: (0.5, 0.7),
    2: (0.3, 0.2), 3: (0.7, 0.2),
    4: (0.2, 0.4), 5: (0.8, 0.4),
    6: (0.1, 0.8), 7: (0.9, 0.8),
    11: (0.35, 0.15), 12: (0.65, 0.15),
    13: (0.15, 0.9), 14: (0.85, 0.9),
}  # fmt: skip

# The same idea about the tilted line x = y: mirroring swaps x and y.
DIAGONAL = {
    0: (0.1, 0.1), 1: (0.9, 0.9), 8: (0.4, 0.4), 9: (0.6, 0.6), 10: (0.7, 0.7),
    2: (0.1, 0.3), 3: (0.3, 0.1),
    4: (0.2, 0.6), 5: (0.6, 0.2),
    6: (0.5, 0.9), 7: (0.9, 0.5),
    11: (0.3, 0.7), 12: (0.7, 0.3),
    13: (0.2, 0.4), 14: (0.4, 0.2),
}  # fmt: skip


def shape(points: dict[int, tuple[float, float]], moves: dict[int, tuple[float, float]] | None = None) -> torch.Tensor:
    """(1, 15, 2) float64 tensor, with some landmarks moved by (dx, dy)."""
    t = torch.tensor([points[i] for i in range(15)], dtype=torch.float64)
    for i, (dx, dy) in (moves or {}).items():
        t[i] += torch.tensor([dx, dy], dtype=torch.float64)
    return t[None]


def close(value: torch.Tensor, expected: float) -> None:
    assert value.dim() == 0
    assert value.item() == pytest.approx(expected, abs=1e-12)


# --- MSE and Wing ---------------------------------------------------------------------------


def test_mse_is_mean_over_all_30_coordinates():
    target = shape(MIRRORED)
    pred = shape(MIRRORED, {3: (0.3, 0.0)})
    close(mse_loss(pred, target), 0.3**2 / 30)  # one coordinate off by 0.3: 0.09 / 30


def test_wing_log_regime():
    # omega = 0.1, epsilon = 0.02; one coordinate off by 0.02 < omega:
    # 0.1 * ln(1 + 0.02 / 0.02) = 0.1 * ln 2, averaged over 30 coordinates.
    target = shape(MIRRORED)
    pred = shape(MIRRORED, {4: (0.0, -0.02)})
    close(wing_loss(pred, target, omega=0.1, epsilon=0.02), 0.1 * math.log(2) / 30)


def test_wing_linear_regime():
    # one coordinate off by 0.3 >= omega = 0.1: 0.3 - C,
    # C = omega - omega * ln(1 + omega / epsilon) = 0.1 - 0.1 * ln 6 (= -0.0792).
    target = shape(MIRRORED)
    pred = shape(MIRRORED, {4: (0.3, 0.0)})
    c = 0.1 - 0.1 * math.log(6)
    close(wing_loss(pred, target, omega=0.1, epsilon=0.02), (0.3 - c) / 30)


def test_wing_is_continuous_at_omega():
    # at |x| = omega both branches give omega * ln(1 + omega / epsilon) = 0.1 * ln 6
    target = shape(MIRRORED)
    at_omega = wing_loss(shape(MIRRORED, {4: (0.1, 0.0)}), target, 0.1, 0.02)
    just_below = wing_loss(shape(MIRRORED, {4: (0.1 - 1e-9, 0.0)}), target, 0.1, 0.02)
    close(at_omega, 0.1 * math.log(6) / 30)
    assert at_omega.item() == pytest.approx(just_below.item(), abs=1e-9)


def test_wing_batch_mean_and_flat_input():
    # image 0: one coordinate off by 0.02 (0.1 ln 2); image 1: one off by 0.3 (0.3 - C).
    # Mean over 2 images x 30 coordinates.
    target = torch.cat([shape(MIRRORED), shape(MIRRORED)])
    pred = torch.cat([shape(MIRRORED, {0: (0.02, 0.0)}), shape(MIRRORED, {9: (0.0, 0.3)})])
    c = 0.1 - 0.1 * math.log(6)
    expected = (0.1 * math.log(2) + 0.3 - c) / 60
    close(wing_loss(pred, target, 0.1, 0.02), expected)
    close(wing_loss(pred.reshape(2, 30), target.reshape(2, 30), 0.1, 0.02), expected)


def test_wing_gradient_is_finite_where_prediction_equals_target():
    target = shape(MIRRORED)
    pred = target.clone().requires_grad_(True)
    wing_loss(pred, target, 0.1, 0.02).backward()
    assert torch.isfinite(pred.grad).all()
    assert torch.count_nonzero(pred.grad) == 0


def test_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="shape"):
        mse_loss(torch.zeros(2, 28), torch.zeros(2, 28))


# --- symmetry -------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", ["fitted", "vertical"])
def test_symmetry_is_zero_for_a_mirrored_shape(axis):
    close(symmetry_loss(shape(MIRRORED), axis=axis), 0.0)


def test_symmetry_one_point_moved():
    # Axis stays x = 0.5 (midline untouched). Point 3 moved from (0.7, 0.2) to (0.8, 0.2);
    # its partner 2 = (0.3, 0.2) mirrors to (0.7, 0.2), 0.1 away. Mean over 5 pairs: 0.02.
    close(symmetry_loss(shape(MIRRORED, {3: (0.1, 0.0)})), 0.02)


def test_symmetry_batch_mean():
    # image 0: 0.1 / 5 = 0.02 as above; image 1: point 7 moved by (0.03, 0.04), 0.05 / 5 = 0.01.
    pred = torch.cat([shape(MIRRORED, {3: (0.1, 0.0)}), shape(MIRRORED, {7: (0.03, 0.04)})])
    close(symmetry_loss(pred), (0.02 + 0.01) / 2)
    close(symmetry_loss(pred.reshape(2, 30)), 0.015)


def test_symmetry_axis_follows_the_midline():
    # Every midline point shifted by +0.05: axis x = 0.55, left x_l mirrors to 1.1 - x_l,
    # which is 0.1 right of its partner (x_r = 1 - x_l) for every pair: mean 0.1.
    moved = {i: (0.05, 0.0) for i in (0, 1, 8, 9, 10)}
    close(symmetry_loss(shape(MIRRORED, moved)), 0.1)


def test_fitted_axis_handles_a_tilted_midline():
    # Midline on x = y; mirroring across it swaps x and y, so DIAGONAL is exactly symmetric.
    close(symmetry_loss(shape(DIAGONAL)), 0.0)
    # Point 5 moved from (0.6, 0.2) to (0.7, 0.2): 0.1 from the mirror of 4, mean 0.02.
    close(symmetry_loss(shape(DIAGONAL, {5: (0.1, 0.0)})), 0.02)
    # The source's vertical axis calls the tilted but symmetric shape asymmetric.
    assert symmetry_loss(shape(DIAGONAL), axis="vertical").item() > 0.05


def test_symmetry_is_unchanged_by_rotating_the_shape():
    pred = shape(MIRRORED, {3: (0.1, 0.0)})
    angle = math.radians(12)
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
    rotated = (pred - 0.5) @ rot.T + 0.5
    assert symmetry_loss(rotated).item() == pytest.approx(0.02, abs=1e-12)


def test_source_vertical_axis_uses_weighted_midline():
    # Source weights 1.2, 1.2, 1.5, 1.3, 1.3 (sum 6.5) for landmarks 0, 1, 8, 9, 10.
    # Landmark 8 moved by +0.13: axis x = 0.5 + 0.13 * 1.5 / 6.5 = 0.53; every left point then
    # mirrors 2 * 0.03 = 0.06 beyond its partner: mean 0.06.
    close(symmetry_loss(shape(MIRRORED, {8: (0.13, 0.0)}), axis="vertical"), 0.06)


def test_unknown_symmetry_axis_lists_valid_ones():
    with pytest.raises(SpecError, match="fitted, vertical"):
        symmetry_loss(shape(MIRRORED), axis="diagonal")


def test_symmetry_gradient_is_finite_for_a_perfect_or_collapsed_prediction():
    # A perfectly mirrored shape (every distance 0) and an untrained head's output
    # (every landmark at 0.5) must not produce NaN gradients.
    for pred in (shape(MIRRORED), torch.full((1, 15, 2), 0.5, dtype=torch.float64)):
        pred = pred.clone().requires_grad_(True)
        symmetry_loss(pred).backward()
        assert torch.isfinite(pred.grad).all()


# --- distance --------------------------------------------------------------------------------


def test_distance_is_zero_under_translation():
    target = shape(MIRRORED)
    pred = target + torch.tensor([0.07, -0.03], dtype=torch.float64)
    close(distance_loss(pred, target), 0.0)
    assert mse_loss(pred, target).item() > 0


def test_distance_one_pair_changed():
    # Landmark 1 moved from (0.5, 0.9) to (0.5, 1.0): d(0, 1) goes 0.8 -> 0.9, |0.1|;
    # 1 is in no other default pair ((0,1), (8,9), (2,3), (4,5), (6,7)): 0.1 / 5 = 0.02.
    target = shape(MIRRORED)
    pred = shape(MIRRORED, {1: (0.0, 0.1)})
    close(distance_loss(pred, target), 0.02)
    close(distance_loss(pred, target, pairs=[(0, 1)]), 0.1)
    close(distance_loss(pred, target, pairs=[(8, 9), (2, 3)]), 0.0)


def test_distance_gradient_is_finite_for_collapsed_prediction():
    target = shape(MIRRORED)
    pred = torch.full((1, 15, 2), 0.5, dtype=torch.float64, requires_grad=True)
    distance_loss(pred, target).backward()
    assert torch.isfinite(pred.grad).all()


# --- complete --------------------------------------------------------------------------------

# Point 3 moved by +0.1 in x, omega = 0.2, epsilon = 0.05:
#   wing: one coordinate off by 0.1 < 0.2 -> 0.2 * ln(1 + 0.1 / 0.05) / 30 = 0.2 ln 3 / 30
#   symmetry: 0.1 / 5 = 0.02;  distance: d(2, 3) 0.4 -> 0.5, 0.1 / 5 = 0.02
WING = 0.2 * math.log(3) / 30
COMPLETE = WING + 0.3 * 0.02 + 0.2 * 0.02


def test_complete_is_the_weighted_sum():
    target = shape(MIRRORED)
    pred = shape(MIRRORED, {3: (0.1, 0.0)})
    close(complete_loss(pred, target, omega=0.2, epsilon=0.05), COMPLETE)
    close(complete_loss(pred, target, 0.2, 0.05, symmetry_weight=1.0, distance_weight=0.0), WING + 0.02)


def test_complete_gradient_is_finite_where_prediction_equals_target():
    target = shape(MIRRORED)
    pred = target.clone().requires_grad_(True)
    complete_loss(pred, target, 0.2, 0.05).backward()
    assert torch.isfinite(pred.grad).all()


# --- registry ---------------------------------------------------------------------------------


def test_registry_names_equal_the_spec_names():
    assert LOSSES.names() == sorted(LANDMARK_LOSSES)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mse", 0.1**2 / 30),
        ("wing", WING),  # pixels converted: omega 20 px / 100 = 0.2, epsilon 5 px / 100 = 0.05
        ("symmetry", 0.1**2 / 30 + 0.3 * 0.02),  # MSE + 0.3 * symmetry
        ("distance", 0.1**2 / 30 + 0.2 * 0.02),  # MSE + 0.2 * distance
        ("complete", COMPLETE),
    ],
)
def test_build_loss_from_spec(name, expected):
    spec = EnsembleSpec(loss=name, image_size=100, wing_omega_px=20.0, wing_epsilon_px=5.0)
    loss = build_loss(spec)
    target = shape(MIRRORED)
    pred = shape(MIRRORED, {3: (0.1, 0.0)})
    close(loss(pred, target), expected)
    close(loss(pred.reshape(1, 30), target.reshape(1, 30)), expected)


def test_build_loss_uses_the_spec_weights():
    spec = EnsembleSpec(loss="complete", image_size=100, wing_omega_px=20.0, wing_epsilon_px=5.0,
                        symmetry_weight=1.0, distance_weight=2.0)  # fmt: skip
    pred = shape(MIRRORED, {3: (0.1, 0.0)})
    close(build_loss(spec)(pred, shape(MIRRORED)), WING + 1.0 * 0.02 + 2.0 * 0.02)


def test_unknown_loss_lists_valid_names():
    with pytest.raises(SpecError) as caught:
        build_loss(SimpleNamespace(loss="huber"))
    message = str(caught.value)
    assert "huber" in message
    for name in LANDMARK_LOSSES:
        assert name in message
