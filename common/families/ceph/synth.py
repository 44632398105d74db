"""Synthetic lateral cephalograms in the ISBI 2015 layout, with learnable landmarks.

Every image draws a head facing right through its 19 landmarks, so each landmark sits on a
visible corner, tip or edge (indices as in ``schema.LANDMARKS``):

- bone (bright): the cranial vault ending at the frontonasal corner (Nasion), the sella turcica
  as a dark round fossa whose centre is Sella, the orbit rim whose lowest point is Orbitale, an
  ear-rod ring whose top is Porion, the maxilla from PNS to the ANS tip and down to Subspinale,
  the mandible outline Articulare, Gonion, Menton, Gnathion, Pogonion, Supramentale, and the
  two incisors ending at their incisal tips;
- soft tissue (grey): the profile through Subnasale, the lips and soft-tissue Pogonion;
- air (dark) outside; blur, exposure jitter and noise on top.

Shapes: a mean shape, a random similarity transform (scale, rotation, shift), an opening or
closing of the mandible about Articulare, and a little independent jitter per landmark. The
senior annotator's files hold the drawn positions; the junior's add about 1.5 px of noise,
like a second observer. Layout: ``RawImage/<set>/<stem>.bmp`` and
``AnnotationsByMD/400_senior|400_junior/<stem>.txt`` (19 lines ``x,y``), sets ``TrainingData``,
``Test1Data`` and ``Test2Data``. The pixel spacing is that of ISBI 2015, 0.1 mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from medq.common.families.ceph import schema as S
from medq.common.errors import SpecError

# Mean positions as fractions of (width, height).
MEAN_SHAPE = np.array([
    (0.42, 0.40), (0.74, 0.36), (0.67, 0.45), (0.30, 0.47), (0.73, 0.61), (0.70, 0.76), (0.71, 0.83),
    (0.66, 0.88), (0.70, 0.865), (0.42, 0.75), (0.735, 0.685), (0.755, 0.675), (0.83, 0.66), (0.815, 0.72),
    (0.81, 0.585), (0.78, 0.855), (0.50, 0.585), (0.77, 0.575), (0.38, 0.56),
])
MANDIBLE = (S.SUPRAMENTALE, S.POGONION, S.MENTON, S.GNATHION, S.GONION, S.LOWER_INCISOR, S.LOWER_LIP,
            S.SOFT_POGONION)
AIR, SOFT, BONE, DENSE = 18.0, 85.0, 170.0, 225.0
DEFAULT_WIDTH, DEFAULT_HEIGHT = 480, 600
JUNIOR_NOISE_PX = 1.5


@dataclass(frozen=True)
class CephSynthSummary:
    out_dir: Path
    sets: dict[str, int]
    size: tuple[int, int]  # (width, height)
    spacing_mm: float


def synth_ceph(out_dir: Path, n: int, seed: int, n_test: int | None = None, width: int = DEFAULT_WIDTH,
               height: int = DEFAULT_HEIGHT) -> CephSynthSummary:
    """``n`` training images and ``n_test`` (default n // 4) in each test set. Same seed, same bytes."""
    if not isinstance(n, int) or n < 1:
        raise SpecError(f"n must be a positive integer, got {n!r}")
    if min(width, height) < 96:
        raise SpecError(f"images must be at least 96 px on a side, got {width} x {height}")
    n_test = n // 4 if n_test is None else n_test
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    sets = {S.ISBI_TRAIN: n, **{name: n_test for name in S.ISBI_TESTS}}
    number = 0
    for set_name, count in sets.items():
        if count == 0:
            continue
        images = out_dir / S.ISBI_IMAGE_DIR / set_name
        images.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            number += 1
            stem = f"{number:03d}"
            points = random_shape(width, height, rng)
            Image.fromarray(render_ceph(points, width, height, rng)).save(images / f"{stem}.bmp")
            junior = np.clip(np.rint(points + rng.normal(0, JUNIOR_NOISE_PX, points.shape)), 0,
                             [width - 1, height - 1])
            for annotator, marks in (("senior", points), ("junior", junior)):
                folder = out_dir / S.ISBI_ANNOTATION_DIR / S.ISBI_ANNOTATORS[annotator]
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{stem}.txt").write_text("".join(f"{int(x)},{int(y)}\n" for x, y in marks))
    return CephSynthSummary(out_dir, {k: v for k, v in sets.items() if v}, (width, height), S.ISBI_SPACING_MM)


def random_shape(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """(19, 2) integer pixel positions: mean shape, mandible rotation, similarity, jitter."""
    size = np.array([width, height], dtype=np.float64)
    points = MEAN_SHAPE * size
    pivot = points[S.ARTICULARE].copy()
    points[list(MANDIBLE)] = _rotate(points[list(MANDIBLE)], pivot, rng.uniform(-5.0, 5.0))
    centre = points.mean(axis=0)
    points = _rotate(points, centre, rng.uniform(-6.0, 6.0))
    points = (points - centre) * rng.uniform(0.92, 1.06) + centre + rng.uniform(-0.03, 0.03, 2) * size
    points += rng.normal(0, 0.006, points.shape) * size
    return np.clip(np.rint(points), 0, size - 1)


def _rotate(points: np.ndarray, pivot: np.ndarray, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (points - pivot) @ rotation.T + pivot


# --- rendering -----------------------------------------------------------------------------


def render_ceph(points: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A (height, width) uint8 cephalogram drawn through ``points`` (19, 2)."""
    p = {k: tuple(map(float, points[k])) for k in range(S.N_LANDMARKS)}
    unit = width / DEFAULT_WIDTH  # line widths and radii scale with the image
    canvas = Image.new("F", (width, height), AIR)
    draw = ImageDraw.Draw(canvas)

    def shifted(k: int, dx: float, dy: float) -> tuple[float, float]:
        return p[k][0] + dx * width, p[k][1] + dy * height

    # Soft tissue: the head and neck, the profile through the soft-tissue landmarks.
    profile = [shifted(S.NASION, 0.03, -0.30), shifted(S.NASION, 0.035, 0.0), shifted(S.SUBNASALE, 0.06, -0.04),
               p[S.SUBNASALE], p[S.UPPER_LIP], shifted(S.UPPER_LIP, -0.03, 0.03), p[S.LOWER_LIP],
               shifted(S.SOFT_POGONION, -0.02, -0.05), p[S.SOFT_POGONION], shifted(S.MENTON, 0.04, 0.05),
               (p[S.GONION][0], height - 1), (0, height - 1), (0, 0.05 * height), (0.5 * width, 0.02 * height)]
    draw.polygon(profile, fill=SOFT)
    # Cranial vault: a thick arc from the back of the skull to the frontonasal corner (Nasion).
    vault = [shifted(S.PORION, -0.2, 0.05), shifted(S.SELLA, -0.25, -0.25), shifted(S.SELLA, 0.05, -0.34),
             shifted(S.NASION, -0.03, -0.22), p[S.NASION]]
    draw.line(vault, fill=BONE, width=int(14 * unit), joint="curve")
    draw.line([p[S.NASION], shifted(S.NASION, 0.03, 0.07)], fill=BONE, width=int(7 * unit))  # nasal bone
    # Sella turcica: a bright sphenoid body with a dark round fossa centred on Sella.
    r = 13 * unit
    draw.ellipse(_box(p[S.SELLA], 2.0 * r), fill=BONE)
    draw.ellipse(_box(p[S.SELLA], r), fill=SOFT)
    # Orbit rim: its lowest point is Orbitale.
    orbit = 22 * unit
    draw.ellipse([p[S.ORBITALE][0] - orbit, p[S.ORBITALE][1] - 2 * orbit, p[S.ORBITALE][0] + orbit,
                  p[S.ORBITALE][1]], outline=BONE, width=int(5 * unit))
    # Ear rod ring: its top is Porion.
    ring = 12 * unit
    draw.ellipse([p[S.PORION][0] - ring, p[S.PORION][1], p[S.PORION][0] + ring, p[S.PORION][1] + 2 * ring],
                 outline=DENSE, width=int(5 * unit))
    # Maxilla: PNS to the ANS tip, down through Subspinale to the upper incisor's root.
    maxilla = [p[S.PNS], p[S.ANS], shifted(S.SUBSPINALE, 0.01, -0.02), p[S.SUBSPINALE],
               shifted(S.UPPER_INCISOR, -0.03, -0.05), shifted(S.PNS, 0.02, 0.05)]
    draw.polygon(maxilla, fill=BONE)
    # Mandible: ramus from Articulare to Gonion, body to Menton, symphysis up to Supramentale.
    mandible = [p[S.ARTICULARE], shifted(S.ARTICULARE, 0.05, 0.0), shifted(S.GONION, 0.06, -0.07),
                shifted(S.SUPRAMENTALE, -0.06, 0.0), shifted(S.LOWER_INCISOR, -0.03, 0.05), p[S.SUPRAMENTALE],
                p[S.POGONION], p[S.GNATHION], p[S.MENTON], p[S.GONION]]
    draw.polygon(mandible, fill=BONE)
    # Incisors: dense, ending at their incisal tips.
    draw.line([shifted(S.UPPER_INCISOR, -0.045, -0.07), p[S.UPPER_INCISOR]], fill=DENSE, width=int(9 * unit))
    draw.line([shifted(S.LOWER_INCISOR, -0.05, 0.06), p[S.LOWER_INCISOR]], fill=DENSE, width=int(9 * unit))

    image = np.asarray(canvas.convert("L").filter(ImageFilter.GaussianBlur(1.2 * unit)), dtype=np.float32)
    image = image * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12)
    image += rng.normal(0, 6.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _box(centre: tuple[float, float], radius: float) -> list[float]:
    return [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius]
