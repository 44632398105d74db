"""A review picture of one prediction: the radiograph with its landmarks drawn on (Pillow).

Green when the prediction passed quality control, red when it was flagged. Left/right pairs
are joined by lines, and the mediastinal axis 0-8-9-10-1 is drawn as a polyline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from medq.common.atomic_files import write_atomic
from medq.common.families.chest.schema import FLIP_PAIRS, N_LANDMARKS

PASSED_COLOUR = (40, 220, 60)
FLAGGED_COLOUR = (235, 30, 30)
AXIS = (0, 8, 9, 10, 1)


def write_overlay(pixels: np.ndarray, landmarks_px: np.ndarray, qc_flag: bool, path: Path) -> Path:
    """Write an RGB PNG of ``pixels`` ((H, W) uint8 grey) with ``landmarks_px`` ((K, 2), original
    pixels; the chest's 15 also joined by their pairs and axis) drawn in red when ``qc_flag`` else green. The file is written beside ``path`` and
    renamed into place, so a reader never sees half a PNG. Returns ``path``."""
    image = np.asarray(pixels)
    points = np.asarray(landmarks_px, dtype=float)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected (H, W) uint8 pixels, got {image.shape} {image.dtype}")
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"expected landmarks (K, 2), got {points.shape}")
    chest = len(points) == N_LANDMARKS
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    colour = FLAGGED_COLOUR if qc_flag else PASSED_COLOUR
    height, width = image.shape
    radius = max(2.0, min(width, height) / 120)
    line = max(1, round(radius / 2))
    finite = np.isfinite(points).all(axis=1)

    for a, b in FLIP_PAIRS if chest else ():
        if finite[a] and finite[b]:
            draw.line([tuple(points[a]), tuple(points[b])], fill=colour, width=line)
    axis = [tuple(points[i]) for i in AXIS if finite[i]] if chest else []
    if len(axis) > 1:
        draw.line(axis, fill=colour, width=line)
    for x, y in points[finite]:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline=(0, 0, 0))

    return write_atomic(Path(path), lambda handle: canvas.save(handle, format="PNG"))
