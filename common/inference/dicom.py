"""One DICOM file to a display-ready 8-bit greyscale image, with pydicom.

The pipeline, in order:

1. the header is read without the pixel data (``stop_before_pixels``); the declared size
   (Rows x Columns) is checked against the shared limits and multi-frame objects are refused,
   before any pixel byte is copied or decoded;
2. the whole file is read; an object without pixel data (a structured report, an RT structure
   set, a key-object selection) is skipped, not failed;
3. a compressed transfer syntax is decoded when pydicom has a decoder plugin for it (Pillow
   gives JPEG baseline and JPEG 2000; JPEG-LS and lossless JPEG need pylibjpeg or gdcm),
   otherwise the study fails with the syntax's name;
4. monochrome: the modality LUT or rescale (to HU or the modality's units), then the VOI LUT or
   the first window (centre/width), or the image's own min-max when there is neither; the
   window's (or LUT's) output range is mapped to 0..255; MONOCHROME1 (or a Presentation LUT
   Shape of INVERSE) is inverted so that bright means dense, as in the PNGs a model trains on;
5. colour (RGB, YBR converted to RGB by pydicom, PALETTE COLOR through its palette) becomes
   grey by ITU-R BT.601 luma, the weights Pillow's ``convert("L")`` uses.

Identity: only the Study/Series/SOP Instance UIDs and the modality leave this module, never a
name, an ID, a date or any other attribute. pydicom's warnings (which can quote element values)
are silenced while a file is read.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from contextlib import contextmanager
from io import BytesIO
from typing import Iterator

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medq.common.inference.limits import check_image_size
from medq.common.inference.types import DecodedImage, StudyError, StudySkipped

UID_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
VALID_UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # PS3.5 9.1 (leading zeros, common in the wild, pass)
MAX_UID_LENGTH = 64
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
PREAMBLE_LENGTH = 128
# A file without the 128-byte preamble must start with an element of one of these groups
# (little endian): 0002 (file meta) or 0008 (identifying). Anything else is not sniffed as DICOM.
PREAMBLE_LESS_STARTS = (b"\x02\x00", b"\x08\x00")
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as Pillow's RGB -> L


def has_preamble(head: bytes) -> bool:
    """``DICM`` after the 128-byte preamble: the standard's file format (Part 10)."""
    return head[PREAMBLE_LENGTH:PREAMBLE_LENGTH + 4] == b"DICM"


def may_be_preamble_less(head: bytes) -> bool:
    """A candidate for a file written without preamble (old exporters, raw datasets): it starts
    with a group 0002 or 0008 tag. ``decode_dicom`` then still requires plausible content."""
    return head[:2] in PREAMBLE_LESS_STARTS and len(head) >= 8


def plain_header(read: Dataset) -> Dataset:
    """A header read without pixels as a plain Dataset with its file meta: what the DICOM
    outputs copy from their source. pydicom's FileDataset would keep (and pickle, into and out
    of the loader processes) the whole file's bytes."""
    header = Dataset(read)
    header.file_meta = read.file_meta
    return header


def decode_dicom(data: bytes) -> DecodedImage:
    """The first (only) frame of a DICOM file as (H, W) uint8 greyscale, with spacing and UIDs.

    Raises StudySkipped for objects without pixel data and StudyError for everything that
    cannot be shown (too small or large, multi-frame, no decoder, corrupt pixel data)."""
    with _quiet():
        try:
            return _decode(data)
        except StudyError:
            raise
        except Exception as exc:  # a value pydicom cannot convert: its message would quote the value
            raise StudyError(f"malformed value in the DICOM header ({type(exc).__name__})") from None


def _decode(data: bytes) -> DecodedImage:
    header = _read(data, stop_before_pixels=True)
    _check_header(header)
    ds = _read(data, stop_before_pixels=False)
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        raise StudySkipped(f"no pixel data ({_object_label(ds)})")
    if "Rows" not in ds or "Columns" not in ds:
        raise StudyError("pixel data without Rows/Columns")
    check_image_size(ds.Columns, ds.Rows)
    _check_decoder(ds)
    pixels = to_display(ds, _decode_pixels(ds))
    spacing, source = spacing_and_source(ds)
    return DecodedImage(pixels=pixels, source_format="dicom", spacing_mm=spacing, spacing_source=source,
                        uids=study_uids(ds),
                        modality=str(ds.get("Modality") or "") or None, header=plain_header(header))


# --- reading -----------------------------------------------------------------------------------


