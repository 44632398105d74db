"""The report's statistics against SciPy and by hand: the cumulative error fraction, mean and SD,
and the paired signed-rank test with its direction when most pairs do not differ."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wilcoxon

from medq.common.report.stats import cumulative_fraction, mean_sd, wilcoxon_paired


def test_cumulative_fraction_counts_errors_at_or_below_each_radius():
    errors = np.array([1.0, 2.0, 2.0, 5.0, np.nan])
    assert cumulative_fraction(errors, [0, 1, 2, 4.9, 5, 10]).tolist() == [0, 0.25, 0.75, 0.75, 1.0, 1.0]
    assert cumulative_fraction(np.array([]), [1, 2]).tolist() == [0, 0]


def test_mean_and_sample_sd():
    assert mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_sd([4.0]) == (4.0, None) and mean_sd([]) == (None, None)


def test_a_shift_on_a_few_slices_is_seen_although_the_median_difference_is_zero():
    # 30 slices empty in both jobs (Dice 1 each), 20 where the second job is better
    a = [1.0] * 30 + [0.5] * 20
    b = [1.0] * 30 + [0.7] * 20
    test = wilcoxon_paired(a, b)
    assert test.median_difference == 0.0 and test.direction == 1  # b is higher: better for Dice
    assert test.n == 50 and test.n_changed == 20
    assert test.p_value == pytest.approx(wilcoxon(a, b).pvalue) and test.p_value < 1e-4


def test_the_direction_follows_the_ranks_not_the_mean():
    a = [10.0] * 9 + [0.0]
    b = [9.0] * 9 + [100.0]  # lower on nine images, one outlier far higher: the mean rises
    test = wilcoxon_paired(a, b)
    assert np.mean(b) > np.mean(a) and test.direction == -1


def test_identical_jobs_have_no_test():
    test = wilcoxon_paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert test.p_value is None and test.direction == 0 and test.n == 3 and test.n_changed == 0
