"""NIfTI CT volumes (``.nii``, ``.nii.gz``) as studies, and masks written back in the source's
own voxel grid (nibabel).

A volume is read as stored (HU after the header's scaling), turned to the closest canonical
orientation (RAS+), then cut into axial slices drawn as DICOM draws them (row 0 anterior, column
0 the patient's right; slices inferior to superior), the orientation the model was trained on;
its spacing is taken from the affine. A mask is turned back to the source's
voxel order and saved with the source's affine and header, so it overlays the image in any
viewer (3D Slicer, ITK-SNAP). Training on NIfTI pairs (``nifti_pairs.py``) cuts its slices with
the same functions (``open_nifti``, ``nifti_grid``, ``canonical_slices``), so a model sees one
orientation in training and in inference. Reasons name no path.
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


def open_nifti(source: bytes | Path):
    """The parsed NIfTI image, its voxels not yet decoded: from a file's bytes (gzip or not), or
    from a path (``.nii.gz`` decompressed as it is read)."""
    import nibabel as nib

    try:
        if isinstance(source, (bytes, bytearray)):
            raw = gzip.decompress(source) if source[:2] == b"\x1f\x8b" else source
            return nib.Nifti1Image.from_bytes(raw)
        return nib.Nifti1Image.from_filename(str(source))
    except Exception as exc:  # nibabel raises several types for a bad header or a short file
        raise StudyError(f"not a readable NIfTI volume ({type(exc).__name__})") from None


def nifti_grid(image) -> NiftiGrid:
    """The voxel grid from the header alone: refused when the affine is not invertible, the volume
    is not 3-D, or too large."""
    from nibabel.orientations import io_orientation

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
    return NiftiGrid(affine, orientation, tuple(int(n) for n in shape))


def canonical_slices(image, grid: NiftiGrid) -> np.ndarray:
    """The voxels (after the header's scaling) as float32 (S, H, W) axial slices, inferior to
    superior, each drawn as a DICOM axial image is: row 0 anterior, column 0 the patient's right."""
    from nibabel.orientations import apply_orientation

    try:
        voxels = np.asarray(image.dataobj, dtype=np.float32).reshape(grid.shape)
    except Exception as exc:
        raise StudyError(f"the NIfTI voxels cannot be read ({type(exc).__name__})") from None
    canonical = apply_orientation(voxels, grid.orientation)  # (x R, y A, z S)
    return np.ascontiguousarray(np.transpose(canonical, (2, 1, 0))[:, ::-1, ::-1])


def slice_spacing(grid: NiftiGrid) -> tuple[float, float, float]:
    """(slice, row, column) spacing in mm of the canonical slices."""
    zooms = np.sqrt((grid.affine[:3, :3] ** 2).sum(axis=0))[grid.orientation[:, 0].astype(int).argsort()]
    return float(zooms[2]), float(zooms[1]), float(zooms[0])


def stored_slice_axis(grid: NiftiGrid, slices: np.ndarray) -> tuple[str, np.ndarray]:
    """The file's own voxel axis ("i", "j" or "k") the canonical slices run along, and the index
    along it of each canonical slice: how a viewer showing the file's voxels finds a slice."""
    axis = int(np.flatnonzero(grid.orientation[:, 0] == 2)[0])
    flipped = grid.orientation[axis, 1] < 0
    slices = np.asarray(slices)
    return "ijk"[axis], (grid.shape[axis] - 1 - slices) if flipped else slices


def nonfinite_slices(hu: np.ndarray) -> np.ndarray:
    """Indices of the slices of (S, H, W) holding a NaN or an infinity."""
    return np.flatnonzero(~np.isfinite(hu).reshape(len(hu), -1).all(axis=1))


def read_nifti(data: bytes) -> tuple[np.ndarray, tuple[float, float, float], NiftiGrid]:
    """(HU (S, H, W) float32 in canonical slice order, (slice, row, column) spacing mm, grid)."""
    image = open_nifti(data)
    grid = nifti_grid(image)
    hu = canonical_slices(image, grid)
    bad = nonfinite_slices(hu)
    if len(bad):
        raise StudyError(f"NaN or infinite voxels in slice(s) {', '.join(str(int(i)) for i in bad[:5])}")
    return hu, slice_spacing(grid), grid


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
