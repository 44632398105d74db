"""Bulk inference with a trained segmenter: one mask and its measurements per CT study.

For each study (a .npy volume or a DICOM series, ``common.families.ct_lesions.volumes``) the predictor
normalises with the HU statistics stored in the checkpoint, predicts slice batches at the model
size, resizes the logits to each slice's own size and takes the arg-max. It writes

- ``<out>/masks/<study id>.npz``: ``labels`` (S, H, W) uint8 class indices (compressed), with
  ``classes``, ``spacing_mm`` (slice, row, column; empty when unknown) and, for a DICOM series,
  ``sop_instance_uids``: the slice each mask slice belongs to;
- ``<out>/overlays/<study id>.png``: the slice with the most lesion, and its prediction;

and records per study: voxels per class, the lesion volume per lesion class in millilitres
(when the series gives a spacing), and the percentage of lung involved,
100 · lesion / (lesion + other lung) voxels.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medq.common.atomic_files import write_atomic
from medq.common.inference.outcome import ChunkStats, StudyOutcome
from medq.common.inference.types import StudyError
from medq.common.training.kit import pick_device
from medq.common.families.ct_lesions.augment import seg_transform
from medq.common.families.ct_lesions.schema import CLASSES, LESIONS, OTHER_LUNG
from medq.common.families.ct_lesions.volumes import CTVolume, load_ct_volume


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


class SegPredictor:
    """A trained segmenter in eval mode on one device (float16 autocast on CUDA)."""

    def __init__(self, checkpoint: Path, device: torch.device | str | None = None):
        from medq.common.families.ct_lesions.train import load_segmenter

        model, self.spec, self.normaliser = load_segmenter(Path(checkpoint))
        self.device = torch.device(device) if device is not None else pick_device()
        self.use_amp = self.spec.amp and self.device.type == "cuda"  # as evaluation does
        self.model = model.to(self.device).eval()
        self.image_size = self.spec.image_size
        self._resize = seg_transform(self.spec, train=False)

    def model_input(self, hu: np.ndarray) -> torch.Tensor:
        return model_input(hu, self.normaliser, self._resize)

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, out_size: tuple[int, int], batch_size: int) -> np.ndarray:
        """Class indices (S, H, W) uint8 of model inputs (S, 1, size, size)."""
        from medq.common.families.ct_lesions.train import predict_logits

        labels = [predict_logits(self.model, inputs[k:k + batch_size], self.device, self.use_amp, out_size)
                  .argmax(dim=1).to(torch.uint8).cpu().numpy() for k in range(0, len(inputs), batch_size)]
        return np.concatenate(labels)

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def run_chunk(self, items: Sequence[tuple[int, str]], archive: Any, batch_size: int, loader_workers: int | None,
                  on_results: Callable[[list[StudyOutcome]], None], should_stop: Callable[[], bool] = lambda: False,
                  out_dir: Path | None = None) -> ChunkStats:
        """Every (study id, key) of ``items``: masks and overlays under ``out_dir``, one outcome
        per study handed to ``on_results`` as it ends (a study that cannot be read fails alone)."""
        from medq.common.inference.predict import loader_processes

        if out_dir is None:
            raise StudyError("a segmentation model writes masks: the job needs an output folder (--out)")
        loader = DataLoader(_Volumes(items, archive, self), batch_size=None, shuffle=False,
                            num_workers=loader_processes(loader_workers, self.device))
        counts, seen, slices = {"done": 0, "failed": 0, "skipped": 0}, 0, 0
        start = time.perf_counter()
        volumes = iter(loader)
        try:
            while not should_stop():
                item = next(volumes, None)
                if item is None:
                    break
                study_id, decoded = item
                if isinstance(decoded, StudyOutcome):
                    outcome = decoded
                else:
                    volume, inputs = decoded
                    labels = self.predict(inputs, volume.hu.shape[1:], batch_size)
                    outcome = _done(study_id, volume, labels, Path(out_dir))
                    slices += len(labels)
                on_results([outcome])
                counts[outcome.state] += 1
                seen += 1
        finally:
            del volumes
        seconds = time.perf_counter() - start
        return ChunkStats(counts["done"], counts["failed"], counts["skipped"], seconds,
                          slices / seconds if seconds > 0 else 0.0, stopped=seen < len(items))


class _Volumes(Dataset):
    """Item k: (study id, (CTVolume, model inputs)) or (study id, failed StudyOutcome); decoded
    in DataLoader workers when there are any (they get the normaliser and resize, not the model)."""

    def __init__(self, items, archive, predictor: SegPredictor):
        self.items, self.archive = list(items), archive
        self.resize, self.normaliser = predictor._resize, predictor.normaliser

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        study_id, key = self.items[k]
        try:
            volume = load_ct_volume(self.archive, key)
            return study_id, (volume, model_input(volume.hu, self.normaliser, self.resize))
        except StudyError as exc:
            return study_id, StudyOutcome(study_id, state=exc.state, reason=str(exc))
        except Exception as exc:  # an unforeseen reader failure fails this study, not the chunk
            return study_id, StudyOutcome(study_id, state="failed", reason=f"{type(exc).__name__} while reading")


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
    height, width = labels.shape[1:]
    return StudyOutcome(study_id, "done", image_size=(int(width), int(height)), uids=volume.uids,
                        source_format=volume.source_format, measures=measures)
