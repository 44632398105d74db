"""Cephalometric metrics (DESIGN.md): radial error in mm with each image's own spacing.

- radial error of landmark k of image i: |pred - truth| in pixels times the image's spacing
  (mm/px; isotropic spacing, as ISBI 2015 and the generic CSV give one value per image);
- MRE ± SD: mean and standard deviation (population, ddof=0) of every radial error of the set;
- SDR at r mm: the fraction of radial errors <= r (the challenge's "within r mm");
- per landmark: the same three over the images.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SDR_RADII_MM = (2.0, 2.5, 3.0, 4.0)


def radial_errors_mm(pred_px: np.ndarray, truth_px: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """(N, K) radial errors in mm of (N, K, 2) predictions against truth, spacing (N,) mm/px."""
    pred, truth = np.asarray(pred_px, dtype=np.float64), np.asarray(truth_px, dtype=np.float64)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if pred.shape != truth.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"predictions {pred.shape} and truth {truth.shape} must both be (N, K, 2)")
    if spacing.shape != (pred.shape[0],):
        raise ValueError(f"need one spacing per image: {spacing.shape} for {pred.shape[0]} images")
    if not np.all(spacing > 0):
        raise ValueError("pixel spacing must be positive")
    return np.linalg.norm(pred - truth, axis=-1) * spacing[:, None]


def _summary(errors: np.ndarray, radii: Sequence[float], unit: str) -> dict:
    return {f"mre_{unit}": float(errors.mean()), f"sd_{unit}": float(errors.std()),
            **{f"sdr_{r:g}mm": float((errors <= r).mean()) for r in (radii if unit == "mm" else ())}}


def ceph_metrics(pred_px: np.ndarray, truth_px: np.ndarray, spacing_mm: Sequence[float] | None,
                 names: Sequence[str] | None = None, radii: Sequence[float] = SDR_RADII_MM) -> dict:
    """MRE, SD and SDR over the set, and per landmark (named by ``names`` when given). With no
    spacing (``None``: some image's is unknown) the errors stay in pixels: ``mre_px``, ``sd_px``
    and no SDR, whose radii are millimetres."""
    unit = "mm" if spacing_mm is not None else "px"
    pred = np.asarray(pred_px, dtype=np.float64)
    errors = radial_errors_mm(pred, truth_px, spacing_mm if spacing_mm is not None else np.ones(len(pred)))
    names = list(names) if names is not None else [f"L{k + 1}" for k in range(errors.shape[1])]
    return {"unit": unit, **_summary(errors, radii, unit), "n_images": int(errors.shape[0]),
            "per_landmark": [{"landmark": name, **_summary(errors[:, k], radii, unit)}
                             for k, name in enumerate(names)]}
