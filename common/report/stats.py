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
    median_difference: float  # median of (b - a): negative means b has the lower value
    statistic: float | None
    p_value: float | None  # two-sided; None when every difference is zero or n < 2


def wilcoxon_paired(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """The Wilcoxon signed-rank test of paired per-image values (two-sided, SciPy)."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = b - a
    n = int(difference.size)
    if n < 2 or not np.any(difference):
        return PairedTest(n, float(np.median(difference)) if n else 0.0, None, None)
    result = wilcoxon(a, b, alternative="two-sided")
    return PairedTest(n, float(np.median(difference)), float(result.statistic), float(result.pvalue))
