"""A CT study's predicted classes as a DICOM Segmentation (highdicom), for the PACS and viewers.

One segment per class but background, in ``CLASSES`` order (segment 1 ground glass, 2
consolidation, 3 other lung), each with its coded category and type:

| segment | category (CID 7150) | type |
|---|---|---|
| Ground glass | SCT 49755003 Morphologically Abnormal Structure | DCM 112120 Ground glass opacity (CID 6102/6104) |
| Consolidation | SCT 49755003 Morphologically Abnormal Structure | SCT 95436008 Lung consolidation |
| Other lung | SCT 91723000 Anatomical Structure | SCT 39607008 Lung |

All but one are pydicom's own code dictionary (``pydicom.sr.codedict.codes``); consolidation is
in none of the standard's context groups that pydicom lists, so it is SNOMED CT's "Lung
consolidation" (95436008). The lesion segments name the lung as their anatomic region.

The sources are the series' headers (no pixel data: highdicom needs none), in the order of the
label slices. Every source is referenced frame by frame (``omit_empty_frames=False``: segments ×
slices frames), so a viewer lays each frame on its slice. BINARY by default (1 bit, explicit VR
little endian: highdicom allows no compressed syntax for BINARY but JPEG 2000, which needs
pylibjpeg); FRACTIONAL (8-bit probabilities) is RLE Lossless (pydicom's own encoder) or JPEG-LS
Lossless (pyjpegls, a requirement of highdicom).
Series and SOP Instance UIDs come from ``uid_seed``, so a rebuilt SEG replaces the first one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless
from pydicom.valuerep import format_number_as_ds

from medq.common.families.ct_lesions.schema import BACKGROUND, CLASSES, LESION_CLASSES, N_CLASSES
from medq.common.inference.dicom_outputs import Algorithm, derived_uid, private_code, private_scheme
from medq.common.inference.types import StudyError

SEG_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
ORIENTATION_TOLERANCE = 1e-4  # direction cosines
SPACING_TOLERANCE = 0.01  # relative: slice gaps this close count as one spacing
LUNG_CONSOLIDATION = Code("95436008", "SCT", "Lung consolidation")
MILLILITRE = Code("ml", "UCUM", "milliliter")  # UCUM ml; pydicom's dictionary lists only cm3 and mm3
LUNG_INVOLVEMENT = private_code("LUNGINV", "Lung involvement by lesions")  # % of the lung volume; no standard code
ALL_LESIONS = "All lung lesions"
# lossless syntaxes pydicom encodes with what highdicom installs (pyjpegls is one of its requirements)
FRACTIONAL_SYNTAXES = (RLELossless, JPEGLSLossless)


@dataclass(frozen=True)
class SegmentCode:
    label: str
    category: Code
    type: Code
    lesion: bool


SEGMENT_CODES: dict[str, SegmentCode] = {
    "ground_glass": SegmentCode("Ground glass", codes.SCT.MorphologicallyAbnormalStructure,
                                codes.DCM.GroundGlassOpacity, True),
    "consolidation": SegmentCode("Consolidation", codes.SCT.MorphologicallyAbnormalStructure, LUNG_CONSOLIDATION,
                                 True),
    "other_lung": SegmentCode("Other lung", codes.SCT.AnatomicalStructure, codes.SCT.Lung, False),
}
SEGMENT_CLASSES = tuple(c for c in range(N_CLASSES) if c != BACKGROUND)  # class index of segment k + 1


def segment_number(class_name: str) -> int:
    """The SEG segment number (1-based) of a class of ``CLASSES`` (not background)."""
    return SEGMENT_CLASSES.index(CLASSES.index(class_name)) + 1


def segment_descriptions(algorithm: Algorithm) -> list[hd.seg.SegmentDescription]:
    identification = algorithm.identification()
    described = []
    for number, cls in enumerate(SEGMENT_CLASSES, start=1):
        code = SEGMENT_CODES[CLASSES[cls]]
        described.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=code.label, segmented_property_category=code.category,
            segmented_property_type=code.type, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
            anatomic_regions=[codes.SCT.Lung] if code.lesion else None))
    return described


def build_seg(sources: Sequence[Dataset], labels: np.ndarray, algorithm: Algorithm, uid_seed: str,
              fractional: bool = False, probabilities: np.ndarray | None = None,
              series_number: int = SEG_SERIES_NUMBER, fractional_syntax: str = RLELossless) -> hd.seg.Segmentation:
    """The SEG of ``labels`` (S, H, W) class indices over ``sources`` (S header-only CT datasets in
    the same slice order). ``fractional``: 8-bit probabilities from ``probabilities`` (S, C, H, W),
    float in [0, 1] or uint8 0..255, one channel per class of ``CLASSES`` (background unused),
    encoded in ``fractional_syntax``: RLE Lossless (what every viewer decodes) or JPEG-LS Lossless
    (64 slices of 512x512 px, 71 % of the values 0 or 255: 2.9 s and 3.6 MB against 1.5 s and
    1.8 MB; noise-like maps: 25 s and 50 MB against 3 s and 10 MB; binary: 0.2 s, 6.4 MB).
    Raises StudyError for sources or labels that do not fit (not CT, mixed orientations, ...)."""
    check_sources(sources)
    labels = check_labels(labels, sources)
    if fractional and fractional_syntax not in FRACTIONAL_SYNTAXES:
        raise ValueError(f"fractional_syntax must be one of {', '.join(u.name for u in FRACTIONAL_SYNTAXES)}")
    pixels = probability_stack(probabilities, labels.shape) if fractional else label_map(labels)
    seg = hd.seg.Segmentation(
        source_images=list(sources), pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(algorithm),
        series_instance_uid=derived_uid(uid_seed, "seg-series"), series_number=series_number,
        sop_instance_uid=derived_uid(uid_seed, "seg-instance"), instance_number=1,
        **algorithm.equipment(),
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
        content_label="LESIONS", content_description=f"{algorithm.name}: lung lesions"[:64],
        series_description=f"{algorithm.name} segmentation"[:64],
        transfer_syntax_uid=fractional_syntax if fractional else ExplicitVRLittleEndian,
        omit_empty_frames=False)
    return state_slice_gap(seg, sources)


def label_map(labels: np.ndarray) -> np.ndarray:
    """Class indices -> segment numbers (background 0), highdicom's label-map style."""
    lut = np.zeros(N_CLASSES, dtype=np.uint8)
    for number, cls in enumerate(SEGMENT_CLASSES, start=1):
        lut[cls] = number
    return lut[labels]


