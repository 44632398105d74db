"""Statistics of reports: pure functions on arrays (SciPy for tests), no plotting, no store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def cumulative_fraction(errors: np.ndarray, radii: Sequence[float]) -> np.ndarray:
    """The fraction of ``errors`` at or below each radius: the cumulative error distribution
    (CED) of landmark errors, and the success detection rate (SDR) curve in mm."""
    errors = np.asarray(errors, dtype=float).ravel()
    errors = errors[np.isfinite(errors)]
    if errors.size == 0:
        return np.zeros(len(radii))
    ordered = np.sort(errors)
    return np.searchsorted(ordered, np.asarray(radii, dtype=float), side="right") / ordered.size


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample SD (ddof 1; None with fewer than two values)."""
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if values.size == 0:
        return None, None
    return float(values.mean()), (float(values.std(ddof=1)) if values.size > 1 else None)


@dataclass(frozen=True)
class PairedTest:
    n: int  # pairs compared (images in both jobs' test results)
    n_changed: int  # pairs whose values differ: the ones the signed-rank test ranks
    median_difference: float  # median of (b - a) over all pairs
    direction: int  # -1: b lower, +1: b higher, 0: no shift (sign of the signed-rank sums R+ - R-)
    statistic: float | None
    p_value: float | None  # two-sided; None when no pair differs or n < 2


def wilcoxon_paired(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """The Wilcoxon signed-rank test of paired per-image values (two-sided, SciPy's default
    "wilcox" zero method: pairs that do not differ are left out of the ranks). The direction is
    the one the test weighs, the sign of R+ - R- over the ranked differences, not the median of
    the differences, which is 0 whenever most images score alike (CT slices empty in both)."""
    from scipy.stats import rankdata, wilcoxon

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = b - a
    n = int(difference.size)
    changed = difference[difference != 0]
    median = float(np.median(difference)) if n else 0.0
    if n < 2 or changed.size == 0:
        return PairedTest(n, int(changed.size), median, 0, None, None)
    ranks = rankdata(np.abs(changed))
    direction = int(np.sign(ranks[changed > 0].sum() - ranks[changed < 0].sum()))
    result = wilcoxon(a, b, alternative="two-sided")
    return PairedTest(n, int(changed.size), median, direction, float(result.statistic), float(result.pvalue))
