"""Segmentation training data as NIfTI image/label pairs (imagesTr/labelsTr, nnU-Net and MSD):
written here with nibabel from medq's synthetic MedSeg slices, read back as the same slices in
the orientation bulk inference reads, split by case, and every bad pair refused before anything
is queued, naming the file, the case or the slice."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import io_orientation

from medq.common.errors import DataError
from medq.common.families.ct_lesions.data import slice_arrays, split_slices
from medq.common.families.ct_lesions.layouts import read_seg_dataset, ready_sources
from medq.common.families.ct_lesions.nifti import NiftiGrid, read_nifti, to_source_grid
from medq.common.families.ct_lesions.synth import synth_ct
from medq.common.specs import SplitSpec

# i toward the patient's left, j toward posterior, k toward superior, as an LPS scanner writes
LPS = np.array([[-0.7, 0, 0, 120.0], [0, -0.8, 0, 90.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])
N_CASES, PER_CASE, SIZE = 5, 4, 64


def _voxels(slices: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Canonical (S, H, W) slices as the voxels of a file with ``affine`` (nifti.py's inverse)."""
    return to_source_grid(slices, NiftiGrid(affine, io_orientation(affine), (0, 0, 0)))


def _save(path, voxels, affine) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(voxels), affine), path)


def write_case(root, case, hu, classes, affine=LPS, values=lambda c: (c + 1) % 4, image_name=None):
    """One case: HU float32 and labels uint8 (medq class c written as ``values(c)``; by default
    the layout's 0 background, 1 ground glass, 2 consolidation, 3 other lung)."""
    _save(root / "imagesTr" / (image_name or f"{case}_0000.nii.gz"), _voxels(hu, affine).astype(np.float32), affine)
    _save(root / "labelsTr" / f"{case}.nii.gz", _voxels(values(classes), affine).astype(np.uint8), affine)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(HU (N, S, S), medq classes (N, S, S)) of N_CASES volumes of PER_CASE slices."""
    root = tmp_path_factory.mktemp("medseg")
    synth_ct(root, n=N_CASES * PER_CASE, seed=4, size=SIZE, slices_per_volume=PER_CASE)
    return np.load(root / "images_synth.npy")[..., 0], np.load(root / "masks_synth.npy").argmax(-1).astype(np.uint8)


def _case(synthetic, k):
    hu, classes = synthetic
    return hu[k * PER_CASE:(k + 1) * PER_CASE], classes[k * PER_CASE:(k + 1) * PER_CASE]


@pytest.fixture
def pairs(tmp_path, synthetic):
    root = tmp_path / "ct"
    for k in range(N_CASES):
        write_case(root, f"case{k}", *_case(synthetic, k))
    return root


def _read(root):
    return read_seg_dataset(root, root.parent / "cache")


def _problems(root) -> str:
    with pytest.raises(DataError) as caught:
        _read(root)
    return str(caught.value)


def test_the_cases_read_back_as_the_same_slices_and_classes(pairs, synthetic):
    data = _read(pairs)
    assert data.layout == "nifti" and [s.name for s in data.sources] == [f"case{k}" for k in range(N_CASES)]
    assert data.n_slices == N_CASES * PER_CASE and {(s.n, s.height, s.width) for s in data.sources} == {(4, 64, 64)}
    read = list(slice_arrays(data.sources, range(data.n_slices)))
    assert np.array_equal(np.stack([hu for hu, _ in read]), synthetic[0])
    assert np.array_equal(np.stack([mask for _, mask in read]), synthetic[1])  # label 0 is background (class 3)
    assert data.volume_ids[:5] == ("case0",) * 4 + ("case1",)


def test_slices_agree_with_what_inference_reads_from_the_same_file(tmp_path, synthetic):
    """Stored with its axes permuted and flipped (superior, right, anterior) and as int16 HU, a
    case gives the trainer exactly the slices read_nifti gives bulk inference."""
    hu, classes = _case(synthetic, 0)
    hu = np.rint(hu)
    permuted = np.array([[0, 0.7, 0, -30.0], [0, 0, 0.8, -60.0], [2.5, 0, 0, 10.0], [0, 0, 0, 1]])
    root = tmp_path / "ct"
    _save(root / "imagesTr" / "a.nii", _voxels(hu, permuted).astype(np.int16), permuted)
    _save(root / "labelsTr" / "a.nii.gz", _voxels((classes + 1) % 4, permuted).astype(np.uint8), permuted)
    (source,) = _read(root).sources
    inferred, _, _ = read_nifti((root / "imagesTr" / "a.nii").read_bytes())
    trained = np.stack([h for h, _ in slice_arrays([source], range(source.n))])
    assert np.array_equal(trained, inferred) and np.array_equal(trained, hu)
    assert np.load(source.images).dtype == np.int16  # whole HU kept in half the space
    assert np.array_equal(np.stack([m for _, m in slice_arrays([source], range(4))]), classes)


def test_the_split_is_by_case(pairs):
    data = _read(pairs)
    split, by = split_slices(data, SplitSpec(seed=3))
    assert by == "volume"
    sides = {part: {data.volume_ids[i] for i in indices} for part, indices in split.items()}
    assert not (sides["train"] & sides["val"] or sides["train"] & sides["test"] or sides["val"] & sides["test"])
    assert all(len(indices) % PER_CASE == 0 for indices in split.values())
    assert sorted(i for part in split.values() for i in part) == list(range(data.n_slices))


@pytest.mark.parametrize("labels, values", [
    ({"background": 0, "Ground-Glass": 2, "consolidation": 1, "lung": 3}, lambda c: np.array([2, 1, 3, 0])[c]),
    ({"0": "background", "1": "GGO", "2": "Consolidation", "3": "other lung"}, lambda c: (c + 1) % 4),
    ({"0": "Background", "5": "lung", "7": "ground glass", "9": "consolidation"}, lambda c: np.array([7, 9, 5, 0])[c]),
], ids=["nnunet", "msd", "msd-sparse"])
def test_dataset_json_names_the_label_values(tmp_path, synthetic, labels, values):
    root = tmp_path / "ct"
    write_case(root, "a", *_case(synthetic, 1), values=values)
    (root / "dataset.json").write_text(json.dumps({"name": "lesions", "labels": labels}))
    (source,) = _read(root).sources
    assert np.array_equal(np.stack([m for _, m in slice_arrays([source], range(4))]), _case(synthetic, 1)[1])


def test_unknown_and_region_label_names_are_refused_naming_the_file(pairs):
    (pairs / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "tumour": 1, "lung": [2, 3]}}))
    text = _problems(pairs)
    assert "dataset.json: label 'tumour' (value 1) is not one of medq's classes" in text
    assert "dataset.json: label 'lung' is a region" in text
    (pairs / "dataset.json").write_text("{not json")
    assert "dataset.json: not JSON (line 1" in _problems(pairs)


def test_cases_missing_a_half_are_named(pairs):
    (pairs / "labelsTr" / "case2.nii.gz").unlink()
    (pairs / "labelsTr" / "case1.nii.gz").rename(pairs / "labelsTr" / "case9.nii.gz")
    (pairs / "imagesTr" / "case3_0001.nii.gz").write_bytes((pairs / "imagesTr" / "case3_0000.nii.gz").read_bytes())
    (pairs / "imagesTr" / "._case0_0000.nii.gz").write_bytes(b"macOS resource fork")  # passed over
    text = _problems(pairs)
    assert "imagesTr/case2_0000.nii.gz: case 'case2' has no label" in text
    assert "imagesTr/case1_0000.nii.gz: case 'case1' has no label" in text
    assert "labelsTr/case9.nii.gz: case 'case9' has no image" in text
    assert "imagesTr/case3_0001.nii.gz: input channel 0001 of case 'case3'" in text
    assert "4 problem(s)" in text


def test_shapes_and_affines_that_differ_are_refused(pairs, synthetic):
    hu, classes = _case(synthetic, 1)
    _save(pairs / "labelsTr" / "case1.nii.gz", _voxels((classes[:3] + 1) % 4, LPS).astype(np.uint8), LPS)
    moved = LPS.copy()
    moved[0, 3] += 0.01  # a hundredth of a millimetre: not the image's voxels
    _save(pairs / "labelsTr" / "case2.nii.gz", _voxels((_case(synthetic, 2)[1] + 1) % 4, moved).astype(np.uint8), moved)
    close = LPS.copy()
    close[1, 1] += 1e-5  # float32 rounding of a header: the same voxels
    _save(pairs / "labelsTr" / "case3.nii.gz", _voxels((_case(synthetic, 3)[1] + 1) % 4, close).astype(np.uint8), close)
    text = _problems(pairs)
    assert "labelsTr/case1.nii.gz: shape (64, 64, 3), but the image case1_0000.nii.gz is (64, 64, 4)" in text
    assert "labelsTr/case2.nii.gz: its affine differs from the image case2_0000.nii.gz's by up to 0.01" in text
    assert "case3" not in text and "2 problem(s)" in text


def test_bad_images_are_refused_naming_the_file_and_the_slice(pairs, synthetic):
    singular = nib.Nifti1Image(_voxels(_case(synthetic, 0)[0], LPS), None)
    singular.set_sform(np.diag([0.7, 0.0, 2.5, 1.0]), code=1)
    singular.set_qform(None, code=0)
    nib.save(singular, pairs / "imagesTr" / "case0_0000.nii.gz")
    hu = _case(synthetic, 1)[0].copy()
    hu[0, 5, 5], hu[1, 0, 0] = np.nan, np.inf  # canonical slices 0 and 1: the file's k = 3 and 2
    flipped = np.diag([-0.7, -0.8, -2.5, 1.0])  # k toward inferior: canonical slice s is k = 3 - s
    _save(pairs / "imagesTr" / "case1_0000.nii.gz", _voxels(hu, flipped).astype(np.float32), flipped)
    _save(pairs / "labelsTr" / "case1.nii.gz", _voxels((_case(synthetic, 1)[1] + 1) % 4, flipped).astype(np.uint8),
          flipped)
    _save(pairs / "imagesTr" / "case2_0000.nii.gz", np.zeros((64, 64, 4, 2), np.float32), LPS)
    (pairs / "imagesTr" / "case3_0000.nii.gz").write_bytes(gzip.compress(b"not a NIfTI header" * 40))
    (pairs / "imagesTr" / "notes.txt").write_text("scanner settings")
    text = _problems(pairs)
    assert "imagesTr/case0_0000.nii.gz: the NIfTI affine is not invertible" in text
    assert "imagesTr/case1_0000.nii.gz: NaN or infinite HU in slice(s) k=2, 3 of the file" in text
    assert "imagesTr/case2_0000.nii.gz: a NIfTI CT volume must be 3-D, got shape (64, 64, 4, 2)" in text
    assert "imagesTr/case3_0000.nii.gz: not a readable NIfTI volume" in text
    assert "imagesTr/notes.txt: not a NIfTI file (.nii or .nii.gz)" in text


def test_label_values_outside_the_mapping_name_the_values_and_slices(pairs, synthetic):
    labels = (_case(synthetic, 4)[1] + 1) % 4
    labels[0, 3, 3], labels[2, 4, 4], labels[2, 5, 5] = 7, 9, 4
    _save(pairs / "labelsTr" / "case4.nii.gz", _voxels(labels, LPS).astype(np.float32) + np.float32(0), LPS)
    half = _voxels((_case(synthetic, 0)[1] + 1) % 4, LPS).astype(np.float32)
    half[10, 10, 3] = 0.5
    _save(pairs / "labelsTr" / "case0.nii.gz", half, LPS)
    text = _problems(pairs)
    assert ("labelsTr/case4.nii.gz: value(s) 4, 7, 9 outside the labels (0 background, 1 ground_glass, "
            "2 consolidation, 3 other_lung) in slice(s) k=0, 2 of the file") in text
    assert "labelsTr/case0.nii.gz: value(s) 0.5 outside the labels" in text and "slice(s) k=3 of the file" in text


def test_a_folder_of_neither_layout_or_of_both_is_refused_naming_both(tmp_path, pairs):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no segmentation dataset here; expected MedSeg arrays "
                                        r"\(images_<name>.npy with masks_<name>.npy\) or NIfTI pairs \(imagesTr/"):
        read_seg_dataset(tmp_path / "empty")
    np.save(pairs / "images_x.npy", np.zeros((2, 8, 8), np.float32))
    assert "holds more than one layout" in _problems(pairs)


def test_converted_cases_are_reused_and_written_again_when_the_cache_is_gone(pairs):
    import shutil

    first = _read(pairs)
    written = {s.name: s.images.stat().st_mtime_ns for s in first.sources}
    again = _read(pairs)
    assert again.sources == first.sources
    assert {s.name: s.images.stat().st_mtime_ns for s in again.sources} == written  # not converted twice
    record = json.loads(json.dumps([s.to_dict() for s in first.sources]))  # as the plan stores them
    expected = [np.load(s.images).copy() for s in first.sources]
    shutil.rmtree(first.sources[2].images.parent)
    ready = ready_sources(record)
    assert [np.array_equal(np.load(s.images), e) for s, e in zip(ready, expected)] == [True] * N_CASES
    _save(pairs / "imagesTr" / "case1_0000.nii.gz", np.zeros((64, 64, 2), np.float32), LPS)  # changed since
    shutil.rmtree(first.sources[1].images.parent)
    with pytest.raises(DataError, match="labelsTr/case1.nii.gz: shape"):
        ready_sources(record)


@pytest.mark.slow
def test_one_epoch_through_the_family_on_nifti_pairs(pairs, tmp_path):
    """plan (stored as JSON) -> train one epoch -> evaluate on the held-out cases."""
    from medq.common.families.base import MemberCheckpoint
    from medq.common.families.registry import family
    from medq.common.families.ct_lesions.spec import SegmentSpec
    from medq.common.training.kit import TrainHooks

    kind = family("segment")
    spec = SegmentSpec(arch="unet", encoder="resnet18", image_size=64, batch_size=4, epochs=1, amp=False)
    plan = json.loads(json.dumps(kind.plan(spec, pairs, cache_dir=tmp_path / "cache")))
    assert (plan["layout"], plan["split_by"], plan["n_images"]) == ("nifti", "volume", N_CASES * PER_CASE)
    trained = kind.train(spec, plan, 0, tmp_path / "member", TrainHooks())
    assert not trained.cancelled and trained.fields["epoch"] == 1 and trained.checkpoints["best"].is_file()
    results = kind.evaluate(spec, plan, [MemberCheckpoint(1, 0, None, trained.checkpoints["best"])])
    test = next(v for k, v in results.items() if k.endswith("test"))
    assert test["n_images"] == len(plan["split"]["test"]) and test["split_by"] == "volume"
    assert set(test["per_class"]) == {"ground_glass", "consolidation", "other_lung", "background"}


def test_a_case_given_twice_is_refused_naming_both_files(pairs):
    (pairs / "imagesTr" / "case0.nii").write_bytes(b"")
    assert "imagesTr/case0_0000.nii.gz: a second image of case 'case0' (beside case0.nii); keep one" in _problems(pairs)


def test_label_mapping_finds_bad_values_in_every_block_of_slices():
    from medq.common.families.ct_lesions.labelmap import DEFAULT_LABELS, map_labels

    values = np.zeros((40, 6, 6), np.float32)
    values[:, 0, 0] = 1
    values[3, 2, 2], values[37, 1, 1], values[20, 5, 5] = 4, np.nan, 2.5
    classes, bad_values, bad_slices = map_labels(values, DEFAULT_LABELS)
    assert bad_slices.tolist() == [3, 20, 37] and bad_values[:2].tolist() == [2.5, 4] and np.isnan(bad_values[2])
    assert (classes[:, 0, 0] == 0).all() and classes[0, 3, 3] == 3  # ground glass; background


def test_cases_of_different_slice_sizes_are_refused_naming_them(pairs):
    small = np.full((2, 32, 32), -800.0, np.float32)
    write_case(pairs, "small", small, np.full((2, 32, 32), 3, np.uint8))
    assert "cases of different slice sizes (64x64: case0, case1, case2, case3, case4; 32x32: small)" in _problems(pairs)