@contextmanager
def _quiet() -> Iterator[None]:
    """No pydicom warning or log line while reading: they can quote element values (names)."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _read(data: bytes, stop_before_pixels: bool) -> Dataset:
    preamble = has_preamble(data[:PREAMBLE_LENGTH + 4])
    try:
        ds = dcmread(BytesIO(data), force=not preamble, stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # pydicom raises many types for a broken file; none is ours to pass on
        if not preamble:
            raise StudyError("unrecognised file format (not a DICOM, PNG, JPEG, BMP or TIFF file)") from None
        raise StudyError(f"corrupt DICOM file ({type(exc).__name__})") from None
    if not preamble and not _plausible(ds):
        raise StudyError("unrecognised file format (not a DICOM, PNG, JPEG, BMP or TIFF file)")
    return ds


def _plausible(ds: Dataset) -> bool:
    """A force-parsed file is taken as DICOM only if it names its SOP class or has image geometry
    (random bytes parsed with force=True give a few junk elements, never these)."""
    try:
        return "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)
    except Exception:
        return False


def _object_label(ds: Dataset) -> str:
    """What the object is, for a skip reason: the modality, else the SOP class name."""
    modality = str(ds.get("Modality") or "").strip()
    if modality:
        return modality
    sop_class = ds.get("SOPClassUID")
    return UID(str(sop_class)).name if sop_class else "unknown object"


def _check_header(header: Dataset) -> None:
    if "Rows" in header and "Columns" in header:
        check_image_size(header.Columns, header.Rows)
    frames = int(header.get("NumberOfFrames") or 1)
    if frames > 1:
        raise StudyError(f"multi-frame image ({frames} frames) is not supported")


def _transfer_syntax(ds: Dataset) -> UID:
    """The file's transfer syntax; for a file without meta information, the encoding pydicom
    found while reading it (stored back, as pixel decoding needs it)."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return UID(str(meta.TransferSyntaxUID))
    implicit, little = ds.original_encoding
    syntax = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = syntax
    return syntax


def _check_decoder(ds: Dataset) -> None:
    syntax = _transfer_syntax(ds)
    if not syntax.is_compressed:
        return
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise StudyError(f"compressed transfer syntax {syntax.name} and no decoder installed")


def _decode_pixels(ds: Dataset) -> np.ndarray:
    syntax = _transfer_syntax(ds)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        if syntax.is_compressed and "plugin" in str(exc).lower():
            # a decoder is installed (_check_decoder) and every one refused these bytes: say why
            reasons = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
            raise StudyError(f"{syntax.name} pixel data that no installed decoder could decode"
                             + (f" ({reasons[0][:200]})" if reasons else "")) from None
        raise StudyError(f"truncated or corrupt pixel data ({type(exc).__name__})") from None
    if arr.shape[:2] != (int(ds.Rows), int(ds.Columns)):
        raise StudyError(f"pixel data of shape {arr.shape} does not match Rows x Columns")
    return arr


# --- pixels to display -------------------------------------------------------------------------


