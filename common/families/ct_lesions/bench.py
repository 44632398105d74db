"""Throughput of the segmenter against bare PyTorch loops (slices/s), for ``medq bench segment``.

- ``bare_seg_training``: inputs z-scored, resized and moved to the device once; the spec's
  model, loss and AdamW; forward, backward, step (autocast + GradScaler when the spec asks on
  CUDA), nothing else.
- ``member_seg_training``: ``train_segmenter``'s steps (reading, augmentation, the weighted
  sampler, OneCycle, progress hooks), timed between progress reports within an epoch; the epoch
  ends (validation, checkpoints) are left out.
- ``bare_seg_inference``: ``np.load`` each .npy volume, normalise and resize each slice, forward
  in batches under ``no_grad``, resize the logits to the slice size and take the arg-max: the
  loop anyone would write; no archive, no mask files, no store.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medq.common.training.kit import Progress, TrainHooks, pick_device, seed_everything
from medq.common.families.ct_lesions.data import SegSource, slice_arrays
from medq.common.families.ct_lesions.hu import HUNormaliser
from medq.common.families.ct_lesions.losses import SegLoss
from medq.common.families.ct_lesions.model import build_segmenter
from medq.common.families.ct_lesions.schema import N_CLASSES
from medq.common.families.ct_lesions.train import predict_logits, set_bn_momentum, train_segmenter
from medq.common.families.ct_lesions.spec import SegmentSpec
from medq.common.steptiming import bare_rate, rate_between_reports


def bare_seg_training(spec: SegmentSpec, sources: Sequence[SegSource], indices: Sequence[int], steps: int,
                      warmup: int = 2) -> float:
    import torch.nn.functional as F

    seed_everything(0)
    device = pick_device()
    use_amp = spec.amp and device.type == "cuda"
    arrays = list(slice_arrays(sources, indices))
    norm = HUNormaliser.fit(hu for hu, _ in arrays)
    size = (spec.image_size, spec.image_size)
    images = F.interpolate(torch.from_numpy(np.stack([norm(hu) for hu, _ in arrays])).unsqueeze(1), size=size,
                           mode="bilinear").to(device)
    masks = F.interpolate(torch.from_numpy(np.stack([m for _, m in arrays])).unsqueeze(1).float(), size=size,
                          mode="nearest").squeeze(1).long().to(device)
    model = build_segmenter(spec.arch, spec.encoder, N_CLASSES).to(device).train()
    set_bn_momentum(model, spec.bn_momentum)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = SegLoss(spec.w_ce, spec.w_dice, spec.w_focal, spec.gamma, (1.0,) * N_CLASSES)
    n, batch = len(images), min(spec.batch_size, len(images))

    def step(k: int) -> None:
        index = torch.arange(k * batch, (k + 1) * batch, device=device) % n
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(images[index])
        loss = loss_fn(logits, masks[index])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return bare_rate(step, steps, warmup, batch, device)


def member_seg_training(spec: SegmentSpec, sources: Sequence[SegSource], indices: Sequence[int], steps: int,
                        warmup: int = 2) -> float:
    """Epochs are set so that ``steps`` timed steps follow ``warmup`` untimed ones."""
    per_epoch = math.ceil(len(indices) / spec.batch_size)
    spec = dataclasses.replace(spec, epochs=math.ceil((steps + warmup) / max(per_epoch - 1, 1)), patience=0)
    stamps: list[tuple[float, int, int]] = []

    def progress(report: Progress) -> None:
        if not report.epoch_done:
            stamps.append((time.perf_counter(), report.epoch,
                           min(spec.batch_size, len(indices) - (report.step - 1) * spec.batch_size)))

    split = {"train": list(indices), "val": list(indices[:2])}
    with tempfile.TemporaryDirectory() as tmp:
        train_segmenter(spec, sources, split, Path(tmp), hooks=TrainHooks(progress=progress))
    return rate_between_reports(stamps, warmup)


@torch.no_grad()
def bare_seg_inference(checkpoint: Path, volumes: Sequence[Path], batch_size: int, warmup_volumes: int = 1) -> float:
    from medq.common.families.ct_lesions.train import load_segmenter

    model, spec, norm = load_segmenter(checkpoint)
    device = pick_device()
    use_amp = device.type == "cuda"
    model.to(device).eval()
    import torch.nn.functional as F

    def run(path: Path) -> int:
        hu = np.load(path).astype(np.float32)
        images = F.interpolate(torch.from_numpy(norm(hu)).unsqueeze(1), size=(spec.image_size,) * 2, mode="bilinear")
        for k in range(0, len(images), batch_size):
            predict_logits(model, images[k:k + batch_size], device, use_amp, hu.shape[1:]).argmax(dim=1).cpu()
        return len(hu)

    for path in volumes[:warmup_volumes]:
        run(path)
    start = time.perf_counter()
    slices = sum(run(path) for path in volumes)
    return slices / (time.perf_counter() - start)
