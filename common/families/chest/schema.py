"""Facts of the chest-landmark format (torch-free)."""

from __future__ import annotations

from medq.common import landmark_pairs

N_LANDMARKS = 15
N_COLUMNS = 2 + 2 * N_LANDMARKS  # ID, x1, y1, ..., x15, y15, image_stem
ORIGINAL_SIZE = 299  # the source images are 299x299
MODEL_SCALE = 224  # the source project's reporting unit
# 0-based symmetric left/right pairs and the mediastinal (midline) landmarks.
FLIP_PAIRS: tuple[tuple[int, int], ...] = ((2, 3), (4, 5), (6, 7), (11, 12), (13, 14))
MIDLINE: tuple[int, ...] = (0, 1, 8, 9, 10)
# The 15 points have no published names: the DICOM SR names them by their 1-based number.
LANDMARK_NAMES: tuple[str, ...] = tuple(f"Landmark {k}" for k in range(1, N_LANDMARKS + 1))
# Distances a landmark SR reports (in mm, when the image has a pixel spacing): the width across
# each left/right pair.
SR_DISTANCES: tuple[tuple[int, int], ...] = FLIP_PAIRS
CATEGORIES: tuple[str, ...] = ("COVID", "Normal", "Viral Pneumonia")
# Quality buckets of per-landmark error in original pixels; >= the last edge is "review required".
QUALITY_EDGES_PX: tuple[float, ...] = (5.0, 8.5, 15.0)


def category_of(stem: str) -> str:
    """The category is the part of the stem before the last '-' ("Viral Pneumonia-12")."""
    return stem.rsplit("-", 1)[0] if "-" in stem else stem


def flip_permutation() -> list[int]:
    """Index map that swaps every left/right pair (applied after a horizontal flip)."""
    return landmark_pairs.flip_permutation(N_LANDMARKS, FLIP_PAIRS)
