"""Quality checks of one predicted chest shape (numpy only): why a study needs a human look.

Every check reads landmarks in pixels of the original image (15, 2), 0-based, x to the right
and y down, and returns reasons (strings, no patient data). The thresholds are such that none
of the 957 real annotated shapes (``common/families/chest/data/chest_landmarks_957.csv``) is flagged:

- ensemble spread: one reason per landmark whose spread exceeds the limit;
- a landmark outside the image (x outside [0, width], y outside [0, height], or not finite);
- a left/right pair swapped: which member of each ``FLIP_PAIRS`` pair lies on the image left
  (smaller x) is read from the real annotations, where it holds for every image;
- implausible geometry: lungs shorter than ``MIN_LUNG_HEIGHT_FRACTION`` of the image height
  (mean apex 11/12 to mean costophrenic angle 13/14; the real minimum is 0.204), or the
  mediastinal axis 0-8-9-10-1 not running top to bottom.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from medq.common.families.chest.csvio import read_landmark_csv
from medq.common.families.chest.schema import FLIP_PAIRS, N_LANDMARKS

from medq.common.families.chest.synth import REAL_CSV
DEFAULT_SPREAD_LIMIT_FRACTION = 0.03  # of the image width
MIN_LUNG_HEIGHT_FRACTION = 0.20  # of the image height
APICES, COSTOPHRENIC_ANGLES = (11, 12), (13, 14)
MEDIASTINAL_AXIS = (0, 8, 9, 10, 1)  # top to bottom

SPREAD_REASON = "ensemble spread above {limit:.1f} px at landmark {index}"
OUTSIDE_REASON = "landmark outside the image"
SWAPPED_REASON = "left/right landmarks swapped"
GEOMETRY_REASON = "implausible geometry"


def default_spread_limit(image_size: tuple[int, int]) -> float:
    """The spread limit in pixels for an image of (width, height): 3 % of the width."""
    return DEFAULT_SPREAD_LIMIT_FRACTION * float(image_size[0])


@lru_cache(maxsize=1)
def image_left_members() -> tuple[tuple[int, int], ...]:
    """Each flip pair ordered (image-left member, image-right member), by majority of the real
    annotations (the member with the smaller x in most images)."""
    shapes = np.stack([record.points for record in read_landmark_csv(REAL_CSV)])
    ordered = []
    for a, b in FLIP_PAIRS:
        a_left = np.mean(shapes[:, a, 0] < shapes[:, b, 0]) >= 0.5
        ordered.append((a, b) if a_left else (b, a))
    return tuple(ordered)


# --- the checks: (landmarks (15, 2) px, spread (15,) px, (w, h), spread limit px) -> reasons ----

Check = Callable[[np.ndarray, np.ndarray, tuple[int, int], float], list[str]]


def spread_reasons(points: np.ndarray, spread: np.ndarray, size: tuple[int, int], limit: float) -> list[str]:
    return [SPREAD_REASON.format(limit=limit, index=int(i)) for i in np.flatnonzero(~(spread <= limit))]


def outside_reasons(points: np.ndarray, spread: np.ndarray, size: tuple[int, int], limit: float) -> list[str]:
    width, height = size
    inside = (points[:, 0] >= 0) & (points[:, 0] <= width) & (points[:, 1] >= 0) & (points[:, 1] <= height)
    outside = np.flatnonzero(~inside)  # NaN compares False, so it counts as outside
    if outside.size == 0:
        return []
    return [f"{OUTSIDE_REASON}: landmark {', '.join(str(int(i)) for i in outside)}"]


def swapped_reasons(points: np.ndarray, spread: np.ndarray, size: tuple[int, int], limit: float) -> list[str]:
    swapped = [f"{left}/{right}" for left, right in image_left_members() if points[left, 0] > points[right, 0]]
    return [f"{SWAPPED_REASON}: pair {', '.join(swapped)}"] if swapped else []


def geometry_reasons(points: np.ndarray, spread: np.ndarray, size: tuple[int, int], limit: float) -> list[str]:
    reasons = []
    lung_height = points[list(COSTOPHRENIC_ANGLES), 1].mean() - points[list(APICES), 1].mean()
    if not lung_height >= MIN_LUNG_HEIGHT_FRACTION * size[1]:
        reasons.append(f"{GEOMETRY_REASON}: lung height {lung_height:.1f} px is under "
                       f"{MIN_LUNG_HEIGHT_FRACTION:.0%} of the image height")
    axis_y = points[list(MEDIASTINAL_AXIS), 1]
    if not np.all(np.diff(axis_y) > 0):
        reasons.append(f"{GEOMETRY_REASON}: the mediastinal axis 0-8-9-10-1 does not run top to bottom")
    return reasons


CHECKS: tuple[Check, ...] = (spread_reasons, outside_reasons, swapped_reasons, geometry_reasons)


def qc_flags(
    landmarks_px: np.ndarray,
    spread_px: np.ndarray,
    image_size: tuple[int, int],
    spread_limit_px: float | None = None,
) -> list[str]:
    """Every reason to review one prediction; an empty list means it passed.

    landmarks_px: (15, 2) in pixels of the original image; spread_px: (15,) ensemble spread in
    the same pixels; image_size: (width, height); spread_limit_px: None means
    ``DEFAULT_SPREAD_LIMIT_FRACTION`` of the width.
    """
    points = np.asarray(landmarks_px, dtype=float)
    spread = np.asarray(spread_px, dtype=float)
    if points.shape != (N_LANDMARKS, 2) or spread.shape != (N_LANDMARKS,):
        raise ValueError(f"expected landmarks ({N_LANDMARKS}, 2) and spread ({N_LANDMARKS},), "
                         f"got {points.shape} and {spread.shape}")
    size = (int(image_size[0]), int(image_size[1]))
    limit = default_spread_limit(size) if spread_limit_px is None else float(spread_limit_px)
    return [reason for check in CHECKS for reason in check(points, spread, size, limit)]


def landmark_qc_flags(landmarks_px: np.ndarray, spread_px: np.ndarray, image_size: tuple[int, int],
                      spread_limit_px: float | None = None) -> list[str]:
    """The checks that hold for any landmark set (spread, inside the image), for models of other
    anatomy than the chest: landmarks (K, 2), spread (K,)."""
    points, spread = np.asarray(landmarks_px, dtype=float), np.asarray(spread_px, dtype=float)
    size = (int(image_size[0]), int(image_size[1]))
    limit = default_spread_limit(size) if spread_limit_px is None else float(spread_limit_px)
    return [reason for check in (spread_reasons, outside_reasons) for reason in check(points, spread, size, limit)]
