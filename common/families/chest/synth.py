"""Synthetic chest radiographs whose 15 landmarks can be learned from the pixels (numpy + Pillow).

Shapes come from the real annotations (``common/families/chest/data/chest_landmarks_957.csv``): each image
takes a random real shape of its category, jittered by a small similarity transform and rounded
to integer pixels. The anatomy is drawn through the landmarks, so they sit on visible corners
and edges (0-based indices, image x to the right, y down):

- lungs (dark): lateral border through the apex and the lateral points, 11-2-4-6-13 on the
  image left and 12-3-5-7-14 on the image right, ending at the costophrenic angle (13/14);
  medial border along the mediastinum; lower border a diaphragm dome from 13/14 to the
  mediastinum at the level of landmark 1.
- mediastinum (bright): a band around the axis 0-8-9-10-1 that starts at 0 and ends at 1,
  widening into the heart, which bulges more to the image right.
- diaphragm and abdomen (bright) below the lungs, body soft tissue around, air outside.

Categories differ visibly: COVID adds patchy peripheral ground-glass opacities, mostly in the
lower zones; Viral Pneumonia a diffuse bilateral haze; Normal lungs stay clear.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from medq.common.errors import SpecError
from medq.common.registry import Registry
from medq.common.families.chest.csvio import (
    CSV_NAME,
    IMAGES_DIR,
    DatasetSummary,
    LandmarkRecord,
    count_categories,
    make_record,
    read_landmark_csv,
    write_landmark_csv,
)
from medq.common.families.chest.schema import CATEGORIES, ORIGINAL_SIZE

REAL_CSV = Path(__file__).resolve().parent / "data" / "chest_landmarks_957.csv"

LEFT_CHAIN = (11, 2, 4, 6, 13)  # image-left lung: apex down the lateral border to the angle
RIGHT_CHAIN = (12, 3, 5, 7, 14)
AXIS_CHAIN = (0, 8, 9, 10, 1)  # mediastinal axis, top to bottom
# Half-width of the mediastinum at each axis point, as a fraction of the chest width (13 to 14).
HALF_WIDTH_LEFT = np.array([0.05, 0.06, 0.09, 0.12, 0.11])
HALF_WIDTH_RIGHT = np.array([0.05, 0.06, 0.11, 0.18, 0.16])  # the heart bulges to the image right

# Grey levels (0-255) before exposure jitter, blur and noise.
AIR, BODY, ABDOMEN, LUNG, MEDIASTINUM = 12.0, 115.0, 165.0, 42.0, 205.0


@lru_cache(maxsize=1)
def real_shapes() -> tuple[np.ndarray, tuple[str, ...]]:
    """The real shapes (957, 15, 2) in pixels of the 299-px originals, and their categories."""
    records = read_landmark_csv(REAL_CSV)
    shapes = np.stack([r.points for r in records])
    shapes.flags.writeable = False
    return shapes, tuple(r.category for r in records)


def synth_chest(out_dir: Path, n: int, seed: int, size: int = ORIGINAL_SIZE) -> DatasetSummary:
    """Write ``out_dir/images/<stem>.png`` (size x size, 8-bit grey) and ``out_dir/landmarks.csv``.

    Categories follow the real proportions (largest-remainder counts for n, in random order);
    stems are ``<Category>-<k>`` with k counting from 1 per category. Same seed, same bytes.
    """
    if not isinstance(n, int) or n < 1:
        raise SpecError(f"n must be a positive integer, got {n!r}")
    if size < 64:
        raise SpecError(f"size must be at least 64 px, got {size}")
    out_dir = Path(out_dir)
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shapes, shape_categories = real_shapes()

    categories = _category_sequence(n, shape_categories, rng)
    counters = {c: 0 for c in CATEGORIES}
    records: list[LandmarkRecord] = []
    for i, category in enumerate(categories):
        counters[category] += 1
        stem = f"{category}-{counters[category]}"
        candidates = np.flatnonzero(np.asarray(shape_categories) == category)
        base = shapes[rng.choice(candidates)] * (size / ORIGINAL_SIZE)
        points = jitter_shape(base, size, rng)
        pixels = render_chest(points, category, size, rng)
        Image.fromarray(pixels).save(out_dir / IMAGES_DIR / f"{stem}.png")
        records.append(make_record(i + 1, i, stem, points))
    write_landmark_csv(out_dir / CSV_NAME, records)
    return DatasetSummary(
        n_images=n, categories=count_categories(records), image_size=(size, size), records=tuple(records)
    )


def _category_sequence(n: int, shape_categories: tuple[str, ...], rng: np.random.Generator) -> list[str]:
    """n categories in the real proportions (largest remainder), shuffled."""
    names = list(CATEGORIES)
    real = np.array([shape_categories.count(c) for c in names], dtype=np.float64)
    exact = real / real.sum() * n
    counts = np.floor(exact).astype(int)
    counts[np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]] += 1
    sequence = np.repeat(np.arange(len(names)), counts)
    return [names[k] for k in rng.permutation(sequence)]


def jitter_shape(points: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A similarity jitter about the shape's centroid (scale +-5 %, rotation +-4 deg, shift
    +-6 px at 299 px), rounded to integer pixels and clipped into [0, size - 1]."""
    px = size / ORIGINAL_SIZE
    scale = rng.uniform(0.95, 1.05)
    angle = np.deg2rad(rng.uniform(-4.0, 4.0))
    shift = rng.uniform(-6.0, 6.0, size=2) * px
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = points.mean(axis=0)
    moved = (points - centre) @ rotation.T * scale + centre + shift
    return np.clip(np.rint(moved), 0, size - 1)


