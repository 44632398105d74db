"""Quality checks of one predicted chest shape (numpy only): why a study needs a human look.

Every check reads landmarks in pixels of the original image (15, 2), 0-based, x to the right
and y down, and returns reasons (strings, no patient data). The thresholds are such that none
of the 957 real annotated shapes (``data/chest_landmarks_957.csv``, this family's own data) is
flagged:

- ensemble spread and a landmark outside the image: the checks of any landmark model
  (``medq.common.inference.points``);
- a left/right pair swapped: which member of each ``FLIP_PAIRS`` pair lies on the image left
  (smaller x) is read from the real annotations, where it holds for every image;
- implausible geometry: lungs shorter than ``MIN_LUNG_HEIGHT_FRACTION`` of the image height
  (mean apex 11/12 to mean costophrenic angle 13/14; the real minimum is 0.204), or the
  mediastinal axis 0-8-9-10-1 not running top to bottom.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from medq.common.families.chest.csvio import read_landmark_csv
from medq.common.families.chest.schema import FLIP_PAIRS, N_LANDMARKS
from medq.common.families.chest.synth import REAL_CSV
from medq.common.inference.points import LANDMARK_CHECKS, Check, qc_reasons

MIN_LUNG_HEIGHT_FRACTION = 0.20  # of the image height
APICES, COSTOPHRENIC_ANGLES = (11, 12), (13, 14)
MEDIASTINAL_AXIS = (0, 8, 9, 10, 1)  # top to bottom

SWAPPED_REASON = "left/right landmarks swapped"
GEOMETRY_REASON = "implausible geometry"


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


def swapped_reasons(points: np.ndarray, spread: np.ndarray, size: tuple[int, int], limit: float) -> list[str]:
    swapped = [f"{left + 1}/{right + 1}" for left, right in image_left_members()  # counted from 1, as x1, y1 are
               if points[left, 0] > points[right, 0]]
    return [f"{SWAPPED_REASON}: pair {', '.join(swapped)}"] if swapped else []


def geometry_reasons(points: np.ndarray, spread: np.ndarray, size: tuple[int, int], limit: float) -> list[str]:
    reasons = []
    lung_height = points[list(COSTOPHRENIC_ANGLES), 1].mean() - points[list(APICES), 1].mean()
    if not lung_height >= MIN_LUNG_HEIGHT_FRACTION * size[1]:
        reasons.append(f"{GEOMETRY_REASON}: lung height {lung_height:.1f} px is under "
                       f"{MIN_LUNG_HEIGHT_FRACTION:.0%} of the image height")
    axis_y = points[list(MEDIASTINAL_AXIS), 1]
    if not np.all(np.diff(axis_y) > 0):
        reasons.append(f"{GEOMETRY_REASON}: the mediastinal axis "
                       f"{'-'.join(str(i + 1) for i in MEDIASTINAL_AXIS)} does not run top to bottom")
    return reasons


CHEST_CHECKS: tuple[Check, ...] = (*LANDMARK_CHECKS, swapped_reasons, geometry_reasons)


def qc_flags(landmarks_px: np.ndarray, spread_px: np.ndarray, image_size: tuple[int, int],
             spread_limit_px: float | None = None) -> list[str]:
    """Every reason to review one chest prediction; an empty list means it passed.

    landmarks_px: (15, 2) in pixels of the original image; spread_px: (15,) ensemble spread in
    the same pixels; image_size: (width, height); spread_limit_px: None means 3 % of the width.
    """
    points, spread = np.asarray(landmarks_px, dtype=float), np.asarray(spread_px, dtype=float)
    if points.shape != (N_LANDMARKS, 2) or spread.shape != (N_LANDMARKS,):
        raise ValueError(f"expected landmarks ({N_LANDMARKS}, 2) and spread ({N_LANDMARKS},), "
                         f"got {points.shape} and {spread.shape}")
    return qc_reasons(points, spread, image_size, spread_limit_px, CHEST_CHECKS)
