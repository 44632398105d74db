"""Bulk inference with a trained segmenter: one mask and its measurements per CT study.

For each study (a .npy volume or a DICOM series, ``common.families.ct_lesions.volumes``) the predictor
normalises with the HU statistics stored in the checkpoint, predicts slice batches at the model
size, resizes the logits to each slice's own size and takes the arg-max. It writes

- ``<out>/masks/<study id>.npz``: ``labels`` (S, H, W) uint8 class indices (compressed), with
  ``classes``, ``spacing_mm`` (slice, row, column; empty when unknown) and, for a DICOM series,
  ``sop_instance_uids``: the slice each mask slice belongs to;
- ``<out>/overlays/<study id>.png``: the slice with the most lesion, and its prediction;

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
                 slices_per_batch: int = 32):
        """``out_dir``: where ``predict`` writes masks and overlays (``segment`` needs none)."""
        from medq.common.families.ct_lesions.train import load_segmenter

        model, self.spec, self.normaliser = load_segmenter(Path(checkpoint))
        self.device = torch.device(device) if device is not None else pick_device()
        self.use_amp = self.spec.amp and self.device.type == "cuda"  # as evaluation does
        self.model = model.to(self.device).eval()
        self.image_size = self.spec.image_size
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.slices_per_batch = int(slices_per_batch)
        self.decoder = VolumeDecoder(self.normaliser, seg_transform(self.spec, train=False))

    def model_input(self, hu: np.ndarray) -> torch.Tensor:
        return model_input(hu, self.normaliser, self.decoder.resize)

    @torch.no_grad()
    def segment(self, inputs: torch.Tensor, out_size: tuple[int, int], batch_size: int | None = None) -> np.ndarray:
        """Class indices (S, H, W) uint8 of model inputs (S, 1, size, size)."""
        from medq.common.families.ct_lesions.train import predict_logits

        step = batch_size or self.slices_per_batch
        labels = [predict_logits(self.model, inputs[k:k + step], self.device, self.use_amp, out_size)
                  .argmax(dim=1).to(torch.uint8).cpu().numpy() for k in range(0, len(inputs), step)]
        return np.concatenate(labels)

    def predict(self, study_ids: list[int], batch: list[tuple[CTVolume, torch.Tensor]]) -> list[StudyOutcome]:
        if self.out_dir is None:
            raise SpecError(NEEDS_OUT)
        outcomes = []
        for study_id, (volume, inputs) in zip(study_ids, batch):
            labels = self.segment(inputs, volume.hu.shape[1:])
            outcomes.append(_done(study_id, volume, labels, self.out_dir))
        return outcomes

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def mask_path(out_dir: Path, study_id: int) -> Path:
    return Path(out_dir) / "masks" / f"{int(study_id)}.npz"


def _done(study_id: int, volume: CTVolume, labels: np.ndarray, out_dir: Path) -> StudyOutcome:
    from medq.common.families.ct_lesions.overlay import prediction_panel

    path = mask_path(out_dir, study_id)
    write_atomic(path, lambda handle: np.savez_compressed(
        handle, labels=labels, classes=np.array(CLASSES), spacing_mm=np.array(volume.spacing_mm or (), dtype=np.float64),
        sop_instance_uids=np.array(volume.slice_uids, dtype=str)))
    lesion_per_slice = np.isin(labels, LESIONS).sum(axis=(1, 2))
    shown = int(lesion_per_slice.argmax()) if lesion_per_slice.any() else len(labels) // 2
    prediction_panel(volume.hu[shown], labels[shown], Path(out_dir) / "overlays" / f"{int(study_id)}.png")
    measures = measure(labels, volume.spacing_mm)
    measures["mask"] = str(path.relative_to(out_dir))
    if volume.grid is not None:  # a NIfTI source: the mask also in its own grid, with its affine
        from medq.common.families.ct_lesions.nifti import write_mask

        nifti = write_mask(Path(out_dir) / "masks" / f"{int(study_id)}.nii.gz", labels, volume.grid)
        measures["mask_nifti"] = str(nifti.relative_to(out_dir))
    height, width = labels.shape[1:]
    return StudyOutcome(study_id, "done", result=measures, image_size=(int(width), int(height)), uids=volume.uids,
                        source_format=volume.source_format)
