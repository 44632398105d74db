"""Predictions in original pixels, and the evaluation of an ensemble and of each member on the
test split (reports from ``metrics.landmark_report``; aggregations from ``metrics``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from medq.common.errors import JobError
from medq.common.families.chest.augment import eval_transform
from medq.common.families.chest.csvio import LandmarkRecord
from medq.common.families.chest.dataset import (
    LandmarkDataset,
    dataset_paths,
    preload_images,
    split_records,
    to_original_pixels,
)
from medq.common.families.chest.metrics import aggregate_predictions, landmark_report, per_image
from medq.common.families.chest.model import build_model
from medq.common.families.chest.schema import N_LANDMARKS
from medq.common.training.checkpoint import load_checkpoint
from medq.common.training.kit import pick_device
from medq.common.families.chest.spec import EnsembleSpec
from medq.common.specs import AGGREGATIONS

PREDICT_BATCH = 32


def load_member(checkpoint_path: Path) -> tuple[torch.nn.Module, EnsembleSpec]:
    """The model (eval mode, on the CPU) and spec stored in a best.pt or last.pt."""
    checkpoint = load_checkpoint(Path(checkpoint_path))
    if "model" not in checkpoint or "spec" not in checkpoint:
        raise JobError(f"{checkpoint_path} is not a landmark checkpoint (no model or spec)")
    spec = EnsembleSpec.from_dict(checkpoint["spec"])
    model = build_model(spec)  # random init is overwritten: no pretrained lookup needed
    model.load_state_dict(checkpoint["model"])
    return model.eval(), spec


@torch.no_grad()
def predict(
    model_or_checkpoint: torch.nn.Module | Path | str,
    records: Sequence[LandmarkRecord],
    images_dir: Path,
    image_size: int,
    images: dict[str, np.ndarray] | None = None,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Landmarks (N, 15, 2) in pixels of each ORIGINAL image, in the order of ``records``.

    Images are resized to ``image_size`` (the model's training size), predicted without
    augmentation, and mapped back by each image's width and height. ``images`` may pass
    already decoded greyscale images (stem -> array) to skip decoding. ``device`` defaults to
    the worker's (``pick_device``); the model is moved there.
    """
    if isinstance(model_or_checkpoint, torch.nn.Module):
        model = model_or_checkpoint
    else:
        model, _ = load_member(Path(model_or_checkpoint))
    device = torch.device(device) if device is not None else pick_device()
    model = model.to(device).eval()
    if images is None:
        images = preload_images(images_dir, [record.stem for record in records])
    dataset = LandmarkDataset(records, images, eval_transform(image_size))
    loader = DataLoader(dataset, batch_size=PREDICT_BATCH, pin_memory=device.type == "cuda")
    preds = [
        model(batch.to(device, non_blocking=True)).float().view(-1, N_LANDMARKS, 2).cpu().numpy()
        for batch, _ in loader
    ]
    return to_original_pixels(np.concatenate(preds), dataset.image_sizes)


def evaluate_ensemble(
    spec: EnsembleSpec,
    split: dict[str, list[str]],
    data_dir: Path,
    members: list[tuple[int, Path, float]],  # (seed, best checkpoint, best validation loss)
) -> dict:
    """Reports on split["test"]: {"members": {str(seed): report}, "ensemble": {how: report}}.

    Every member predicts the test images; the ensemble combines them by each of
    ``AGGREGATIONS`` ("weighted" uses 1 / validation loss). Reports are ``landmark_report``
    dicts (errors in original pixels and at 224 px), each with "per_image": the test images'
    stems in the split's order, their mean and per-landmark errors in px and, for the "mean"
    ensemble, the predicted points (``metrics.per_image``): what a report's CED, paired test
    and gallery of worst images read.
    """
    if not members:
        raise JobError("evaluate_ensemble needs at least one member")
    records = split_records(data_dir, split, ("test",))["test"]
    images = preload_images(dataset_paths(data_dir)[1], [record.stem for record in records])
    truth = np.stack([np.asarray(record.points, dtype=np.float64) for record in records])
    sizes = np.array([(images[r.stem].shape[1], images[r.stem].shape[0]) for r in records], dtype=np.float64)
    categories = [record.category for record in records]
    stems = [record.stem for record in records]

    preds, reports = [], {}
    for seed, checkpoint, _ in members:
        member_pred = predict(checkpoint, records, dataset_paths(data_dir)[1], spec.image_size, images)
        reports[str(seed)] = {**landmark_report(member_pred, truth, sizes, categories),
                              "per_image": per_image(member_pred, truth, stems)}
        preds.append(member_pred)
    stacked = np.stack(preds)
    val_losses = [loss for _, _, loss in members]
    ensemble = {}
    for how in AGGREGATIONS:
        combined = aggregate_predictions(stacked, how, val_losses)
        ensemble[how] = {**landmark_report(combined, truth, sizes, categories),
                         "per_image": per_image(combined, truth, stems, with_points=how == "mean")}
    return {"members": reports, "ensemble": ensemble}
