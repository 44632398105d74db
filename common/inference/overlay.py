"""A review picture of one landmark prediction: the image with its points drawn on (Pillow).

Green when the prediction passed quality control, red when it was flagged. A family may join
pairs of landmarks by lines (the chest's left/right pairs) and draw a polyline through an axis
(the chest's mediastinal axis); both are passed in, never inferred from the number of points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from medq.common.atomic_files import write_atomic

PASSED_COLOUR = (40, 220, 60)
FLAGGED_COLOUR = (235, 30, 30)


def write_overlay(pixels: np.ndarray, landmarks_px: np.ndarray, qc_flag: bool, path: Path,
                  pairs: Sequence[tuple[int, int]] = (), axis: Sequence[int] = ()) -> Path:
    """Write an RGB PNG of ``pixels`` ((H, W) uint8 grey) with ``landmarks_px`` ((K, 2), original
    pixels) drawn in red when ``qc_flag`` else green, each of ``pairs`` joined by a line and the
    landmarks of ``axis`` by a polyline. The file is written beside ``path`` and renamed into
    place, so a reader never sees half a PNG. Returns ``path``."""
    image = np.asarray(pixels)
    points = np.asarray(landmarks_px, dtype=float)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected (H, W) uint8 pixels, got {image.shape} {image.dtype}")
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"expected landmarks (K, 2), got {points.shape}")
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    colour = FLAGGED_COLOUR if qc_flag else PASSED_COLOUR
    height, width = image.shape
    radius = max(2.0, min(width, height) / 120)
    line = max(1, round(radius / 2))
    finite = np.isfinite(points).all(axis=1)

    for a, b in pairs:
        if finite[a] and finite[b]:
            draw.line([tuple(points[a]), tuple(points[b])], fill=colour, width=line)
    polyline = [tuple(points[i]) for i in axis if finite[i]]
    if len(polyline) > 1:
        draw.line(polyline, fill=colour, width=line)
    for x, y in points[finite]:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline=(0, 0, 0))

    return write_atomic(Path(path), lambda handle: canvas.save(handle, format="PNG"))
