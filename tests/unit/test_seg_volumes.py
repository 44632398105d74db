"""CT studies for bulk segmentation: DICOM series grouped and sorted from real pydicom files,
.npy volumes, and what fails alone."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medq.common.inference.archive import open_archive
from medq.common.inference.types import Entry, SkippedEntry, StudyError
from medq.common.families.ct_lesions.predict import measure
from medq.common.families.ct_lesions.volumes import SERIES_PREFIX, load_ct_volume, plan_ct_studies


def write_series(folder, n: int, gap_mm: float = 2.5, series_uid: str | None = None, names=None) -> list:
    """n slices of pydicom's CT_small (a real CT file), each at z = k * gap_mm with its stored
    values set to k (so HU = k * slope + intercept), written under shuffled file names."""
    series_uid = series_uid or generate_uid()
    paths = []
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
        ds.ImagePositionPatient = [0.0, 0.0, k * gap_mm]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.InstanceNumber = n - k  # the opposite order: position must win
        ds.PixelData = np.full((ds.Rows, ds.Columns), k, dtype=ds.pixel_array.dtype).tobytes()
        name = names[k] if names else f"img{(7 * k) % n:03d}"
        ds.save_as(folder / name)
        paths.append(folder / name)
    return paths


def test_a_series_is_one_study_sorted_by_position_with_its_spacing(tmp_path):
    write_series(tmp_path, 5, gap_mm=2.5)
    np.save(tmp_path / "vol.npy", np.zeros((3, 16, 16), dtype=np.float32))
    (tmp_path / "notes.txt").write_text("not an image")
    archive = open_archive(tmp_path)
    planned = list(plan_ct_studies(archive))
    studies = [e for e in planned if isinstance(e, Entry)]
    skipped = [e for e in planned if isinstance(e, SkippedEntry)]
    assert [e.path for e in studies if not e.path.startswith(SERIES_PREFIX)] == ["vol.npy"]
    (series,) = [e for e in studies if e.path.startswith(SERIES_PREFIX)]
    assert len(json.loads(series.path[len(SERIES_PREFIX):])) == 5
    assert [(e.path, e.state) for e in skipped] == [("notes.txt", "skipped")]

    volume = load_ct_volume(archive, series.path)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    assert volume.hu.shape == (5, ds.Rows, ds.Columns) and volume.source_format == "dicom"
    np.testing.assert_allclose(volume.hu[:, 0, 0], np.arange(5) * slope + intercept)  # by position, not name
    assert volume.spacing_mm == pytest.approx((2.5, *map(float, ds.PixelSpacing)))
    assert volume.uids["SeriesInstanceUID"] and "SOPInstanceUID" not in volume.uids
    by_z = {float(pydicom.dcmread(p).ImagePositionPatient[2]): pydicom.dcmread(p).SOPInstanceUID
            for p in tmp_path.iterdir() if p.name.startswith("img")}
    assert volume.slice_uids == tuple(by_z[z] for z in sorted(by_z))


def test_two_series_in_one_folder_are_two_studies(tmp_path):
    write_series(tmp_path, 2, names=["a1", "a2"])
    write_series(tmp_path, 3, names=["b1", "b2", "b3"])
    sizes = sorted(e.size for e in plan_ct_studies(open_archive(tmp_path)) if isinstance(e, Entry))
    assert sizes == [2, 3]


def test_a_series_with_a_broken_slice_fails_naming_the_slice_not_the_file(tmp_path):
    paths = write_series(tmp_path, 3, names=["s1", "s2", "s3"])
    archive = open_archive(tmp_path)
    (series,) = [e for e in plan_ct_studies(archive) if isinstance(e, Entry)]
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) - 4000])  # pixel data cut short
    with pytest.raises(StudyError, match=r"slice 2 of 3: truncated or corrupt pixel data") as caught:
        load_ct_volume(archive, series.path)
    assert "s2" not in str(caught.value)


def test_npy_volumes_in_every_accepted_shape_and_the_refusals(tmp_path):
    archive = open_archive(tmp_path)
    for name, array in (("a.npy", np.zeros((4, 40, 40, 1))), ("b.npy", np.zeros((40, 40))),
                        ("c.npy", np.zeros((2, 40, 40)))):
        np.save(tmp_path / name, array)
    assert [load_ct_volume(archive, n).hu.shape for n in ("a.npy", "b.npy", "c.npy")] == [
        (4, 40, 40), (1, 40, 40), (2, 40, 40)]
    np.save(tmp_path / "rgb.npy", np.zeros((40, 40, 3)))  # a picture, not 40 slices of 40 x 3
    with pytest.raises(StudyError, match=r"image too small \(3x40"):
        load_ct_volume(archive, "rgb.npy")
    bad = np.zeros((3, 40, 40))
    bad[2, 1, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(StudyError, match=r"NaN or infinite values in slice\(s\) 2"):
        load_ct_volume(archive, "nan.npy")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(StudyError, match="not a readable .npy array"):
        load_ct_volume(archive, "junk.npy")


def test_measurements_of_a_known_mask():
    labels = np.full((2, 10, 10), 3, dtype=np.uint8)
    labels[:, 2:8, 2:8] = 2  # 72 lung voxels
    labels[0, 3:5, 3:5] = 0  # 4 ground glass
    labels[1, 3:6, 3:6] = 1  # 9 consolidation
    m = measure(labels, (2.0, 0.5, 0.5))  # 0.5 mm³ a voxel
    assert m["voxels"] == {"ground_glass": 4, "consolidation": 9, "other_lung": 59, "background": 128}
    assert m["lesion_ml"] == pytest.approx({"ground_glass": 0.002, "consolidation": 0.0045})
    assert m["lung_involvement_pct"] == pytest.approx(100 * 13 / 72)
    unknown = measure(labels, None)
    assert unknown["lesion_ml"] == {"ground_glass": None, "consolidation": None} and unknown["lesion_total_ml"] is None
    assert measure(np.full((1, 4, 4), 3, dtype=np.uint8), None)["lung_involvement_pct"] is None


def test_images_of_other_modalities_are_skipped_with_the_reason(tmp_path):
    import shutil

    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "mr")
    (entry,) = plan_ct_studies(open_archive(tmp_path))
    assert isinstance(entry, SkippedEntry) and (entry.state, entry.reason) == ("skipped", "modality MR, not CT")


def test_a_series_with_two_slices_at_one_position_fails_alone(tmp_path):
    paths = write_series(tmp_path, 3, gap_mm=2.0, names=["d1", "d2", "d3"])
    ds = pydicom.dcmread(paths[2])
    ds.ImagePositionPatient = [0.0, 0.0, 2.0]  # the same place as the second slice
    ds.save_as(paths[2])
    archive = open_archive(tmp_path)
    (series,) = [e for e in plan_ct_studies(archive) if isinstance(e, Entry)]
    with pytest.raises(StudyError, match="two slices of the series share a position"):
        load_ct_volume(archive, series.path)


def test_a_series_with_a_missing_slice_fails_alone_saying_where_the_gap_is(tmp_path):
    paths = write_series(tmp_path, 6, gap_mm=2.5, names=[f"s{k}" for k in range(6)])
    paths[3].unlink()  # the slice at 7.5 mm never arrived
    archive = open_archive(tmp_path)
    (series,) = [e for e in plan_ct_studies(archive) if isinstance(e, Entry)]
    with pytest.raises(StudyError, match=r"slices missing from the series: 5.00 mm between slices 3 and 4 "
                                         r"\(sorted by position\) where the series steps 2.50 mm"):
        load_ct_volume(archive, series.path)


def test_a_series_mixing_orientations_fails_alone_naming_the_odd_slice(tmp_path):
    paths = write_series(tmp_path, 4, gap_mm=2.5, names=[f"s{k}" for k in range(4)])
    ds = pydicom.dcmread(paths[2])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal slice in an axial series
    ds.save_as(paths[2])
    archive = open_archive(tmp_path)
    (series,) = [e for e in plan_ct_studies(archive) if isinstance(e, Entry)]
    with pytest.raises(StudyError, match=r"the series mixes slice orientations \(slice 3 of 4 lies in another plane\)"):
        load_ct_volume(archive, series.path)


def test_a_whole_series_keeps_its_headers_in_slice_order_for_its_seg(tmp_path):
    write_series(tmp_path, 4, gap_mm=2.5)
    archive = open_archive(tmp_path)
    (series,) = [e for e in plan_ct_studies(archive) if isinstance(e, Entry)]
    volume = load_ct_volume(archive, series.path)
    assert [str(h.SOPInstanceUID) for h in volume.headers] == list(volume.slice_uids)
    assert all("PixelData" not in h for h in volume.headers)  # headers only: no pixels travel twice
    assert [float(h.ImagePositionPatient[2]) for h in volume.headers] == [0.0, 2.5, 5.0, 7.5]
