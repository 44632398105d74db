"""Training throughput of one HRNet member against a bare PyTorch loop (images/s).

- ``bare_hrnet_throughput``: inputs resized and heatmap targets encoded once, on the device;
  the spec's model, loss and AdamW; forward, backward, step (autocast + GradScaler and
  channels_last when the spec asks for them), nothing else.
- ``member_hrnet_throughput``: ``train_hrnet``'s steps (augmentation, target encoding, data
  loading, schedule, progress hooks), timed between progress reports within an epoch; the
  epoch ends (validation, checkpoints) are left out.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from medq.common.steptiming import bare_rate, rate_between_reports
from medq.common.families.ceph.model import build_hrnet
from medq.common.families.ceph.readers import CephRecord
from medq.common.families.ceph.schema import N_LANDMARKS
from medq.common.families.ceph.train import HeatmapDataset, heatmap_loss, load_grey, train_hrnet
from medq.common.training.kit import Progress, TrainHooks, pick_device, seed_everything
from medq.common.families.ceph.spec import HRNetSpec


def bare_hrnet_throughput(spec: HRNetSpec, records: Sequence[CephRecord], steps: int, warmup: int = 3) -> float:
    seed_everything(0)
    device = pick_device()
    use_amp = spec.amp and device.type == "cuda"
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    data = HeatmapDataset(records, {r.stem: load_grey(r.image) for r in records}, spec, spec.image_size, train=False)
    items = [data[i] for i in range(len(data))]
    images = torch.stack([i for i, _, _ in items]).to(device).contiguous(memory_format=memory_format)
    targets = torch.stack([t for _, t, _ in items]).to(device)
    weights = torch.stack([w for _, _, w in items]).to(device)
    model = build_hrnet(spec.width, N_LANDMARKS).to(device, memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    n, batch = len(images), min(spec.batch_size, len(images))

    def step(k: int) -> None:
        index = torch.arange(k * batch, (k + 1) * batch, device=device) % n
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            pred = model(images[index])
        loss = heatmap_loss(pred, targets[index], weights[index])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return bare_rate(step, steps, warmup, batch, device)


def member_hrnet_throughput(spec: HRNetSpec, records: Sequence[CephRecord], steps: int, warmup: int = 3) -> float:
    """Epochs are set so that ``steps`` timed steps follow ``warmup`` untimed ones."""
    per_epoch = math.ceil(len(records) / spec.batch_size)
    epochs = math.ceil((steps + warmup) / max(per_epoch - 1, 1))
    spec = dataclasses.replace(spec, epochs=epochs, warmup_epochs=1, progressive=None, top_k=1)
    stamps: list[tuple[float, int, int]] = []  # (time, epoch, images of the step)

    def progress(report: Progress) -> None:
        if not report.epoch_done:
            images = min(spec.batch_size, len(records) - (report.step - 1) * spec.batch_size)
            stamps.append((time.perf_counter(), report.epoch, images))

    split = {"train": list(records), "val": list(records[:2])}
    with tempfile.TemporaryDirectory() as tmp:
        train_hrnet(spec, split, Path(tmp), hooks=TrainHooks(progress=progress))
    return rate_between_reports(stamps, warmup)