# --- rendering -----------------------------------------------------------------------------


def render_chest(points: np.ndarray, category: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) uint8 radiograph drawn through ``points`` (15, 2) in pixels."""
    px = size / ORIGINAL_SIZE
    outline = chest_outline(points, rng)
    canvas = Image.new("F", (size, size), AIR)
    draw = ImageDraw.Draw(canvas)
    draw.ellipse(outline["body"], fill=BODY)
    image = np.asarray(canvas, dtype=np.float32).copy()
    image[_mask(size, outline["abdomen"]) & (image == BODY)] = ABDOMEN  # abdomen inside the body

    lungs = _mask(size, outline["lung_left"], outline["lung_right"])
    image[lungs] = LUNG
    image += _smooth_noise(size, 6, rng) * 10.0 * lungs  # uneven lung density
    image += _ribs(size, points, px, rng) * 22.0 * lungs
    band = _mask(size, outline["mediastinum"])
    image[band] = MEDIASTINUM
    image += PATHOLOGY.get(category)(size, points, lungs, px, rng)

    grey = Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    image = np.asarray(grey.filter(ImageFilter.GaussianBlur(1.2 * px)), dtype=np.float32)
    image = image * rng.uniform(0.88, 1.08) + rng.uniform(-10.0, 10.0)  # exposure
    image = image + rng.normal(0.0, 4.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def chest_outline(points: np.ndarray, rng: np.random.Generator) -> dict:
    """Polygons (k, 2) of both lungs, the mediastinum and the abdomen, and the body's ellipse box."""
    p = np.asarray(points, dtype=np.float64)
    axis = p[list(AXIS_CHAIN)]
    down = p[1] - p[0]
    down = down / max(np.linalg.norm(down), 1e-6)
    to_right = np.array([down[1], -down[0]])  # perpendicular to the axis, towards the image right
    width = max(p[14, 0] - p[13, 0], 20.0)
    lateral_l = p[list(LEFT_CHAIN)]
    lateral_r = p[list(RIGHT_CHAIN)]
    # Mediastinal half-widths, at most 60 % of the way to the lateral border at that level.
    heart = rng.uniform(0.85, 1.15)
    reach_l = np.abs((lateral_l - axis) @ to_right)
    reach_r = np.abs((lateral_r - axis) @ to_right)
    medial_l = axis - to_right * np.minimum(HALF_WIDTH_LEFT * width * heart, 0.6 * reach_l)[:, None]
    medial_r = axis + to_right * np.minimum(HALF_WIDTH_RIGHT * width * heart, 0.6 * reach_r)[:, None]
    dome = rng.uniform(0.07, 0.12) * max(p[1, 1] - p[0, 1], 20.0)

    def lung(lateral: np.ndarray, medial: np.ndarray) -> np.ndarray:
        top = catmull_rom(np.vstack([medial[:1], lateral]), 6)  # medial top, apex, ..., angle
        bottom = _dome(lateral[-1], medial[-1], dome)  # costophrenic angle to the heart's base
        return np.vstack([top, bottom, catmull_rom(medial[::-1], 6)])

    lung_left = lung(lateral_l, medial_l)
    lung_right = lung(lateral_r, medial_r)
    mediastinum = np.vstack([catmull_rom(medial_l, 6), catmull_rom(medial_r[::-1], 6)])
    low = p[:, 1].max() + 3 * dome + width
    abdomen = np.vstack(
        [
            [p[13] + [-0.15 * width, 0.0]],
            _dome(p[13], medial_l[-1], dome),
            _dome(medial_r[-1], p[14], dome),
            [p[14] + [0.15 * width, 0.0], [p[14, 0] + 0.15 * width, low], [p[13, 0] - 0.15 * width, low]],
        ]
    )
    margin = rng.uniform(0.08, 0.14) * width
    body = (p[13, 0] - margin, p[0, 1] - 0.5 * width, p[14, 0] + margin, p[1, 1] + 0.8 * width)
    return dict(lung_left=lung_left, lung_right=lung_right, mediastinum=mediastinum, abdomen=abdomen, body=body)


