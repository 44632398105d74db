"""Landmarks of one image as a TID 1500 SR, read back with highdicom: one point per landmark at
the pixel centre's SCOORD, distances in mm where the spacing is known, and the review flag."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medq.common.families.ceph.schema import LANDMARKS, SR_DISTANCES
from medq.common.families.chest.schema import FLIP_PAIRS, LANDMARK_NAMES
from medq.common.inference.dicom import spacing_mm
from medq.common.inference.dicom_outputs import Algorithm, derived_uid, header_of, write_dicom
from medq.common.inference.landmark_sr import build_landmark_sr
from tests.unit.dicom_series import strict_writing

CEPH = Algorithm("hrnet", "Cephalometric HRNet-w32", "0.1.0", "7", "fedcba9876543210" * 4)
POINTS = np.array([[10.0, 20.0], [13.0, 24.0], [100.25, 5.5]])  # 0-based pixel centres, x right, y down


def source(name: str):
    return header_of(open(get_testdata_file(name), "rb").read())


def read_back(tmp_path, sr):
    with strict_writing():
        return hd.sr.srread(write_dicom(tmp_path / "sr.dcm", sr))


def distances(sr) -> dict[str, float]:
    found = {}
    for group in sr.content.get_image_measurement_groups():
        for m in group.get_measurements():
            assert (m.name.value, m.name.scheme_designator, m.unit.value) == ("121206", "DCM", "mm")
            found[group.tracking_identifier] = m.value
    return found


def review(sr):
    (group,) = [g for g in sr.content.get_image_measurement_groups() if g.tracking_identifier == "Quality control"]
    (evaluation,) = group.get_qualitative_evaluations()
    reasons = [item.value for item in group[0].ContentSequence if item.ValueType == "TEXT"
               and item.ConceptNameCodeSequence[0].CodeValue == "REVIEWWHY"]
    return evaluation.name.meaning, evaluation.value.meaning, reasons


def test_each_landmark_is_a_point_half_a_pixel_on_and_distances_are_in_mm(tmp_path):
    ct = source("CT_small.dcm")  # PixelSpacing 0.661468 mm both ways
    sr = read_back(tmp_path, build_landmark_sr(ct, ["A", "B", "C"], POINTS, spacing_mm(ct), [(0, 1)], [], CEPH, "j/s"))

    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR: 2D SCOORD
    assert sr.StudyInstanceUID == ct.StudyInstanceUID and sr.SOPInstanceUID == derived_uid("j/s", "sr-instance")
    groups = sr.content.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["A", "B", "C"]
    for group, (x, y) in zip(groups, POINTS):
        assert group.roi.graphic_type.value == "POINT"
        np.testing.assert_allclose(group.roi.value, [[x + 0.5, y + 0.5]])  # SCOORD of the pixel centre
        (image,) = group.roi.ContentSequence
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ct.SOPInstanceUID
    # 3 px across and 4 px down: 5 px of 0.661468 mm
    assert distances(sr) == {"A - B": pytest.approx(5 * 0.661468)}
    assert review(sr) == ("Review required", "No", [])


def test_an_anisotropic_spacing_scales_x_by_the_column_and_y_by_the_row_spacing(tmp_path):
    ct = source("CT_small.dcm")
    points = np.array([[0.0, 0.0], [8.0, 3.0]])  # 8 px x 0.25 mm = 2 mm across, 3 px x 0.5 mm = 1.5 mm down
    sr = read_back(tmp_path, build_landmark_sr(ct, ["P", "Q"], points, (0.5, 0.25), [(0, 1)], [], CEPH, "s"))
    assert distances(sr) == {"P - Q": pytest.approx(2.5)}


def test_review_is_required_when_quality_control_gave_reasons(tmp_path):
    ct = source("CT_small.dcm")
    reasons = ["ensemble spread 31.0 px over 20.0 px at landmark 3", "left/right landmarks swapped: pair 2/3"]
    sr = read_back(tmp_path, build_landmark_sr(ct, ["A", "B", "C"], POINTS, None, [], reasons, CEPH, "s"))
    assert review(sr) == ("Review required", "Yes", reasons)
    schemes = {item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence}
    assert "99MEDQ" in schemes  # the private codes are declared


def test_a_radiograph_without_a_spacing_gets_points_but_no_distances(tmp_path):
    cr = source("RG1_UNCR.dcm")  # a real CR; its PixelSpacing is 0.000
    assert spacing_mm(cr) is None and "PixelData" not in cr
    points = np.random.default_rng(0).uniform(0, 1800, size=(15, 2))
    sr = read_back(tmp_path, build_landmark_sr(cr, LANDMARK_NAMES, points, None, FLIP_PAIRS, [], CEPH, "chest"))
    assert [g.tracking_identifier for g in sr.content.get_planar_roi_measurement_groups()] == list(LANDMARK_NAMES)
    assert distances(sr) == {}


def test_the_cephalometric_distances_are_named_by_their_landmarks(tmp_path):
    cr = source("RG1_UNCR.dcm")
    points = np.random.default_rng(1).uniform(0, 1800, size=(len(LANDMARKS), 2))
    sr = read_back(tmp_path, build_landmark_sr(cr, LANDMARKS, points, (0.1, 0.1), SR_DISTANCES, [], CEPH, "ceph"))
    found = distances(sr)
    assert len(found) == len(SR_DISTANCES) and "Sella - Nasion" in found
    a, b = points[LANDMARKS.index("Sella")], points[LANDMARKS.index("Nasion")]
    assert found["Sella - Nasion"] == pytest.approx(0.1 * float(np.hypot(*(a - b))), rel=1e-6)


def test_landmarks_that_cannot_be_reported_are_refused_by_name():
    ct = source("CT_small.dcm")
    points = POINTS.copy()
    points[1, 0] = np.nan
    with pytest.raises(ValueError, match="landmark\\(s\\) B have no finite position"):
        build_landmark_sr(ct, ["A", "B", "C"], points, None, [], [], CEPH, "s")
    with pytest.raises(ValueError, match="distance pair \\(0, 3\\)"):
        build_landmark_sr(ct, ["A", "B", "C"], POINTS, (0.5, 0.5), [(0, 3)], [], CEPH, "s")
    with pytest.raises(ValueError, match="for 2 names"):
        build_landmark_sr(ct, ["A", "B"], POINTS, None, [], [], CEPH, "s")
