"""HU windowing: clip to [-1500, 500], z-score with the training split's statistics."""

import numpy as np
import pytest

from medq.common.families.ct_lesions.hu import HUNormaliser


def test_clip_then_z_score_by_hand():
    """Pixels -3000, -1000, 0, 2000 clip to -1500, -1000, 0, 500: mean -500, and the squares
    give a variance of (1e6 + 25e4 + 25e4 + 1e6) / 4 = 625000."""
    hu = np.array([[-3000.0, -1000.0], [0.0, 2000.0]])
    norm = HUNormaliser.fit([hu])
    assert norm.mean == pytest.approx(-500.0) and norm.std == pytest.approx(np.sqrt(625000.0))
    out = norm(hu)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (np.array([[-1500, -1000], [0, 500]]) + 500) / np.sqrt(625000.0), rtol=1e-6)


def test_statistics_stream_over_slices_and_equal_the_whole_array():
    rng = np.random.default_rng(0)
    slices = [rng.normal(-600, 400, (8, 8)) for _ in range(5)]
    streamed = HUNormaliser.fit(iter(slices))
    whole = np.clip(np.stack(slices), -1500, 500)
    assert streamed.mean == pytest.approx(whole.mean()) and streamed.std == pytest.approx(whole.std())


def test_a_constant_training_set_does_not_divide_by_zero():
    assert HUNormaliser.fit([np.full((4, 4), 40.0)]).std == 1.0


def test_the_unit_range_round_trips_to_the_z_scores():
    from medq.common.families.ct_lesions.hu import HUNormaliser

    norm = HUNormaliser(mean=-500.0, std=400.0)
    hu = np.array([-3000.0, -1500.0, -1000.0, 0.0, 500.0, 2000.0], dtype=np.float32)
    np.testing.assert_allclose(norm.unit(hu), [0, 0, 0.25, 0.75, 1, 1])
    np.testing.assert_allclose(norm.from_unit(norm.unit(hu)), norm(hu), atol=1e-5)