def catmull_rom(control: np.ndarray, steps: int) -> np.ndarray:
    """A Catmull-Rom curve through every control point (k, 2), ``steps`` samples per span."""
    padded = np.vstack([control[:1], control, control[-1:]])
    t = np.linspace(0.0, 1.0, steps, endpoint=False)[:, None, None]
    p0, p1, p2, p3 = padded[:-3], padded[1:-2], padded[2:-1], padded[3:]
    curve = 0.5 * (
        2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3
    )
    return np.vstack([curve.transpose(1, 0, 2).reshape(-1, 2), control[-1:]])


def _dome(start: np.ndarray, end: np.ndarray, height: float, steps: int = 12) -> np.ndarray:
    """A quadratic arc from start to end that rises ``height`` px above the chord (y up)."""
    t = np.linspace(0.0, 1.0, steps)[:, None]
    apex = (start + end) / 2 - [0.0, 2 * height]
    return (1 - t) ** 2 * start + 2 * t * (1 - t) * apex + t**2 * end


def _flat(polygon: np.ndarray) -> list[tuple[float, float]]:
    return [tuple(xy) for xy in np.asarray(polygon, dtype=np.float64).tolist()]


def _mask(size: int, *polygons: np.ndarray) -> np.ndarray:
    """Boolean (size, size) mask, True inside any of the polygons."""
    canvas = Image.new("1", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        draw.polygon(_flat(polygon), fill=1)
    return np.asarray(canvas, dtype=bool)


def _smooth_noise(size: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a cells x cells grid resized bicubically to size x size."""
    grid = Image.fromarray(rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32))
    return np.clip(np.asarray(grid.resize((size, size), Image.BICUBIC)), -1.0, 1.0)


def _ribs(size: int, points: np.ndarray, px: float, rng: np.random.Generator) -> np.ndarray:
    """Faint posterior ribs: arcs from the spine sweeping out and down, as a [0, 1] layer."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    top, bottom = points[0, 1], points[1, 1]
    x_mid = points[[0, 1], 0].mean()
    half = (points[14, 0] - points[13, 0]) / 2 + 10 * px
    t = np.linspace(0.0, 1.0, 10)
    for y in np.linspace(top, bottom, 9)[:-1] + rng.uniform(-3, 3) * px:
        for side in (-1.0, 1.0):
            xs = x_mid + side * half * t
            ys = y - 10 * px * np.sin(np.pi * t * 0.7) + 30 * px * t**2
            draw.line(list(zip(xs.tolist(), ys.tolist())), fill=255, width=max(1, int(round(5 * px))))
    return np.asarray(canvas.filter(ImageFilter.GaussianBlur(1.5 * px)), dtype=np.float32) / 255.0


# --- category appearance: a registry, one function per category ------------------------------

PATHOLOGY: Registry = Registry("chest category")


@PATHOLOGY.register("Normal")

def _normal(size, points, lungs, px, rng) -> np.ndarray:
    """Clear lungs: nothing added."""
    return np.zeros((size, size), dtype=np.float32)


@PATHOLOGY.register("COVID")
def _covid(size, points, lungs, px, rng) -> np.ndarray:
    """Patchy peripheral ground-glass: blurred blobs just inside the lateral borders, lower zones."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    axis_x = points[[0, 1], 0].mean()
    for chain in (LEFT_CHAIN, RIGHT_CHAIN):
        border = catmull_rom(points[list(chain)], 8)
        for _ in range(rng.integers(2, 5)):
            at = border[int(rng.uniform(0.35, 1.0) * (len(border) - 1))]
            inward = rng.uniform(0.12, 0.35)  # fraction of the way to the axis
            cx, cy = at[0] + (axis_x - at[0]) * inward, at[1] - rng.uniform(0, 15) * px
            rx, ry = rng.uniform(7, 16, size=2) * px
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=int(rng.integers(170, 256)))
    patches = np.asarray(canvas.filter(ImageFilter.GaussianBlur(5 * px)), dtype=np.float32) / 255.0
    return patches * rng.uniform(60.0, 85.0) * lungs


@PATHOLOGY.register("Viral Pneumonia")
def _viral(size, points, lungs, px, rng) -> np.ndarray:
    """Diffuse bilateral haze, a little denser towards the hila."""
    axis_x = points[[0, 1], 0].mean()
    half = max((points[14, 0] - points[13, 0]) / 2, 1.0)
    x = np.arange(size, dtype=np.float32)
    perihilar = 1.0 - 0.35 * np.clip(np.abs(x - axis_x) / half, 0.0, 1.0)
    texture = 0.75 + 0.25 * _smooth_noise(size, 12, rng)
    return rng.uniform(48.0, 62.0) * perihilar[None, :] * texture * lungs

