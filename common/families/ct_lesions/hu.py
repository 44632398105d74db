"""CT intensities: clip Hounsfield units to DESIGN.md's window, then z-score with statistics of
the training split only (stored with the model, so inference normalises the same way)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from medq.common.families.ct_lesions.schema import HU_CLIP


@dataclass(frozen=True)
class HUNormaliser:
    mean: float
    std: float
    low: float = HU_CLIP[0]
    high: float = HU_CLIP[1]

    @classmethod
    def fit(cls, slices: Iterable[np.ndarray], low: float = HU_CLIP[0], high: float = HU_CLIP[1]) -> "HUNormaliser":
        """Mean and standard deviation of the clipped HU of every pixel of ``slices`` (streamed:
        sums in float64, one slice in memory at a time)."""
        n, total, squares = 0, 0.0, 0.0
        for hu in slices:
            clipped = np.clip(np.asarray(hu, dtype=np.float64), low, high)
            n, total, squares = n + clipped.size, total + clipped.sum(), squares + np.square(clipped).sum()
        if n == 0:
            raise ValueError("no pixels to fit the HU statistics on")
        mean = total / n
        std = float(np.sqrt(max(squares / n - mean * mean, 0.0)))
        return cls(float(mean), std if std > 0 else 1.0, low, high)

    def __call__(self, hu: np.ndarray) -> np.ndarray:
        """float32 z-scores of the clipped HU."""
        return ((np.clip(np.asarray(hu, dtype=np.float32), self.low, self.high) - self.mean) / self.std).astype(
            np.float32)

    def unit(self, hu: np.ndarray) -> np.ndarray:
        """float32 clipped HU mapped linearly onto [0, 1] (the range albumentations' intensity
        transforms expect of a float image; they clip to it)."""
        return ((np.clip(np.asarray(hu, dtype=np.float32), self.low, self.high) - self.low)
                / (self.high - self.low)).astype(np.float32)

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        """z-scores of ``unit`` values: ``from_unit(unit(hu)) == self(hu)``."""
        return ((np.asarray(unit, dtype=np.float32) * (self.high - self.low) + self.low - self.mean)
                / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std, "low": self.low, "high": self.high}
