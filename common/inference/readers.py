"""Bytes of one study file -> a display-ready greyscale image, the reader chosen by content.

File names in hospital exports say nothing reliable (DICOM files often have no extension, or a
number for a name), so a reader is picked from a registry by sniffing the first bytes: PNG
(``\\x89PNG``), JPEG (``\\xff\\xd8\\xff``), BMP (``BM`` and a known DIB header size; the ISBI
cephalograms are BMP), TIFF (``II*\\0`` / ``MM\\0*``), DICOM (``DICM`` at offset 128, or a
preamble-less dataset with plausible tags). Anything else fails the study with "unrecognised file format".

PNG, JPEG, BMP and TIFF: the header is parsed by Pillow's format plugin directly (not ``Image.open``, whose
decompression-bomb check would raise before ours and without the size), the declared size is
checked against ``common.inference.limits``, and only then are the pixels decoded. The result is
8-bit grey: 16-bit and 32-bit grey scaled by the image's own range, colour by BT.601 luma.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Callable

import numpy as np
from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

from medq.common.inference import dicom
from medq.common.inference.limits import MAX_PIXELS, MAX_SIDE, MIN_SIDE, check_image_size
from medq.common.inference.types import DecodedImage, StudyError
from medq.common.registry import Registry

__all__ = ["decode_image", "sniff_format", "READERS", "MAX_PIXELS", "MAX_SIDE", "MIN_SIDE"]

SNIFF_BYTES = 132  # enough for every magic: DICM sits at 128..131


@dataclass(frozen=True)
class Reader:
    sniff: Callable[[bytes], bool]  # the first SNIFF_BYTES bytes -> is this my format?
    decode: Callable[[bytes], DecodedImage]


READERS: Registry[Reader] = Registry("image reader")


def sniff_format(data: bytes) -> str | None:
    """The name of the reader whose magic bytes match, or None."""
    head = data[:SNIFF_BYTES]
    return next((name for name in READERS if READERS.get(name).sniff(head)), None)


def decode_image(data: bytes) -> DecodedImage:
    """Decode one study file; StudyError (or StudySkipped) names what is wrong, never the file."""
    if not data:
        raise StudyError("empty file")
    name = sniff_format(data)
    if name is None:
        raise StudyError("unrecognised file format (not a DICOM, PNG, JPEG, BMP or TIFF file)")
    return READERS.get(name).decode(data)


# --- PNG and JPEG through Pillow ---------------------------------------------------------------


def _decode_with_pillow(data: bytes, image_class: type, source_format: str) -> DecodedImage:
    try:
        image = image_class(BytesIO(data))  # parses the header only
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error):
        raise StudyError("truncated or corrupt image") from None
    check_image_size(*image.size)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error):
        raise StudyError("truncated or corrupt image") from None
    return DecodedImage(pixels=to_grey_uint8(image), source_format=source_format)


def to_grey_uint8(image: Image.Image) -> np.ndarray:
    """(H, W) uint8: 8-bit grey as is; 16/32-bit grey and float scaled by the image's own min-max
    (a 12-bit radiograph stored in a 16-bit PNG fills 0..255); colour and palette by BT.601 luma."""
    if image.mode == "L":
        return np.asarray(image, dtype=np.uint8).copy()
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image).astype(np.float64)
        low, high = float(values.min()), float(values.max())
        return dicom.scale_to_uint8(values, low, high)
    return np.asarray(image.convert("L"), dtype=np.uint8).copy()


READERS.register("png")(Reader(
    sniff=lambda head: head.startswith(b"\x89PNG\r\n\x1a\n"),
    decode=lambda data: _decode_with_pillow(data, PngImagePlugin.PngImageFile, "png"),
))
READERS.register("jpeg")(Reader(
    sniff=lambda head: head.startswith(b"\xff\xd8\xff"),
    decode=lambda data: _decode_with_pillow(data, JpegImagePlugin.JpegImageFile, "jpeg"),
))
READERS.register("dicom")(Reader(
    sniff=lambda head: dicom.has_preamble(head) or dicom.may_be_preamble_less(head),
    decode=dicom.decode_dicom,
))


BMP_DIB_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}


def _is_bmp(head: bytes) -> bool:
    return (head.startswith(b"BM") and len(head) >= 18 and int.from_bytes(head[14:18], "little") in BMP_DIB_HEADER_SIZES
            and not dicom.has_preamble(head))


READERS.register("bmp")(Reader(
    sniff=_is_bmp,
    decode=lambda data: _decode_with_pillow(data, BmpImagePlugin.BmpImageFile, "bmp"),
))
READERS.register("tiff")(Reader(
    sniff=lambda head: head.startswith((b"II*\x00", b"MM\x00*")),
    decode=lambda data: _decode_with_pillow(data, TiffImagePlugin.TiffImageFile, "tiff"),
))
