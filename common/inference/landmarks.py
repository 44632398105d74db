"""The predictor of every landmark model of 2D images, less its models.

A family subclasses ``LandmarkPredictor`` and gives ``locate(images, sizes)``: a batch of
model-size images to landmarks and spread in pixels of each original. The rest is shared: the
``ImageDecoder`` in the loader processes, quality checks (``points.LANDMARK_CHECKS`` plus the
family's own ``checks``), millimetres from each image's spacing, the stored result, and, with
an output folder, an overlay per done study at ``<out>/overlays/<study key>.png`` (joining the
family's ``overlay_pairs`` and ``overlay_axis``) and, for a DICOM source, a TID 1500 DICOM SR at
``<out>/sr/<study id>.dcm``: a point per landmark (the family's ``landmark_names``), the
distances of its ``sr_distances`` pairs in mm where the image has a spacing, and the review flag
(``landmark_sr.build_landmark_sr``). ``--outputs`` chooses among them (``outputs.OutputPlan``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from medq.common.inference.chunk import StudyPredictor
from medq.common.inference.images import ImageBatch, ImageDecoder
from medq.common.inference.outcome import StudyOutcome
from medq.common.inference.outputs import OutputPlan, note_failed, note_missing, note_output
from medq.common.inference.types import StudyError
from medq.common.inference.overlay import write_overlay
from medq.common.inference.points import (
    DEFAULT_SPREAD_LIMIT_FRACTION, LANDMARK_CHECKS, Check, landmark_result, qc_reasons,
)


class LandmarkPredictor(StudyPredictor):
    checks: ClassVar[tuple[Check, ...]] = LANDMARK_CHECKS
    overlay_pairs: ClassVar[tuple[tuple[int, int], ...]] = ()
    overlay_axis: ClassVar[tuple[int, ...]] = ()
    landmark_names: ClassVar[tuple[str, ...]] = ()  # for the DICOM SR, in landmark order
    sr_distances: ClassVar[tuple[tuple[int, int], ...]] = ()  # landmark pairs whose distance the SR gives

    def __init__(self, image_size: int, device: torch.device, studies_per_batch: int = 32,
                 out_dir: Path | str | None = None,
                 spread_limit_fraction: float = DEFAULT_SPREAD_LIMIT_FRACTION, outputs: OutputPlan | None = None):
        """``out_dir``: overlays (and SRs) go under it (none without it); ``outputs``: which files
        (default: all where the input allows); ``spread_limit_fraction``: the spread check's
        limit, as a fraction of each image's width."""
        self.image_size = int(image_size)
        self.device = torch.device(device)
        self.studies_per_batch = int(studies_per_batch)
        self.outputs = outputs or OutputPlan(Path(out_dir) if out_dir else None)
        self.overlay_dir = self.outputs.out_dir / "overlays" if self.outputs.wants("overlay") else None
        self.spread_limit_fraction = float(spread_limit_fraction)
        self.decoder = ImageDecoder(self.image_size, keep_pixels=self.overlay_dir is not None,
                                    keep_header=self.outputs.wants("sr"))

    models: list = []  # the family's models on ``device``

    def close(self) -> None:
        """Drop the models and give their GPU memory back (a worker lives on after the task)."""
        self.models = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @staticmethod
    def spread(points: np.ndarray) -> np.ndarray:
        """(B, K) spread of several models' points (M, B, K, 2) about their mean: the population
        standard deviation, sqrt(mean_m |p_m - mean p|^2) (radial); 0 for one model."""
        return np.sqrt(((points - points.mean(axis=0)) ** 2).sum(axis=-1).mean(axis=0))

    def locate(self, images: torch.Tensor, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks (B, K, 2) and spread (B, K) in pixels of each ORIGINAL image; ``images``
        (B, 1, S, S) uint8 or float in [0, 1]; ``sizes`` (B, 2) (width, height)."""
        raise NotImplementedError

    def predict(self, study_ids: list[int], batch: ImageBatch) -> list[StudyOutcome]:
        landmarks, spread = self.locate(batch.images, batch.sizes)
        return [self._done(study_id, info, landmarks[k], spread[k])
                for k, (study_id, info) in enumerate(zip(study_ids, batch.infos))]

    def qc(self, landmarks: np.ndarray, spread: np.ndarray, size: tuple[int, int]) -> list[str]:
        return qc_reasons(landmarks, spread, size, self.spread_limit_fraction * size[0], self.checks)

    def _done(self, study_id: int, info, landmarks: np.ndarray, spread: np.ndarray) -> StudyOutcome:
        reasons = self.qc(landmarks, spread, info.size)
        result = landmark_result(landmarks, spread, info.spacing_mm, reasons, info.spacing_source)
        if self.overlay_dir is not None and info.pixels is not None:
            path = self.outputs.path("overlay", study_id)
            write_overlay(info.pixels, landmarks, bool(reasons), path, self.overlay_pairs, self.overlay_axis)
            note_output(result, self.outputs, "overlay", path)
        if self.outputs.wants("sr"):
            self._sr(study_id, info, landmarks, reasons, result)
        return StudyOutcome(study_id, "done", result=result, qc_flag=bool(reasons), image_size=info.size,
                            uids=info.uids, source_format=info.source_format)

    def _sr(self, study_id: int, info, landmarks: np.ndarray, reasons: list[str], result: dict) -> None:
        if info.header is None:
            return note_missing(result, self.outputs, "sr", f"the source is {info.source_format}, not DICOM")
        from medq.common.inference.dicom_outputs import write_dicom
        from medq.common.inference.landmark_sr import build_landmark_sr

        names = self.landmark_names or tuple(f"Landmark {k}" for k in range(1, len(landmarks) + 1))
        seed = self.outputs.uid_seed(study_id, info.uids.get("SOPInstanceUID", ""))
        try:
            sr = build_landmark_sr(info.header, names, landmarks, info.spacing_mm, self.sr_distances, reasons,
                                   self.outputs.algorithm, seed)
        except (StudyError, ValueError) as exc:  # e.g. a landmark that came out NaN
            return note_failed(result, "sr", str(exc))
        path = write_dicom(self.outputs.path("sr", study_id), sr)
        note_output(result, self.outputs, "sr", path, sr.SOPInstanceUID)

    @staticmethod
    def to_device(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
        """A batch on the device as float in [0, 1] (uint8 travels as bytes and is scaled there)."""
        images = images.to(device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return images.contiguous(memory_format=torch.channels_last) if channels_last else images