def probability_stack(probabilities: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """(S, C, H, W) per-class probabilities -> (S, H, W, segments) float32 in [0, 1]."""
    if probabilities is None:
        raise ValueError("a fractional SEG needs probabilities (S, C, H, W)")
    probabilities = np.asarray(probabilities)
    expected = (shape[0], N_CLASSES, *shape[1:])
    if probabilities.shape != expected:
        raise ValueError(f"probabilities have shape {probabilities.shape}; expected {expected} (S, C, H, W)")
    chosen = probabilities[:, list(SEGMENT_CLASSES)]
    if chosen.dtype == np.uint8:
        stack = chosen.astype(np.float32) / np.float32(255)
    elif np.issubdtype(chosen.dtype, np.floating):
        stack = chosen.astype(np.float32, copy=False)
        if not np.isfinite(stack).all() or stack.min() < 0 or stack.max() > 1:
            raise ValueError("probabilities must be finite and within [0, 1] (or uint8 0..255)")
    else:
        raise ValueError(f"probabilities must be float in [0, 1] or uint8 0..255, not {chosen.dtype}")
    return np.moveaxis(stack, 1, -1)


def check_labels(labels: np.ndarray, sources: Sequence[Dataset]) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise StudyError(f"labels have shape {labels.shape}; a SEG needs (slices, rows, columns)")
    if labels.shape[0] != len(sources):
        raise StudyError(f"{labels.shape[0]} label slices for {len(sources)} source slices")
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    if labels.shape[1:] != (rows, columns):
        raise StudyError(f"labels of {labels.shape[2]}x{labels.shape[1]} px for slices of {columns}x{rows} px")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= N_CLASSES:
        raise StudyError(f"labels must be class indices 0..{N_CLASSES - 1} ({', '.join(CLASSES)})")
    return labels.astype(np.uint8, copy=False)


def check_sources(sources: Sequence[Dataset]) -> None:
    """One CT series of single-frame slices of one size, one orientation and one frame of
    reference; the error names the slice (1-based, in the given order), never a UID or name."""
    if not sources:
        raise StudyError("a SEG needs at least one source slice")
    n = len(sources)
    first = sources[0]
    for k, ds in enumerate(sources, start=1):
        where = f"slice {k} of {n}"
        modality = str(ds.get("Modality") or "").strip().upper()
        if modality != "CT":
            raise StudyError(f"{where}: modality {modality or 'missing'}, not CT; a lesion SEG needs a CT series")
        if not ds.get("FrameOfReferenceUID"):
            raise StudyError(f"{where}: no FrameOfReferenceUID; a SEG cannot be placed in the patient's space")
        if int(ds.get("NumberOfFrames") or 1) != 1:
            raise StudyError(f"{where}: a multi-frame image; a lesion SEG is built on single-frame slices")
        orientation = _floats(ds, "ImageOrientationPatient", 6)
        if orientation is None or _floats(ds, "ImagePositionPatient", 3) is None:
            raise StudyError(f"{where}: no ImageOrientationPatient/ImagePositionPatient")
        if k == 1:
            continue
        if ds.get("SeriesInstanceUID") != first.get("SeriesInstanceUID"):
            raise StudyError(f"{where}: from another series than slice 1")
        if ds.FrameOfReferenceUID != first.FrameOfReferenceUID:
            raise StudyError(f"{where}: another frame of reference than slice 1")
        if (int(ds.Rows), int(ds.Columns)) != (int(first.Rows), int(first.Columns)):
            raise StudyError(f"{where}: {ds.Columns}x{ds.Rows} px, slice 1 is {first.Columns}x{first.Rows} px")
        if not np.allclose(orientation, _floats(first, "ImageOrientationPatient", 6), atol=ORIENTATION_TOLERANCE):
            raise StudyError(f"{where}: another orientation (ImageOrientationPatient) than slice 1; "
                             "a SEG of one series needs one orientation")


def state_slice_gap(seg: hd.seg.Segmentation, sources: Sequence[Dataset]) -> hd.seg.Segmentation:
    """The SEG's Spacing Between Slices measured from the sources' positions. highdicom copies the
    first header's own value, even over a ``pixel_measures`` argument of the same pixel spacing,
    and a header's value can disagree with its positions (CT_small says 5 mm, whatever its
    neighbours): a SEG stating it is then not read back as a volume. Left out when the gaps differ."""
    measures = seg.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
    if not measures:
        return seg
    gap = slice_gap(sources)
    if gap is not None:
        measures[0].SpacingBetweenSlices = format_number_as_ds(gap)
    elif "SpacingBetweenSlices" in measures[0]:
        del measures[0].SpacingBetweenSlices
    return seg


def slice_gap(sources: Sequence[Dataset]) -> float | None:
    """The one distance between neighbouring slices along the plane's normal, None when there is
    one slice or the gaps differ (a SEG then states no spacing between slices)."""
    if len(sources) < 2:
        return None
    orientation = _floats(sources[0], "ImageOrientationPatient", 6)
    normal = np.cross(orientation[:3], orientation[3:])
    depth = np.array([_floats(ds, "ImagePositionPatient", 3) @ normal for ds in sources])
    gaps = np.abs(np.diff(np.sort(depth)))
    gap = float(np.median(gaps))
    if gap <= 0 or np.abs(gaps - gap).max() > SPACING_TOLERANCE * gap:
        return None
    return gap


def _floats(ds: Dataset, keyword: str, n: int) -> np.ndarray | None:
    value = ds.get(keyword)
    try:
        values = np.array([float(v) for v in (value if n > 1 else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return values if values.shape == (n,) and np.isfinite(values).all() else None


def build_lesion_sr(seg: Dataset, sources: Sequence[Dataset], measures: dict, algorithm: Algorithm, uid_seed: str,
                    series_number: int = SR_SERIES_NUMBER) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 Measurement Report of ``measures`` (``predict.measure``) for the SEG ``seg``
    (built by ``build_seg``) over ``sources``:

    - per lesion class, a volumetric ROI group (TID 1411) whose region is the SEG's segment of
      that class (its source slices referenced), with its Volume (SCT 118565006) in ml;
    - one group (TID 1501) for all lesions together, finding site lung: their total Volume in ml
      and the lung involved in % (99MEDQ LUNGINV: lesion / (lesion + other lung) voxels). A TID
      1411 group holds one segment only, so the total, which spans two, stands apart.

    A volume that is None (no spacing) is left out; the lesion groups stay (their segments).
    The evidence is the SEG and every source slice; UIDs come from ``uid_seed``."""
    numbers = {item.SegmentLabel: int(item.SegmentNumber) for item in seg.SegmentSequence}
    algorithm_id = algorithm.sr_identification()
    groups = []
    for name in LESION_CLASSES:
        code = SEGMENT_CODES[name]
        if code.label not in numbers:
            raise ValueError(f"the SEG has no segment {code.label!r}; it was not built by build_seg")
        millilitres = measures["lesion_ml"].get(name)
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(uid_seed, "sr-roi", name), identifier=code.label),
            referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg, numbers[code.label]),
            finding_type=code.type, finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)], algorithm_id=algorithm_id,
            measurements=_volume(millilitres)))
    overall = _volume(measures.get("lesion_total_ml"))
    if measures.get("lung_involvement_pct") is not None:
        overall.append(hd.sr.Measurement(name=LUNG_INVOLVEMENT, value=float(measures["lung_involvement_pct"]),
                                         unit=codes.UCUM.Percent))
    if overall:
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(uid_seed, "sr-all"), identifier=ALL_LESIONS),
            finding_type=codes.SCT.MorphologicallyAbnormalStructure, finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)],
            algorithm_id=algorithm_id, measurements=overall))
    report = hd.sr.MeasurementReport(observation_context=algorithm.observation_context(),
                                     procedure_reported=codes.cid100.CTUnspecifiedBodyRegion,
                                     imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(
        evidence=[seg, *sources], content=report, series_instance_uid=derived_uid(uid_seed, "sr-series"),
        series_number=series_number, sop_instance_uid=derived_uid(uid_seed, "sr-instance"), instance_number=1,
        manufacturer=algorithm.equipment()["manufacturer"], is_complete=True,
        series_description=f"{algorithm.name} lesion volumes"[:64], coding_schemes=[private_scheme()])


def _volume(millilitres: float | None) -> list[hd.sr.Measurement]:
    if millilitres is None:
        return []
    return [hd.sr.Measurement(name=codes.SCT.Volume, value=float(millilitres), unit=MILLILITRE)]
