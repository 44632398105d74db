"""Image size limits shared by every reader, checked on the header before any pixel is decoded.

A header can claim any size: a 20000 x 20000 PNG is a few hundred bytes on disk and 400 MB
once decoded. Every reader (PNG, JPEG, DICOM) calls ``check_image_size`` with the size its
header declares and only then decodes.
"""

from __future__ import annotations

from medq.common.inference.types import StudyError

MIN_SIDE = 32  # px: smaller is not a radiograph (icons, thumbnails, 1x1 tracking pixels)
MAX_SIDE = 16384  # px on either side
MAX_PIXELS = 100_000_000  # width x height; a 10000 x 10000 detector image still passes


def check_image_size(width: int, height: int) -> None:
    """Raise StudyError when a declared (width, height) in pixels is outside the limits."""
    width, height = int(width), int(height)
    if min(width, height) < MIN_SIDE:
        raise StudyError(f"image too small ({width}x{height}; minimum {MIN_SIDE}x{MIN_SIDE})")
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise StudyError(f"image too large ({width}x{height}; maximum {MAX_SIDE} px a side "
                         f"and {MAX_PIXELS:,} pixels)")
