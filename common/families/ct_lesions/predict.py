"""Bulk inference with a trained segmenter: one mask and its measurements per CT study.

For each study (a .npy volume or a DICOM series, ``common.families.ct_lesions.volumes``) the predictor
normalises with the HU statistics stored in the checkpoint, predicts slice batches at the model
size, resizes the logits to each slice's own size and takes the arg-max. It writes

- ``<out>/masks/<study key>.npz``: ``labels`` (S, H, W) uint8 class indices (compressed), with
  ``classes``, ``spacing_mm`` (slice, row, column; empty when unknown) and, for a DICOM series,
  ``sop_instance_uids``: the slice each mask slice belongs to;
- ``<out>/overlays/<study key>.png``: the slice with the most lesion, and its prediction;
- ``<out>/masks/<study key>.nii.gz`` for a NIfTI source: the mask in its grid, with its affine;
- ``<out>/seg/<study id>.dcm`` and ``<out>/sr/<study id>.dcm`` for a DICOM series: a DICOM
  Segmentation (a segment per class, binary or fractional) and a TID 1500 SR of the lesion
  volumes and the lung involved that references it (``dicom_seg.py``);

``--outputs`` chooses among them (``medq.common.inference.outputs``);

and records per study (its ``result``): voxels per class, the lesion volume per lesion class in
millilitres (when the series gives a spacing), and the percentage of lung involved,
100 · lesion / (lesion + other lung) voxels.

``SegPredictor`` is a ``StudyPredictor`` of the one chunk loop (``medq.common.inference.chunk``):
its ``VolumeDecoder`` reads and normalises a volume in the loader processes (it holds the HU
statistics and the resize, never the model), one volume per batch, and ``predict`` segments it
in slice batches of the job's batch size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medq.common.atomic_files import write_atomic
from medq.common.errors import SpecError
from medq.common.families.ct_lesions.augment import seg_transform
from medq.common.families.ct_lesions.schema import CLASSES, LESIONS, OTHER_LUNG
from medq.common.families.ct_lesions.volumes import CTVolume, load_ct_volume
from medq.common.inference.chunk import StudyDecoder, StudyPredictor
from medq.common.training.kit import pick_device
from medq.common.inference.outcome import StudyOutcome
from medq.common.inference.outputs import OutputPlan, note_failed, note_missing, note_output
from medq.common.inference.types import StudyError

NEEDS_OUT = "a segmentation model writes masks: the job needs an output folder (--out)"


def measure(labels: np.ndarray, spacing_mm: tuple[float, float, float] | None) -> dict[str, Any]:
    """Voxels per class, lesion millilitres per lesion class (None without a spacing), lesion
    total, and the percentage of lung involved (None when the mask holds no lung at all)."""
    voxels = np.bincount(labels.ravel(), minlength=len(CLASSES))
    lesion = int(sum(voxels[c] for c in LESIONS))
    lung = lesion + int(voxels[OTHER_LUNG])
    voxel_ml = None if spacing_mm is None else float(np.prod(spacing_mm)) / 1000.0
    return {
        "slices": int(labels.shape[0]),
        "voxels": {name: int(voxels[c]) for c, name in enumerate(CLASSES)},
        "lesion_ml": {CLASSES[c]: (None if voxel_ml is None else float(voxels[c]) * voxel_ml) for c in LESIONS},
        "lesion_total_ml": None if voxel_ml is None else lesion * voxel_ml,
        "lung_involvement_pct": None if lung == 0 else 100.0 * lesion / lung,
        "spacing_mm": None if spacing_mm is None else [float(v) for v in spacing_mm],
    }


def model_input(hu: np.ndarray, normaliser, resize) -> torch.Tensor:
    """(S, H, W) HU -> (S, 1, size, size) float32 z-scores at the model size."""
    return torch.from_numpy(np.stack([normaliser.from_unit(resize(image=normaliser.unit(s))["image"])
                                      for s in hu])).unsqueeze(1)


class VolumeDecoder(StudyDecoder):
    """A study key -> (CTVolume, model inputs); in the loader processes (no model here)."""

    def __init__(self, normaliser, resize):
        self.normaliser, self.resize = normaliser, resize

    def decode(self, archive, key: str) -> tuple[CTVolume, torch.Tensor]:
        volume = load_ct_volume(archive, key)
        return volume, model_input(volume.hu, self.normaliser, self.resize)


class SegPredictor(StudyPredictor):
    """A trained segmenter in eval mode on one device (float16 autocast on CUDA)."""

    studies_per_batch = 1  # a volume is a batch of its own slices

    def __init__(self, checkpoint: Path, device: torch.device | str | None = None, out_dir: Path | str | None = None,
                 slices_per_batch: int = 32, outputs: OutputPlan | None = None):
        """``out_dir``: where ``predict`` writes masks and overlays (``segment`` needs none);
        ``outputs``: which files (default: every one the study's input allows)."""
        from medq.common.families.ct_lesions.train import load_segmenter

        model, self.spec, self.normaliser = load_segmenter(Path(checkpoint))
        self.device = torch.device(device) if device is not None else pick_device()
        self.use_amp = self.spec.amp and self.device.type == "cuda"  # as evaluation does
        self.model = model.to(self.device).eval()
        self.image_size = self.spec.image_size
        self.outputs = outputs or OutputPlan(Path(out_dir) if out_dir is not None else None)
        self.out_dir = self.outputs.out_dir
        self.slices_per_batch = int(slices_per_batch)
        self.decoder = VolumeDecoder(self.normaliser, seg_transform(self.spec, train=False))

    def model_input(self, hu: np.ndarray) -> torch.Tensor:
        return model_input(hu, self.normaliser, self.decoder.resize)

    @torch.no_grad()
    def segment(self, inputs: torch.Tensor, out_size: tuple[int, int], batch_size: int | None = None,
                probabilities: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Class indices (S, H, W) uint8 of model inputs (S, 1, size, size); with
        ``probabilities``, also the softmax per class (S, C, H, W) as uint8 (255 = 1.0)."""
        from medq.common.families.ct_lesions.train import predict_logits

        step = batch_size or self.slices_per_batch
        labels, probs = [], []
        for k in range(0, len(inputs), step):
            logits = predict_logits(self.model, inputs[k:k + step], self.device, self.use_amp, out_size)
            labels.append(logits.argmax(dim=1).to(torch.uint8).cpu().numpy())
            if probabilities:
                probs.append((logits.softmax(dim=1) * 255).round().to(torch.uint8).cpu().numpy())
        return (np.concatenate(labels), np.concatenate(probs)) if probabilities else np.concatenate(labels)

    def predict(self, study_ids: list[int], batch: list[tuple[CTVolume, torch.Tensor]]) -> list[StudyOutcome]:
        if self.out_dir is None:
            raise SpecError(NEEDS_OUT)
        fractional = self.outputs.seg_type == "fractional" and self.outputs.wants("seg")
        outcomes = []
        for study_id, (volume, inputs) in zip(study_ids, batch):
            found = self.segment(inputs, volume.hu.shape[1:], probabilities=fractional and bool(volume.headers))
            labels, probs = found if isinstance(found, tuple) else (found, None)
            outcomes.append(_done(study_id, volume, labels, self.outputs, probs))
        return outcomes

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _done(study_id: int, volume: CTVolume, labels: np.ndarray, outputs: OutputPlan,
          probabilities: np.ndarray | None = None) -> StudyOutcome:
    """The study's measurements, and each output it wants that its input allows."""
    result = measure(labels, volume.spacing_mm)
    for name, write in WRITERS.items():
        if outputs.wants(name):
            write(study_id, volume, labels, outputs, result, probabilities)
    height, width = labels.shape[1:]
    return StudyOutcome(study_id, "done", result=result, image_size=(int(width), int(height)), uids=volume.uids,
                        source_format=volume.source_format)


def _npz(study_id, volume, labels, outputs, result, probabilities) -> None:
    path = outputs.path("npz", study_id)
    write_atomic(path, lambda handle: np.savez_compressed(
        handle, labels=labels, classes=np.array(CLASSES), spacing_mm=np.array(volume.spacing_mm or (), dtype=np.float64),
        sop_instance_uids=np.array(volume.slice_uids, dtype=str)))
    note_output(result, outputs, "npz", path)


def _overlay(study_id, volume, labels, outputs, result, probabilities) -> None:
    from medq.common.families.ct_lesions.overlay import prediction_panel

    lesion_per_slice = np.isin(labels, LESIONS).sum(axis=(1, 2))
    shown = int(lesion_per_slice.argmax()) if lesion_per_slice.any() else len(labels) // 2
    path = outputs.path("overlay", study_id)
    prediction_panel(volume.hu[shown], labels[shown], path)
    note_output(result, outputs, "overlay", path)


def _nifti(study_id, volume, labels, outputs, result, probabilities) -> None:
    if volume.grid is None:
        return note_missing(result, outputs, "nifti", f"the source is {volume.source_format}, not NIfTI")
    from medq.common.families.ct_lesions.nifti import write_mask

    note_output(result, outputs, "nifti", write_mask(outputs.path("nifti", study_id), labels, volume.grid))


def _seg_and_sr(study_id, volume, labels, outputs, result, probabilities) -> None:
    """The DICOM SEG and, when wanted, the SR of its measurements (which references the SEG)."""
    if not volume.headers:
        for name in ("seg", "sr"):
            note_missing(result, outputs, name, f"the source is {volume.source_format}, not a DICOM series")
        return
    from medq.common.families.ct_lesions.dicom_seg import build_lesion_sr, build_seg
    from medq.common.inference.dicom_outputs import write_dicom

    seed = outputs.uid_seed(study_id, volume.uids.get("SeriesInstanceUID", ""))
    try:
        seg = build_seg(volume.headers, labels, outputs.algorithm, seed,
                        fractional=probabilities is not None, probabilities=probabilities)
    except (StudyError, ValueError) as exc:  # this series cannot be a SEG (no frame of reference, ...)
        note_failed(result, "seg", str(exc))
        return note_failed(result, "sr", "the lesion SR references the SEG") if outputs.wants("sr") else None
    note_output(result, outputs, "seg", write_dicom(outputs.path("seg", study_id), seg), seg.SOPInstanceUID)
    if outputs.wants("sr"):
        try:
            sr = build_lesion_sr(seg, volume.headers, result, outputs.algorithm, seed)
        except (StudyError, ValueError) as exc:
            return note_failed(result, "sr", str(exc))
        note_output(result, outputs, "sr", write_dicom(outputs.path("sr", study_id), sr), sr.SOPInstanceUID)


def _sr_alone(study_id, volume, labels, outputs, result, probabilities) -> None:
    if not outputs.wants("seg"):  # the SR references a SEG: without one, there is nothing to reference
        note_missing(result, outputs, "sr", "the lesion SR references the DICOM SEG; ask for seg too")


# in this order: the SR follows its SEG
WRITERS = {"npz": _npz, "overlay": _overlay, "nifti": _nifti, "seg": _seg_and_sr, "sr": _sr_alone}