def to_display(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """Decoded stored values (H, W) or (H, W, 3) -> (H, W) uint8, 0 = black, 255 = white."""
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return _luma_to_uint8(rgb, float(np.iinfo(rgb.dtype).max))
    if arr.ndim == 3:
        return _luma_to_uint8(arr, float(2 ** int(ds.get("BitsStored") or 8) - 1))
    values = modality_values(ds, arr)
    shown, low, high = voi_values(ds, values)
    out = scale_to_uint8(shown, low, high)
    inverted = photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape") or "").upper() == "INVERSE"
    return 255 - out if inverted else out


def modality_values(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """Stored values -> modality units (Hounsfield units for CT) by the modality LUT or the
    rescale slope/intercept; unchanged when the file has neither."""
    return apply_modality_lut(arr, ds)


def _has_voi_lut(ds: Dataset) -> bool:
    sequence = ds.get("VOILUTSequence")
    return bool(sequence) and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]


def _has_window(ds: Dataset) -> bool:
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def voi_values(ds: Dataset, values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(values of interest, low, high): after the VOI LUT or the first window, with the output
    range that the LUT or window maps to; without either, the values and their own min-max."""
    if _has_voi_lut(ds):
        stored = np.rint(values).astype(np.int64)  # a VOI LUT indexes by integer input values
        count, first, _ = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
        table = apply_voi_lut(np.arange(first, first + (count or 2**16), dtype=np.int64), ds)
        return apply_voi_lut(stored, ds), float(table.min()), float(table.max())
    if _has_window(ds):
        try:
            # the window's output for inputs far below and far above it: its output range
            low, high = apply_voi_lut(np.array([-np.inf, np.inf]), ds)
            return apply_voi_lut(values, ds), float(low), float(high)
        except (ValueError, TypeError):  # a width < 1, an unknown VOI function: the image's own range
            pass
    return values, float(np.min(values)), float(np.max(values))


def scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear map of [low, high] to [0, 255], clipped and rounded; all 0 when low == high."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.asarray(values, dtype=np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _luma_to_uint8(rgb: np.ndarray, full_scale: float) -> np.ndarray:
    luma = rgb[..., :3].astype(np.float64) @ LUMA_WEIGHTS
    return scale_to_uint8(luma, 0.0, full_scale)


# --- what leaves this module besides pixels ----------------------------------------------------


def spacing_mm(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm per pixel from PixelSpacing, else ImagerPixelSpacing; a value
    that is missing, not two numbers, zero or negative does not count (RG1_UNCR stores 0.000)."""
    return spacing_and_source(ds)[0]


def spacing_and_source(ds: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """The spacing and the attribute it came from ("PixelSpacing", "ImagerPixelSpacing"): the
    first is in the patient's plane, the second at the detector (a projection radiograph's
    magnification is not taken out), so a reader of the millimetres needs to know which."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, column = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if all(math.isfinite(v) and v > 0 for v in (row, column)):
            return (row, column), keyword
    return None, None


def study_uids(ds: Dataset) -> dict[str, str]:
    """The Study, Series and SOP Instance UIDs that are present and well formed (digits and dots,
    at most 64 characters: anything else in a UID field could be any text, a name included);
    nothing else of the header."""
    found = {key: str(ds.get(key) or "").strip() for key in UID_KEYS}
    return {key: value for key, value in found.items() 
            if len(value) <= MAX_UID_LENGTH and VALID_UID.fullmatch(value)}


# --- CT series (the segmentation family) -------------------------------------------------------


def series_key(data: bytes) -> tuple[str, str]:
    """(StudyInstanceUID, SeriesInstanceUID) of a DICOM CT image file, from its header alone.
    Raises StudySkipped for an object without an image or of another modality, StudyError for a file that is not a
    readable DICOM image or carries no valid series UID."""
    with _quiet():
        try:
            header = _read(data, stop_before_pixels=True)
            if "Rows" not in header or "Columns" not in header:
                raise StudySkipped(f"no image ({_object_label(header)})")
            modality = str(header.get("Modality") or "").strip().upper()
            if modality and modality != "CT":
                raise StudySkipped(f"modality {modality}, not CT")
            uids = study_uids(header)
        except StudyError:
            raise
        except Exception as exc:
            raise StudyError(f"malformed value in the DICOM header ({type(exc).__name__})") from None
    if "SeriesInstanceUID" not in uids:
        raise StudyError("no valid SeriesInstanceUID: cannot tell which series the slice belongs to")
    return uids.get("StudyInstanceUID", ""), uids["SeriesInstanceUID"]


def decode_ct_slice(data: bytes) -> dict:
    """One slice of a CT series in Hounsfield units (the modality LUT / rescale, no window):
    ``hu`` (H, W) float32, ``spacing_mm`` (row, column) or None, ``position`` (3,) mm and
    ``normal`` (3,) of the slice plane when the header gives them, ``instance`` number or None,
    ``thickness`` mm or None, and ``uids``."""
    with _quiet():
        try:
            header = _read(data, stop_before_pixels=True)
            _check_header(header)
            ds = _read(data, stop_before_pixels=False)
            if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
                raise StudySkipped(f"no pixel data ({_object_label(ds)})")
            check_image_size(ds.Columns, ds.Rows)
            _check_decoder(ds)
            arr = _decode_pixels(ds)
            if arr.ndim != 2:
                raise StudyError(f"a colour image ({ds.get('PhotometricInterpretation')}) is not a CT slice")
            hu = np.asarray(modality_values(ds, arr), dtype=np.float32)
            position = _floats(ds.get("ImagePositionPatient"), 3)
            orientation = _floats(ds.get("ImageOrientationPatient"), 6)
            normal = None if orientation is None else np.cross(orientation[:3], orientation[3:])
            instance = ds.get("InstanceNumber")
            thickness = _floats(ds.get("SpacingBetweenSlices"), 1)  # the gap, where it differs from thickness
            if thickness is None or thickness[0] <= 0:
                thickness = _floats(ds.get("SliceThickness"), 1)
            return {"hu": hu, "spacing_mm": spacing_mm(ds), "position": position, "normal": normal,
                    "instance": None if instance in (None, "") else int(instance),
                    "thickness": None if thickness is None or thickness[0] <= 0 else float(thickness[0]),
                    "uids": study_uids(ds), "orientation": orientation, "header": plain_header(header)}
        except StudyError:
            raise
        except Exception as exc:
            raise StudyError(f"malformed value in the DICOM header ({type(exc).__name__})") from None


def _floats(value, n: int) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in (value if n > 1 else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return values if values.shape == (n,) and np.isfinite(values).all() else None
