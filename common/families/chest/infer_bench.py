"""Throughput of bare PyTorch inference with a chest ensemble, the yardstick of ``medq bench infer``.

``bare_inference_throughput`` runs the loop anyone would write by hand around the same member
models: PIL-open each PNG, convert to grey, resize to the members' image size, stack a batch,
forward every member under ``no_grad`` (channels_last + float16 autocast on CUDA, as the
predictor does) and combine them with the same aggregation. No archive, no worker processes,
no quality control, no results store. The end-to-end job's images/s divided by this number
says what the job machinery costs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from medq.common.families.chest.metrics import aggregate_predictions
from medq.common.families.chest.predict import EnsemblePredictor
from medq.common.families.chest.schema import N_LANDMARKS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load_batch(paths: Sequence[Path], size: int) -> tuple[torch.Tensor, np.ndarray]:
    """(B, 1, S, S) float in [0, 1] and (B, 2) (width, height) of the originals."""
    arrays, sizes = [], []
    for path in paths:
        with Image.open(path) as image:
            grey = image.convert("L")
        sizes.append(grey.size)
        arrays.append(np.asarray(grey.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8))
    batch = torch.from_numpy(np.stack(arrays)).unsqueeze(1).to(torch.float32).div_(255.0)
    return batch, np.asarray(sizes, dtype=np.float64)


def bare_inference_throughput(
    checkpoints: Sequence[Path],
    png_paths: Sequence[Path],
    batch_size: int,
    aggregation: str = "mean",
    warmup_batches: int = 1,
    device: torch.device | str | None = None,
) -> float:
    """Images per second of the bare loop over ``png_paths`` (decoding, resizing and the
    ensemble's forward passes all timed; the first ``warmup_batches`` batches are run untimed
    on top, so the timed pass sees warm kernels and caches)."""
    if not png_paths:
        raise ValueError("bare_inference_throughput needs at least one PNG")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    predictor = EnsemblePredictor.from_checkpoints(list(checkpoints), aggregation=aggregation, device=device)
    models, dev, size = predictor.models, predictor.device, predictor.image_size
    use_amp = dev.type == "cuda"
    paths = [Path(p) for p in png_paths]
    chunks = [paths[k:k + batch_size] for k in range(0, len(paths), batch_size)]

    @torch.no_grad()
    def run(chunk: Sequence[Path]) -> np.ndarray:
        batch, sizes = _load_batch(chunk, size)
        images = batch.to(dev, non_blocking=True)
        if use_amp:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=use_amp):
            preds = torch.stack([m(images).float().view(-1, N_LANDMARKS, 2) for m in models])
        members = preds.cpu().numpy().astype(np.float64) * sizes[None, :, None, :]
        return aggregate_predictions(members, aggregation, predictor.val_losses)

    for k in range(warmup_batches):
        run(chunks[k % len(chunks)])
    _sync(dev)
    start = time.perf_counter()
    for chunk in chunks:
        run(chunk)
    _sync(dev)
    seconds = time.perf_counter() - start
    predictor.close()
    return len(paths) / seconds
