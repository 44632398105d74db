"""Opening a training dataset's files safely: regular files only, images checked on their header
before they are decoded, text read as UTF-8 with the line of any bad byte named.

A FIFO named ``images_x.npy`` or ``landmarks.csv`` would block the submitter forever on open; a
30000 x 30000 PNG is a few kilobytes on disk and gigabytes decoded. Every dataset reader goes
through here, and each problem comes back as a sentence that names the file (the caller adds
the row or line it belongs to). Torch-free.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from PIL import Image

MAX_TRAINING_PIXELS = 100_000_000  # width x height; the DICOM and archive readers use the same cap


def not_regular(path: Path) -> str | None:
    """Why ``path`` is not a regular file to read (missing, a folder, a pipe, socket or device);
    None when it is one. Symlinks are followed."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if stat.S_ISDIR(info.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a pipe, socket or device)"
    return None


def decoded_image_size(path: Path) -> tuple[int, int] | str:
    """(width, height) after a full decode (a truncated file fails here, not at training time),
    or the reason the image cannot be used. The size is checked on the header first."""
    problem = not_regular(path)
    if problem:
        return problem
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_TRAINING_PIXELS:
                return (f"image too large ({width} x {height} px; at most {MAX_TRAINING_PIXELS:,} pixels "
                        f"are decoded)")
            image.load()
            return image.size
    except Image.DecompressionBombError as exc:  # Pillow's own header check came first
        return f"image too large ({str(exc).split(',')[0]}; at most {MAX_TRAINING_PIXELS:,} pixels are decoded)"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"cannot be decoded ({exc})"


def read_text(path: Path) -> tuple[str | None, str | None]:
    """(text, None), or (None, the reason it cannot be read): not a regular file, unreadable, or a
    byte that is not UTF-8 (with its line). A byte-order mark is dropped."""
    problem = not_regular(path)
    if problem:
        return None, problem
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or type(exc).__name__})"
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        return None, f"line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 text (save the file as UTF-8)"
