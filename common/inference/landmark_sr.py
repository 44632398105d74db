"""Landmarks of one 2D image as a DICOM SR (highdicom TID 1500 Measurement Report), torch-free.

Shared by the landmark families (chest, cephalometric); each passes its names and distance
pairs. The document is a Comprehensive SR: its points are 2D SCOORD in the image's own pixel
space, which Comprehensive SR holds (Comprehensive 3D SR is for patient-space SCOORD3D, which a
radiograph has no frame of reference for; Enhanced SR forbids the references TID 1500 makes).

- One planar ROI group (TID 1410) per landmark: tracking identifier = its name, finding type
  SCT 711101009 "Anatomical point", region a SCOORD POINT on the source image. medq's landmarks
  are 0-based pixel indices of the pixel centre (x right, y down); SCOORD puts the top-left
  corner of the top-left pixel at (0, 0), so its centre is (0.5, 0.5): the point is px + 0.5.
- One group (TID 1501) per distance pair, when the pixel spacing is known: Distance (DCM
  121206) in mm, inferred from a two-point SCOORD POLYLINE between the landmarks.
- One group (TID 1501) "Quality control": the qualitative evaluation "Review required"
  (99MEDQ REVIEW, private: the standard has no such concept) Yes/No (SCT 373066001/373067005),
  and each reason as TEXT (99MEDQ REVIEWWHY): TID 1501 row 12 allows coded questions with coded
  or text answers; highdicom builds only coded ones, so the TEXT items are added to the group.
"""

from __future__ import annotations

import math
from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from medq.common.inference.dicom_outputs import Algorithm, derived_uid, private_code, private_scheme

SR_SERIES_NUMBER = 9903
REVIEW_REQUIRED = private_code("REVIEW", "Review required")
REVIEW_REASON = private_code("REVIEWWHY", "Reason for review")
QUALITY_CONTROL = "Quality control"
PIXEL_CENTRE = 0.5  # SCOORD of the centre of pixel (0, 0)
PROCEDURES = {"CT": codes.cid100.CTUnspecifiedBodyRegion, "CR": codes.cid100.XRUnspecifiedBodyRegion,
              "DX": codes.cid100.XRUnspecifiedBodyRegion}  # any other modality: "Imaging procedure"


def scoord(landmarks_px: np.ndarray) -> np.ndarray:
    """medq pixel indices (N, 2) x, y -> SCOORD (column, row) image coordinates (float32)."""
    return np.asarray(landmarks_px, dtype=np.float64).reshape(-1, 2).astype(np.float32) + np.float32(PIXEL_CENTRE)


def distance_mm(landmarks_px: np.ndarray, pair: tuple[int, int], spacing_mm: tuple[float, float]) -> float:
    """Distance between two landmarks in mm; ``spacing_mm`` (row, column) = (y, x) mm per pixel."""
    (xa, ya), (xb, yb) = np.asarray(landmarks_px, dtype=np.float64)[list(pair)]
    row, column = spacing_mm
    return math.hypot((xb - xa) * column, (yb - ya) * row)


def build_landmark_sr(source: Dataset, names: Sequence[str], landmarks_px: np.ndarray,
                      spacing_mm: tuple[float, float] | None, distance_pairs: Sequence[tuple[int, int]],
                      qc_reasons: Sequence[str], algorithm: Algorithm, uid_seed: str,
                      series_number: int = SR_SERIES_NUMBER) -> hd.sr.ComprehensiveSR:
    """The SR of ``landmarks_px`` (N, 2) on ``source`` (a header-only single-frame image of any
    modality), named by ``names``; distances for ``distance_pairs`` (0-based index pairs) when
    ``spacing_mm`` is given; review required when ``qc_reasons`` is not empty."""
    points = _check(source, names, landmarks_px, distance_pairs)
    algorithm_id = algorithm.sr_identification()
    groups = []
    for index, (name, point) in enumerate(zip(names, scoord(points))):
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(uid_seed, "landmark", str(index)),
                                                         identifier=str(name)),
            referenced_region=hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POINT,
                                                graphic_data=point.reshape(1, 2), source_image=_image(source)),
            finding_type=codes.SCT.AnatomicalPoint, algorithm_id=algorithm_id))
    if spacing_mm is not None:
        for a, b in distance_pairs:
            groups.append(_distance_group(source, names, points, (a, b), spacing_mm, algorithm_id, uid_seed))
    groups.append(_review_group(qc_reasons, algorithm_id, uid_seed))
    modality = str(source.get("Modality") or "").strip().upper()
    report = hd.sr.MeasurementReport(observation_context=algorithm.observation_context(),
                                     procedure_reported=PROCEDURES.get(modality, codes.cid100.ImagingProcedure),
                                     imaging_measurements=groups)
    return hd.sr.ComprehensiveSR(
        evidence=[source], content=report, series_instance_uid=derived_uid(uid_seed, "sr-series"),
        series_number=series_number, sop_instance_uid=derived_uid(uid_seed, "sr-instance"), instance_number=1,
        manufacturer=algorithm.equipment()["manufacturer"], is_complete=True,
        series_description=f"{algorithm.name} landmarks"[:64], coding_schemes=[private_scheme()])


def _check(source: Dataset, names: Sequence[str], landmarks_px: np.ndarray,
           distance_pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    points = np.asarray(landmarks_px, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(names):
        raise ValueError(f"landmarks of shape {points.shape} for {len(names)} names; expected ({len(names)}, 2)")
    bad = [str(names[k]) for k in np.flatnonzero(~np.isfinite(points).all(axis=1))]
    if bad:
        raise ValueError(f"landmark(s) {', '.join(bad)} have no finite position")
    if int(source.get("NumberOfFrames") or 1) != 1:
        raise ValueError("a landmark SR is built on a single-frame image")
    for a, b in distance_pairs:
        if not (0 <= a < len(names) and 0 <= b < len(names)) or a == b:
            raise ValueError(f"distance pair ({a}, {b}) is not two landmarks of {len(names)}")
    return points


def _image(source: Dataset) -> hd.sr.SourceImageForRegion:
    return hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID)


def _distance_group(source: Dataset, names: Sequence[str], points: np.ndarray, pair: tuple[int, int],
                    spacing_mm: tuple[float, float], algorithm_id, uid_seed: str):
    a, b = pair
    line = hd.sr.CoordinatesForMeasurement(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                           graphic_data=scoord(points[[a, b]]), source_image=_image(source))
    distance = hd.sr.Measurement(name=codes.DCM.Distance, value=distance_mm(points, pair, spacing_mm),
                                 unit=codes.UCUM.Millimeter, referenced_coordinates=[line])
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(uid_seed, "distance", str(a), str(b)),
                                                     identifier=f"{names[a]} - {names[b]}"),
        algorithm_id=algorithm_id, measurements=[distance])


def _review_group(qc_reasons: Sequence[str], algorithm_id, uid_seed: str):
    evaluation = hd.sr.QualitativeEvaluation(REVIEW_REQUIRED, codes.SCT.Yes if qc_reasons else codes.SCT.No)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(uid_seed, "quality-control"),
                                                     identifier=QUALITY_CONTROL),
        algorithm_id=algorithm_id, qualitative_evaluations=[evaluation])
    for reason in qc_reasons:
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=REVIEW_REASON, value=str(reason), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group
