"""A CT study's lesion mask as a DICOM SEG, read back as a viewer would (highdicom), and what
is refused; the lesion volumes as a TID 1500 SR referencing the SEG's segments."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom.uid import JPEGLSLossless, RLELossless

from medq.common.families.ct_lesions.dicom_seg import build_lesion_sr, build_seg, segment_number
from medq.common.families.ct_lesions.predict import measure
from medq.common.families.ct_lesions.schema import CLASSES
from medq.common.inference.dicom_outputs import derived_uid, write_dicom
from medq.common.inference.types import StudyError
from tests.unit.dicom_series import ALGORITHM, ct_headers, fixed_labels, strict_writing

N_SLICES = 5
SEGMENTS = [("Ground glass", ("DCM", "112120")), ("Consolidation", ("SCT", "95436008")), ("Other lung", ("SCT", "39607008"))]


@pytest.fixture
def series(tmp_path):
    return ct_headers(tmp_path, N_SLICES, gap_mm=2.5)


def written(tmp_path, dataset, name="out.dcm"):
    with strict_writing():
        return write_dicom(tmp_path / name, dataset)


def test_the_seg_references_every_slice_and_gives_back_the_labels(tmp_path, series):
    assert all("PixelData" not in ds for ds in series)  # highdicom needs the headers only
    labels = fixed_labels(N_SLICES)
    seg = hd.seg.segread(written(tmp_path, build_seg(series, labels, ALGORITHM, "job-42/study-1")))

    assert seg.Modality == "SEG" and seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Manufacturer == "medq"
    assert seg.StudyInstanceUID == series[0].StudyInstanceUID and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == series[0].FrameOfReferenceUID
    assert seg.NumberOfFrames == 3 * N_SLICES  # empty frames kept: every slice, every segment
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == series[0].SeriesInstanceUID
    assert sorted(i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence) == sorted(
        ds.SOPInstanceUID for ds in series)
    per_frame = [f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                 for f in seg.PerFrameFunctionalGroupsSequence]
    assert sorted(per_frame) == sorted([ds.SOPInstanceUID for ds in series] * 3)  # each slice, once per segment

    for item, (label, (scheme, value)) in zip(seg.SegmentSequence, SEGMENTS):
        assert item.SegmentLabel == label and item.SegmentAlgorithmType == "AUTOMATIC"
        code = item.SegmentedPropertyTypeCodeSequence[0]
        assert (code.CodingSchemeDesignator, code.CodeValue) == (scheme, value)
        assert item.SegmentAlgorithmName == "medq CT lesion UNet++"
        assert "checkpoint_sha256=0123456789abcdef" in item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
    assert [c.CodeValue for c in (s.SegmentedPropertyCategoryCodeSequence[0] for s in seg.SegmentSequence)] == [
        "49755003", "49755003", "91723000"]  # morphologically abnormal, abnormal, anatomical structure

    pixels = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in series], segment_numbers=[1, 2, 3])
    for k, name in enumerate(CLASSES[:3]):
        assert segment_number(name) == k + 1
        np.testing.assert_array_equal(pixels[..., k], labels == k)
    volume = seg.get_volume()  # the slice gap from the positions (2.5 mm), not the header's 5 mm
    assert volume.spacing == pytest.approx((2.5, 0.661468, 0.661468))


def test_a_seg_of_unevenly_spaced_slices_states_no_spacing_between_them(series):
    series[4].ImagePositionPatient = [0.0, 0.0, 20.0]  # gaps 2.5, 2.5, 2.5, 10
    seg = build_seg(series, fixed_labels(N_SLICES), ALGORITHM, "s")
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert "SpacingBetweenSlices" not in measures and measures.PixelSpacing == [0.661468, 0.661468]


def test_the_same_study_gets_the_same_uids_and_another_seed_others(series):
    labels = fixed_labels(N_SLICES)
    first, again = (build_seg(series, labels, ALGORITHM, "job-42/study-1") for _ in range(2))
    other = build_seg(series, labels, ALGORITHM, "job-42/study-2")
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    assert first.SOPInstanceUID == derived_uid("job-42/study-1", "seg-instance")
    assert {other.SeriesInstanceUID, other.SOPInstanceUID}.isdisjoint({first.SeriesInstanceUID, first.SOPInstanceUID})
    assert first.SeriesInstanceUID != series[0].SeriesInstanceUID


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])
def test_a_fractional_seg_keeps_the_probabilities_within_one_step(tmp_path, series, syntax):
    rng = np.random.default_rng(3)
    probabilities = rng.random((N_SLICES, 4, 128, 128)).astype(np.float32)
    seg = build_seg(series, probabilities.argmax(1), ALGORITHM, "s", fractional=True, probabilities=probabilities,
                    fractional_syntax=syntax)
    back = hd.seg.segread(written(tmp_path, seg))
    assert back.SegmentationType == "FRACTIONAL" and back.file_meta.TransferSyntaxUID == syntax
    assert back.NumberOfFrames == 3 * N_SLICES
    pixels = back.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in series], segment_numbers=[1, 2, 3])
    assert np.abs(pixels - np.moveaxis(probabilities[:, :3], 1, -1)).max() <= 1 / 255

    as_bytes = (probabilities * 255).round().astype(np.uint8)  # uint8 0..255 comes back exactly
    seg = build_seg(series, probabilities.argmax(1), ALGORITHM, "s", fractional=True, probabilities=as_bytes)
    pixels = hd.seg.segread(written(tmp_path, seg, "u8.dcm")).get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in series], segment_numbers=[1, 2, 3], dtype=np.float64)
    np.testing.assert_array_equal(np.round(pixels * 255).astype(np.uint8), np.moveaxis(as_bytes[:, :3], 1, -1))
    with pytest.raises(ValueError, match="within"):
        build_seg(series, probabilities.argmax(1), ALGORITHM, "s", fractional=True, probabilities=probabilities * 2)


def test_sources_that_cannot_carry_a_seg_are_refused_naming_the_slice(series):
    labels = fixed_labels(N_SLICES)
    series[2].Modality = "MR"
    with pytest.raises(StudyError, match="slice 3 of 5: modality MR, not CT"):
        build_seg(series, labels, ALGORITHM, "s")
    series[2].Modality = "CT"
    series[3].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    with pytest.raises(StudyError, match="slice 4 of 5: another orientation"):
        build_seg(series, labels, ALGORITHM, "s")
    series[3].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    del series[0].FrameOfReferenceUID
    with pytest.raises(StudyError, match="slice 1 of 5: no FrameOfReferenceUID"):
        build_seg(series, labels, ALGORITHM, "s")


def test_labels_that_do_not_fit_the_sources_are_refused(series):
    labels = fixed_labels(N_SLICES)
    with pytest.raises(StudyError, match="4 label slices for 5 source slices"):
        build_seg(series, labels[:4], ALGORITHM, "s")
    with pytest.raises(StudyError, match="labels of 64x128 px for slices of 128x128 px"):
        build_seg(series, labels[:, :, :64], ALGORITHM, "s")
    with pytest.raises(StudyError, match="class indices 0..3"):
        build_seg(series, labels + 1, ALGORITHM, "s")


def test_a_64_slice_512_px_series_makes_one_seg_of_192_frames(tmp_path):
    series = ct_headers(tmp_path, 64, gap_mm=1.0, size=512)
    seg = build_seg(series, fixed_labels(64, 512, 512), ALGORITHM, "big")
    assert seg.NumberOfFrames == 192 and len(seg.PerFrameFunctionalGroupsSequence) == 192


def _lesion_groups(sr):
    return {g.tracking_identifier: g for g in sr.content.get_volumetric_roi_measurement_groups()}


def test_the_lesion_report_gives_each_lesion_volume_on_its_segment(tmp_path, series):
    labels = fixed_labels(N_SLICES)
    seg = build_seg(series, labels, ALGORITHM, "s")
    measures = measure(labels, (2.5, 0.661468, 0.661468))
    sr = hd.sr.srread(written(tmp_path, build_lesion_sr(seg, series, measures, ALGORITHM, "s"), "sr.dcm"))

    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and sr.StudyInstanceUID == series[0].StudyInstanceUID
    assert sr.SOPInstanceUID == derived_uid("s", "sr-instance") and sr.CompletionFlag == "COMPLETE"
    groups = _lesion_groups(sr)
    assert sorted(groups) == ["Consolidation", "Ground glass"]
    for label, name in (("Ground glass", "ground_glass"), ("Consolidation", "consolidation")):
        (volume,) = groups[label].get_measurements()
        assert (volume.name.value, volume.name.scheme_designator, volume.unit.value) == ("118565006", "SCT", "ml")
        assert volume.value == pytest.approx(measures["lesion_ml"][name], rel=1e-6)
        reference = groups[label].referenced_segment[0].ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert reference.ReferencedSegmentNumber == segment_number(name)
    (overall,) = sr.content.get_image_measurement_groups()
    assert overall.tracking_identifier == "All lung lesions"
    found = {m.name.meaning: (m.value, m.unit.value) for m in overall.get_measurements()}
    assert found["Volume"] == (pytest.approx(measures["lesion_total_ml"]), "ml")
    assert found["Lung involvement by lesions"] == (pytest.approx(measures["lung_involvement_pct"]), "%")

    evidence = {s.SeriesInstanceUID: {i.ReferencedSOPInstanceUID for i in s.ReferencedSOPSequence}
                for item in (*sr.get("CurrentRequestedProcedureEvidenceSequence", []),
                             *sr.get("PertinentOtherEvidenceSequence", []))
                for s in item.ReferencedSeriesSequence}
    assert evidence[seg.SeriesInstanceUID] == {seg.SOPInstanceUID}
    assert evidence[series[0].SeriesInstanceUID] == {ds.SOPInstanceUID for ds in series}


def test_without_a_spacing_the_report_has_no_volumes_but_the_involvement(tmp_path, series):
    labels = fixed_labels(N_SLICES)
    seg = build_seg(series, labels, ALGORITHM, "s")
    measures = measure(labels, None)
    sr = hd.sr.srread(written(tmp_path, build_lesion_sr(seg, series, measures, ALGORITHM, "s"), "sr.dcm"))
    assert all(g.get_measurements() == [] for g in _lesion_groups(sr).values()) and len(_lesion_groups(sr)) == 2
    (overall,) = sr.content.get_image_measurement_groups()
    assert [m.name.meaning for m in overall.get_measurements()] == ["Lung involvement by lesions"]
