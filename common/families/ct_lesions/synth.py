"""Synthetic CT slices in the MedSeg COVID-19 layout, with lesions the pixels show.

Writes ``images_synth.npy`` (N, S, S, 1) float32 HU, ``masks_synth.npy`` (N, S, S, 4) one-hot
uint8 in MedSeg's channel order (ground glass, consolidation, other lung, background), and
``volumes_synth.npy`` (N,) int: the volume each slice comes from (medq's own addition, for a
split by volume). Slices come in volumes of ``slices_per_volume`` that share a body and lungs.

HU ranges (before noise of about 25 HU): air -1000, fat -100, soft tissue 40, bone 700 (a
vertebra behind the lungs), aerated lung -850, ground-glass opacity -600 to -300, consolidation
-100 to 40. About a third of the slices have no lesion; the others have one to four blobs,
each ground glass or consolidation, always inside a lung ("background" is everything outside
the lungs, the body included, as in MedSeg).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medq.common.errors import SpecError
from medq.common.families.ct_lesions.schema import BACKGROUND, CONSOLIDATION, GROUND_GLASS, N_CLASSES, OTHER_LUNG

AIR, FAT, SOFT, BONE, LUNG = -1000.0, -100.0, 40.0, 700.0, -850.0
GGO_HU, CONSOLIDATION_HU = (-600.0, -300.0), (-100.0, 40.0)
NO_LESION_FRACTION = 1 / 3


@dataclass(frozen=True)
class CTSynthSummary:
    out_dir: Path
    n_slices: int
    n_volumes: int
    size: int
    slices_with_lesions: int


def synth_ct(out_dir: Path, n: int, seed: int, size: int = 128, slices_per_volume: int = 10) -> CTSynthSummary:
    if not isinstance(n, int) or n < 1:
        raise SpecError(f"n must be a positive integer, got {n!r}")
    if size < 64:
        raise SpecError(f"size must be at least 64 px, got {size}")
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 1), dtype=np.float32)
    masks = np.zeros((n, size, size, N_CLASSES), dtype=np.uint8)
    volumes = np.arange(n) // slices_per_volume
    anatomy = None
    for i in range(n):
        if i % slices_per_volume == 0:
            anatomy = _anatomy(rng)
        hu, labels = render_slice(anatomy, size, rng)
        images[i, ..., 0] = hu
        masks[i] = np.eye(N_CLASSES, dtype=np.uint8)[labels]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "images_synth.npy", images)
    np.save(out_dir / "masks_synth.npy", masks)
    np.save(out_dir / "volumes_synth.npy", volumes)
    lesions = int((masks[..., [GROUND_GLASS, CONSOLIDATION]].sum(axis=(1, 2, 3)) > 0).sum())
    return CTSynthSummary(out_dir, n, int(volumes.max()) + 1, size, lesions)


def _anatomy(rng: np.random.Generator) -> dict:
    """A volume's body and lungs, as fractions of the slice (centre x, centre y, radius x, radius y)."""
    body = (0.5, 0.52, rng.uniform(0.36, 0.44), rng.uniform(0.28, 0.34))
    lung_rx, lung_ry = rng.uniform(0.12, 0.15), rng.uniform(0.17, 0.21)
    gap = rng.uniform(0.15, 0.19)
    return {"body": body, "lungs": [(0.5 - gap, 0.5, lung_rx, lung_ry), (0.5 + gap, 0.5, lung_rx, lung_ry)]}


def _ellipse(grid: tuple[np.ndarray, np.ndarray], cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    x, y = grid
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def render_slice(anatomy: dict, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """HU (S, S) float32 and class indices (S, S) of one slice of ``anatomy``."""
    coords = (np.arange(size) + 0.5) / size
    grid = np.meshgrid(coords, coords)
    jitter = lambda e: (e[0], e[1], e[2] * rng.uniform(0.95, 1.05), e[3] * rng.uniform(0.95, 1.05))  # noqa: E731
    hu = np.full((size, size), AIR)
    labels = np.full((size, size), BACKGROUND, dtype=np.int64)
    cx, cy, rx, ry = jitter(anatomy["body"])
    hu[_ellipse(grid, cx, cy, rx, ry)] = FAT
    hu[_ellipse(grid, cx, cy, rx - 0.03, ry - 0.03)] = SOFT
    hu[_ellipse(grid, cx, cy + ry - 0.09, 0.045, 0.04)] = BONE  # a vertebra behind the lungs
    lungs = np.zeros((size, size), dtype=bool)
    for lung in anatomy["lungs"]:
        lungs |= _ellipse(grid, *jitter(lung))
    hu[lungs] = LUNG
    labels[lungs] = OTHER_LUNG
    if rng.random() >= NO_LESION_FRACTION:
        for _ in range(rng.integers(1, 5)):
            kind = GROUND_GLASS if rng.random() < 0.6 else CONSOLIDATION
            lung = anatomy["lungs"][rng.integers(0, 2)]
            bx = lung[0] + rng.uniform(-0.6, 0.6) * lung[2]
            by = lung[1] + rng.uniform(-0.6, 0.6) * lung[3]
            blob = _ellipse(grid, bx, by, rng.uniform(0.025, 0.06), rng.uniform(0.025, 0.06)) & lungs
            hu[blob] = rng.uniform(*(GGO_HU if kind == GROUND_GLASS else CONSOLIDATION_HU))
            labels[blob] = kind
    hu += rng.normal(0, 25.0, hu.shape)
    return hu.astype(np.float32), labels
