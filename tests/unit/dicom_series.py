"""Helpers of the DICOM output tests: a real CT series' headers, an algorithm, strict writing."""

from __future__ import annotations

import contextlib

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medq.common.inference.dicom_outputs import Algorithm, header_of

ALGORITHM = Algorithm(family="segment", title="CT lesion UNet++", version="0.1.0", model_job="42",
                      checkpoint_sha256="0123456789abcdef" * 4)


def ct_headers(folder, n: int = 5, gap_mm: float = 2.5, size: int | None = None) -> list[pydicom.Dataset]:
    """n slices of pydicom's CT_small (a real CT file, 128x128, its header saying 5 mm between
    slices) at z = k * gap_mm, written as files and read back header-only (``header_of``), in
    slice order. ``size``: Rows = Columns = size with matching pixel data (a larger series)."""
    series_uid = generate_uid()
    headers = []
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
        ds.ImagePositionPatient = [0.0, 0.0, k * gap_mm]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.InstanceNumber = k + 1
        if size is not None:
            ds.Rows = ds.Columns = size
            ds.PixelData = np.zeros((size, size), dtype=np.int16).tobytes()
        path = folder / f"slice{k:03d}.dcm"
        ds.save_as(path)
        headers.append(header_of(path.read_bytes()))
    return headers


def fixed_labels(n: int, rows: int = 128, columns: int = 128, seed: int = 7) -> np.ndarray:
    """Random but fixed class indices (S, H, W), every class on every slice."""
    return np.random.default_rng(seed).integers(0, 4, size=(n, rows, columns)).astype(np.uint8)


@contextlib.contextmanager
def strict_writing():
    """pydicom raises on any invalid value while writing (and the setting is put back after)."""
    settings = pydicom.config.settings
    before = settings.writing_validation_mode
    settings.writing_validation_mode = pydicom.config.RAISE
    try:
        yield
    finally:
        settings.writing_validation_mode = before
