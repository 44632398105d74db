"""NIfTI CT volumes as studies (nibabel files written here): slices drawn as DICOM draws them
whatever the file's voxel order, spacing from the affine, masks written back into the source's
own grid with its affine, and every bad file failing alone with a reason."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from medq.common.families.ct_lesions.nifti import read_nifti, to_source_grid, write_mask
from medq.common.families.ct_lesions.volumes import load_ct_volume, plan_ct_studies
from medq.common.inference.archive import open_archive
from medq.common.inference.types import Entry, StudyError

# voxel axes i, j, k stored as an LPS scanner writes them: i toward the patient's left, j toward
# posterior, k toward superior (x and y of RAS+ decrease along i and j)
LPS = np.array([[-0.7, 0, 0, 120.0], [0, -0.8, 0, 90.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])


def _volume(shape=(48, 40, 8), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(-700, 200, shape).astype(np.float32)


def _nifti_bytes(voxels: np.ndarray, affine: np.ndarray, compress: bool = True) -> bytes:
    data = nib.Nifti1Image(voxels, affine).to_bytes()
    return gzip.compress(data) if compress else data


def _singular_bytes() -> bytes:
    """A file whose sform squashes one voxel axis to nothing (nibabel will not write such a qform)."""
    image = nib.Nifti1Image(_volume(), None)
    image.set_sform(np.diag([0.7, 0.0, 2.5, 1.0]), code=1)
    image.set_qform(None, code=0)
    return gzip.compress(image.to_bytes())


def test_slices_are_drawn_as_dicom_draws_them_whatever_the_voxel_order():
    voxels = _volume()
    voxels[0, 0, 0] = 3000.0  # the most right (x largest), most anterior, most inferior voxel
    hu, spacing, grid = read_nifti(_nifti_bytes(voxels, LPS))
    assert hu.shape == (8, 40, 48) and spacing == pytest.approx((2.5, 0.8, 0.7))
    assert hu[0, 0, 0] == 3000.0  # slice 0 inferior, row 0 anterior, column 0 the patient's right
    assert grid.shape == (48, 40, 8)
    # the same anatomy stored with its axes permuted and flipped: (superior, right, anterior)
    stored = np.ascontiguousarray(np.transpose(voxels[::-1, ::-1, :], (2, 0, 1)))
    corner = LPS[:3, :3] @ np.array([47, 39, 0]) + LPS[:3, 3]  # the voxel that is now (0, 0, 0)
    other = np.array([[0, 0.7, 0, corner[0]], [0, 0, 0.8, corner[1]], [2.5, 0, 0, corner[2]], [0, 0, 0, 1]])
    hu2, spacing2, grid2 = read_nifti(_nifti_bytes(stored, other, compress=False))
    assert spacing2 == pytest.approx(spacing) and (hu2 == hu).all()
    assert (to_source_grid((hu2 > 0).astype(np.uint8), grid2) == (stored > 0)).all()


def test_a_mask_goes_back_into_the_source_grid_with_its_affine(tmp_path):
    voxels = _volume()
    voxels[5:12, 3:9, 2:5] = 40.0  # a block of soft tissue
    hu, _, grid = read_nifti(_nifti_bytes(voxels, LPS))
    labels = (hu > 0).astype(np.uint8)  # what a model would mark, in the slices it was given
    assert (to_source_grid(labels, grid) == (voxels > 0)).all()
    written = write_mask(tmp_path / "masks" / "7.nii.gz", labels, grid)
    back = nib.load(written)
    assert back.shape == voxels.shape and np.allclose(back.affine, LPS)
    assert back.get_data_dtype() == np.uint8 and (np.asarray(back.dataobj) == (voxels > 0)).all()


@pytest.mark.parametrize("make, reason", [
    (_singular_bytes, "affine is not invertible"),
    (lambda: _nifti_bytes(np.where(np.arange(48 * 40 * 8).reshape(48, 40, 8) == 77, np.nan, _volume()), LPS),
     "NaN or infinite voxels"),
    (lambda: _nifti_bytes(_volume((4, 4, 3, 2)), LPS), "must be 3-D"),
    (lambda: b"\x1f\x8b" + b"not a gzip stream at all", "not a readable NIfTI"),
    (lambda: b"garbage" * 100, "not a readable NIfTI"),
])
def test_a_bad_nifti_is_refused_with_its_reason(make, reason):
    with pytest.raises(StudyError, match=reason):
        read_nifti(make())


def test_nifti_files_are_studies_of_an_archive_beside_npy_and_others(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(_nifti_bytes(_volume(), LPS))
    (tmp_path / "b.nii").write_bytes(_nifti_bytes(_volume(seed=1), LPS, compress=False))
    (tmp_path / "bad.nii.gz").write_bytes(_singular_bytes())
    np.save(tmp_path / "c.npy", _volume((8, 40, 48)))
    archive = open_archive(tmp_path)
    planned = {e.path for e in plan_ct_studies(archive) if isinstance(e, Entry)}
    assert planned == {"a.nii.gz", "b.nii", "bad.nii.gz", "c.npy"}
    volume = load_ct_volume(archive, "a.nii.gz")
    assert volume.source_format == "nifti" and volume.hu.shape == (8, 40, 48) and volume.grid is not None
    assert load_ct_volume(archive, "c.npy").grid is None
    with pytest.raises(StudyError, match="not invertible"):  # fails alone, when its chunk decodes it
        load_ct_volume(archive, "bad.nii.gz")


@pytest.mark.slow
def test_a_trained_segmenter_writes_a_nifti_study_s_mask_in_its_grid(tmp_path):
    """Through the one chunk loop: a NIfTI study and a broken one; the mask file opens with the
    source's affine and shape, and the broken study fails alone with its reason."""
    from medq.common.families.registry import family
    from medq.common.inference.chunk import run_chunk
    from medq.common.specs import InferSpec
    from medq.common.training.kit import TrainHooks

    kind = family("segment")
    example = kind.example(tmp_path / "example")
    plan = kind.plan(example.spec, example.data_dir)
    trained = kind.train(example.spec, plan, 0, tmp_path / "member", TrainHooks())
    studies = tmp_path / "studies"
    studies.mkdir()
    voxels = _volume((64, 64, 3))
    (studies / "ct.nii.gz").write_bytes(_nifti_bytes(voxels, LPS))
    (studies / "broken.nii.gz").write_bytes(_singular_bytes())
    out = tmp_path / "out"
    spec = InferSpec(archive=str(studies), checkpoints=(str(trained.checkpoints["best"]),), batch_size=2,
                     out_dir=str(out))
    archive = open_archive(studies)
    items = [(k, entry.path) for k, entry in enumerate(kind.inference.studies(archive))]
    outcomes = []
    predictor = kind.inference.predictor(spec)
    try:
        stats = run_chunk(items, archive, predictor, 0, outcomes.extend)
    finally:
        predictor.close()
    assert (stats.done, stats.failed) == (1, 1)
    by_path = {path: o for (k, path), o in zip(sorted(items), sorted(outcomes, key=lambda o: o.study_id))}
    assert "not invertible" in by_path["broken.nii.gz"].reason
    done = by_path["ct.nii.gz"]
    mask = nib.load(out / done.result["outputs"]["nifti"])
    assert mask.shape == voxels.shape and np.allclose(mask.affine, LPS)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2, 3}
    assert done.result["spacing_mm"] == pytest.approx([2.5, 0.8, 0.7])
    assert done.source_format == "nifti"
