"""Timing training steps for the throughput benchmarks (images/s), shared by every engine.

- ``bare_rate``: a bare loop's ``step(k)`` run ``warmup`` times untimed, then ``steps`` timed,
  with the device synchronised at both ends.
- ``rate_between_reports``: an engine's own progress reports, ``(time, epoch, images in that
  step)`` after each step; each interval between two reports of the same epoch holds one whole
  step, so epoch ends (validation, checkpoints) fall outside; the first ``warmup`` are dropped.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_rate(step: Callable[[int], None], steps: int, warmup: int, batch: int, device: torch.device) -> float:
    for k in range(warmup):
        step(k)
    _sync(device)
    start = time.perf_counter()
    for k in range(warmup, warmup + steps):
        step(k)
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def rate_between_reports(stamps: Sequence[tuple[float, int, int]], warmup: int) -> float:
    seconds, images = 0.0, 0
    for k in range(max(warmup, 1), len(stamps)):
        (t0, e0, _), (t1, e1, n) = stamps[k - 1], stamps[k]
        if e0 == e1:
            seconds += t1 - t0
            images += n
    if images == 0:
        raise ValueError("too few steps to time: give more epochs, images or steps, or a smaller warm-up")
    return images / seconds
