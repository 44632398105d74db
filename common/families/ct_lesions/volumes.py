"""CT studies of an inference archive: which files make one volume, and the volume in HU.

A study is either
- one ``.npy`` file: (S, H, W), (S, H, W, 1) or (H, W) float Hounsfield units (no spacing),
- one NIfTI file (``.nii``, ``.nii.gz``): HU as stored, orientation and spacing from its affine
  (``nifti.py``), or
- one DICOM series: every image file of the archive with the same Study and Series Instance
  UIDs, grouped while planning from the headers alone, and sorted into a volume when decoded
  (by the slice position along the plane's normal, else by instance number).

A study's key in the store (``Study.path``) is the .npy file's archive path, or ``series:``
followed by the JSON list of the series' file paths. Nothing here logs a path or a header value.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from medq.common.families.ct_lesions.nifti import is_nifti, read_nifti
from medq.common.inference.limits import check_image_size
from medq.common.inference.types import Entry, SkippedEntry, StudyError, StudySkipped

SERIES_PREFIX = "series:"
NPY_SUFFIX = ".npy"


@dataclass(frozen=True)
class CTVolume:
    hu: np.ndarray  # (S, H, W) float32, slices in order
    spacing_mm: tuple[float, float, float] | None  # (slice, row, column) mm; None when unknown
    source_format: str  # "npy" | "dicom" | "nifti"
    uids: dict[str, str] = field(default_factory=dict)
    slice_uids: tuple[str, ...] = ()  # a series' SOPInstanceUIDs in the volume's slice order
    grid: Any = None  # a NIfTI source's voxel grid (nifti.NiftiGrid): its mask is written back into it
    headers: tuple[Any, ...] = ()  # a DICOM series' slice datasets without pixels, in slice order (for a SEG)


def plan_ct_studies(archive: Any) -> Iterator[Entry | SkippedEntry]:
    """Each .npy file, then each DICOM series (one entry, ``path`` its key); other files come back
    as SkippedEntry with the reason (skipped: not a CT volume; failed: a broken DICOM file)."""
    series: dict[tuple[str, str], list[str]] = {}
    from medq.common.inference.dicom import series_key

    known = getattr(archive, "series_of", None)  # a PACS names each instance's series: nothing is read
    for entry in archive.entries():
        if isinstance(entry, SkippedEntry):
            yield entry
        elif entry.path.lower().endswith(NPY_SUFFIX) or is_nifti(entry.path):
            yield entry
        else:
            try:
                key = known(entry.path) if known else series_key(archive.read(entry.path))
            except StudySkipped as exc:
                yield SkippedEntry(entry.path, str(exc), "skipped")
                continue
            except StudyError as exc:
                if str(exc).startswith("unrecognised file format"):
                    yield SkippedEntry(entry.path, "not a CT volume (.npy, .nii, .nii.gz) or a DICOM slice",
                                       "skipped")
                else:
                    yield SkippedEntry(entry.path, str(exc))
                continue
            series.setdefault(key, []).append(entry.path)
    for _, paths in sorted(series.items()):
        key = SERIES_PREFIX + json.dumps(sorted(paths))
        yield Entry(key, len(paths))


def load_ct_volume(archive: Any, key: str) -> CTVolume:
    """The volume of a study key (see the module). Raises StudyError with a reason free of paths."""
    if key.startswith(SERIES_PREFIX):
        return _dicom_series(archive, json.loads(key[len(SERIES_PREFIX):]))
    if is_nifti(key):
        hu, spacing, grid = read_nifti(archive.read(key))
        return CTVolume(hu, spacing, "nifti", grid=grid)
    return _npy(archive.read(key))


def _npy(data: bytes) -> CTVolume:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise StudyError(f"not a readable .npy array ({type(exc).__name__})") from None
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or min(array.shape) < 1 or not np.issubdtype(array.dtype, np.number):
        raise StudyError(f"a .npy volume must be (S, H, W) HU numbers, got {array.dtype} {array.shape}")
    check_image_size(array.shape[2], array.shape[1])  # an (H, W, 3) picture is not S slices of W x 3
    hu = array.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(hu).reshape(len(hu), -1).all(axis=1))
    if len(bad):
        raise StudyError(f"NaN or infinite values in slice(s) {', '.join(str(int(i)) for i in bad[:5])}")
    return CTVolume(hu, None, "npy")


def _dicom_series(archive: Any, paths: list[str]) -> CTVolume:
    from medq.common.inference.dicom import decode_ct_slice

    slices = []
    for k, path in enumerate(paths):
        try:
            slices.append(decode_ct_slice(archive.read(path)))
        except StudyError as exc:
            raise StudyError(f"slice {k + 1} of {len(paths)}: {exc}") from None
        except OSError as exc:
            raise StudyError(f"slice {k + 1} of {len(paths)}: cannot be read ({type(exc).__name__})") from None
    shapes = {s["hu"].shape for s in slices}
    if len(shapes) > 1:
        raise StudyError(f"the series mixes slice sizes {sorted(shapes)}")
    _check_orientation(slices)
    order, gap = _slice_order(slices)
    spacing = slices[0]["spacing_mm"]
    thickness = gap or slices[0]["thickness"]
    uids = {k: v for k, v in slices[0]["uids"].items() if k != "SOPInstanceUID"}
    return CTVolume(np.stack([slices[k]["hu"] for k in order]),
                    None if spacing is None or thickness is None else (thickness, *spacing), "dicom", uids,
                    tuple(slices[k]["uids"].get("SOPInstanceUID", "") for k in order),
                    headers=tuple(slices[k]["header"] for k in order))


def _check_orientation(slices: list[dict]) -> None:
    """One volume needs one slice plane: a series mixing orientations (a scout in the series, a
    reformat) cannot be stacked."""
    planes = [s["orientation"] for s in slices if s.get("orientation") is not None]
    if planes and any(not np.allclose(p, planes[0], atol=1e-3) for p in planes[1:]):
        odd = next(k for k, s in enumerate(slices) if s.get("orientation") is not None
                   and not np.allclose(s["orientation"], planes[0], atol=1e-3))
        raise StudyError(f"the series mixes slice orientations (slice {odd + 1} of {len(slices)} lies in another "
                         "plane): cannot build one volume")


def _slice_order(slices: list[dict]) -> tuple[list[int], float | None]:
    """(order, slice gap in mm or None): by position along the normal when every slice has both,
    else by instance number, else as listed."""
    if all(s["position"] is not None and s["normal"] is not None for s in slices):
        along = np.array([float(np.dot(s["position"], slices[0]["normal"])) for s in slices])
        order = [int(k) for k in np.argsort(along, kind="stable")]
        gaps = np.diff(along[order])
        if len(gaps) and np.isclose(gaps, 0, atol=1e-3).any():
            raise StudyError("two slices of the series share a position (a repeated acquisition?): "
                             "cannot build one volume")
        step = float(np.median(gaps)) if len(gaps) else 0.0
        holes = np.flatnonzero(gaps > 1.5 * step) if step > 0 else []
        if len(holes):
            k = int(holes[0])
            raise StudyError(f"slices missing from the series: {gaps[k]:.2f} mm between slices {k + 1} and {k + 2} "
                             f"(sorted by position) where the series steps {step:.2f} mm")
        return order, (step if step > 0 else None)
    if all(s["instance"] is not None for s in slices):
        return sorted(range(len(slices)), key=lambda k: slices[k]["instance"]), None
    return list(range(len(slices))), None
