"""Throughput of the training engine against a bare PyTorch loop on the same data and model.

Both numbers are training images per second, warm-up steps excluded:

- ``bare_loop_throughput``: preloaded, already resized tensors on the device, the spec's model,
  loss and Adam; forward, backward, step, nothing else (autocast + GradScaler when the member
  would use them, so the arithmetic matches).
- ``member_throughput``: ``train_member``'s phase-2 steps (augmentation, data loading, grad
  clipping, schedule, progress hooks included), timed from the progress reports; the gaps at
  epoch ends (validation, checkpoints) are left out.

The ratio says what the engine costs on top of the model's own arithmetic.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path

import torch

from medq.common.steptiming import bare_rate, rate_between_reports
from medq.common.families.chest.augment import eval_transform
from medq.common.families.chest.csvio import make_split, read_landmark_csv
from medq.common.families.chest.dataset import LandmarkDataset, dataset_paths, preload_images
from medq.common.families.chest.losses import build_loss
from medq.common.families.chest.model import build_model
from medq.common.families.chest.schema import N_LANDMARKS
from medq.common.training.kit import Progress, TrainHooks, pick_device, seed_everything
from medq.common.families.chest.train import train_member
from medq.common.families.chest.spec import EnsembleSpec


def bare_loop_throughput(spec: EnsembleSpec, data_dir: Path, steps: int, warmup: int = 3, seed: int = 0) -> float:
    """Images/s of ``steps`` bare training steps (after ``warmup`` untimed ones), all layers trained."""
    seed_everything(seed)
    device = pick_device()
    use_amp = spec.amp and device.type == "cuda"
    csv_path, images_dir = dataset_paths(data_dir)
    records = read_landmark_csv(csv_path)
    dataset = LandmarkDataset(records, preload_images(images_dir, [r.stem for r in records]),
                              eval_transform(spec.image_size))
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([image for image, _ in items]).to(device)
    targets = torch.stack([target for _, target in items]).to(device)

    model = build_model(spec).to(device).train()
    loss_fn = build_loss(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr_finetune_head, weight_decay=spec.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    n, batch = len(images), min(spec.batch_size, len(images))

    def step(k: int) -> None:
        index = torch.arange(k * batch, (k + 1) * batch, device=device) % n
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            pred = model(images[index])
        loss = loss_fn(pred.float().view(-1, N_LANDMARKS, 2), targets[index])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return bare_rate(step, steps, warmup, batch, device)


def member_throughput(
    spec: EnsembleSpec, data_dir: Path, steps: int, seed: int = 0, warmup: int = 3, workdir: Path | None = None
) -> float:
    """Images/s of ``train_member``'s phase-2 steps on ``data_dir`` (split by ``spec.split``).

    The spec's epochs are set so that at least ``steps`` phase-2 steps follow ``warmup`` untimed
    ones (no head phase). Each timed interval runs from one step's progress report to the next
    within the same epoch, so it holds one full engine step. workdir defaults to a temporary
    folder (a workdir holding last.pt would resume instead of training).
    """
    records = read_landmark_csv(dataset_paths(data_dir)[0])
    split = make_split(records, spec.split)
    per_epoch = math.ceil(len(split["train"]) / spec.batch_size)
    # Timed intervals never span an epoch end: one interval per epoch is lost to the boundary.
    epochs = math.ceil((steps + warmup) / max(per_epoch - 1, 1))
    spec = dataclasses.replace(spec, epochs_head=0, epochs=epochs, patience=epochs + 1)
    stamps: list[tuple[float, int, int]] = []  # (time, epoch, images of the step) of phase-2 steps

    def progress(report: Progress) -> None:
        if report.phase == "finetune" and not report.epoch_done:
            images = min(spec.batch_size, len(split["train"]) - (report.step - 1) * spec.batch_size)
            stamps.append((time.perf_counter(), report.epoch, images))

    with tempfile.TemporaryDirectory() as tmp:
        train_member(spec, split, data_dir, seed, Path(workdir or tmp), TrainHooks(progress=progress))
    return rate_between_reports(stamps, warmup)
