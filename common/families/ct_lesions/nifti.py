"""NIfTI CT volumes (``.nii``, ``.nii.gz``) as studies, and masks written back in the source's
own voxel grid (nibabel).

A volume is read as stored (HU after the header's scaling), turned to the closest canonical
orientation (RAS+), then cut into axial slices drawn as DICOM draws them (row 0 anterior, column
0 the patient's right; slices inferior to superior), the orientation the model was trained on;
its spacing is taken from the affine. A mask is turned back to the source's
voxel order and saved with the source's affine and header, so it overlays the image in any
viewer (3D Slicer, ITK-SNAP). Reasons name no path.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medq.common.inference.limits import check_image_size
from medq.common.inference.types import StudyError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MAX_SLICES = 4096


def is_nifti(path: str) -> bool:
    return path.lower().endswith(NIFTI_SUFFIXES)


@dataclass(frozen=True)
class NiftiGrid:
    """What writing a mask back into the source's grid needs."""

    affine: np.ndarray  # (4, 4) of the source
    orientation: np.ndarray  # nibabel orientation of the source's voxel axes (io_orientation)
    shape: tuple[int, int, int]  # the source's voxel shape (i, j, k)


def read_nifti(data: bytes) -> tuple[np.ndarray, tuple[float, float, float], NiftiGrid]:
    """(HU (S, H, W) float32 in canonical slice order, (slice, row, column) spacing mm, grid)."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, io_orientation

    try:
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        image = nib.Nifti1Image.from_bytes(raw)
    except Exception as exc:  # nibabel raises several types for a bad header or a short file
        raise StudyError(f"not a readable NIfTI volume ({type(exc).__name__})") from None
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise StudyError("the NIfTI affine is not invertible: its voxels have no place in space")
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 or min(shape) < 1:
        raise StudyError(f"a NIfTI CT volume must be 3-D, got shape {tuple(image.shape)}")
    orientation = io_orientation(affine)
    x, y, z = (shape[i] for i in orientation[:, 0].astype(int).argsort())  # sizes along R, A, S
    check_image_size(x, y)  # on the header, before a voxel is decoded
    if z > MAX_SLICES:
        raise StudyError(f"{z} slices: more than {MAX_SLICES} in one volume")
    try:
        voxels = np.asarray(image.dataobj, dtype=np.float32).reshape(shape)
    except Exception as exc:
        raise StudyError(f"the NIfTI voxels cannot be read ({type(exc).__name__})") from None
    canonical = apply_orientation(voxels, orientation)  # (x R, y A, z S)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))[orientation[:, 0].astype(int).argsort()]
    # slices along z (inferior to superior), each as a DICOM axial image is drawn: row 0 anterior,
    # column 0 the patient's right
    hu = np.ascontiguousarray(np.transpose(canonical, (2, 1, 0))[:, ::-1, ::-1])
    bad = np.flatnonzero(~np.isfinite(hu).reshape(len(hu), -1).all(axis=1))
    if len(bad):
        raise StudyError(f"NaN or infinite voxels in slice(s) {', '.join(str(int(i)) for i in bad[:5])}")
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    return hu, spacing, NiftiGrid(affine, orientation, tuple(int(n) for n in shape))


def to_source_grid(labels: np.ndarray, grid: NiftiGrid) -> np.ndarray:
    """Labels (S, H, W) in the order ``read_nifti`` gave the volume, back in the source's voxel order."""
    from nibabel.orientations import apply_orientation, ornt_transform

    canonical = np.transpose(labels[:, ::-1, ::-1], (2, 1, 0))  # back to (x, y, z) RAS+
    ras = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    return apply_orientation(canonical, ornt_transform(ras, grid.orientation))


def write_mask(path: Path, labels: np.ndarray, grid: NiftiGrid) -> Path:
    """The mask as uint8 class indices in the source's grid, with its affine (gzip-compressed)."""
    import nibabel as nib

    from medq.common.atomic_files import write_atomic

    mask = np.ascontiguousarray(to_source_grid(labels, grid).astype(np.uint8))
    if mask.shape != grid.shape:
        raise StudyError(f"the mask came out {mask.shape}, not the source's {grid.shape}")
    image = nib.Nifti1Image(mask, grid.affine)
    image.set_qform(grid.affine, code=1)
    image.set_sform(grid.affine, code=1)
    data = gzip.compress(image.to_bytes(), compresslevel=6)
    return write_atomic(Path(path), lambda handle: handle.write(data), needed=len(data))
