"""What every family's training loop shares: the device, seeding, the caller's hooks, one
mixed-precision optimiser step and one epoch of steps.

A family's loop builds its model, data, loss, optimiser and schedule, then per epoch calls
``train_one_epoch`` with a ``loss_of(batch)`` closure (forward under ``autocast``, loss in
float32). The step refuses a NaN or infinite loss, naming the epoch and 1-based step; the
cancellation hook is asked before every step; progress is reported after every step, and the
hook's own time is not counted as training time.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from medq.common.errors import TrainingDiverged


@dataclass(frozen=True)
class Progress:
    """One report: after every optimizer step, and once more at the end of each epoch."""

    epoch: int  # 1-based, the epoch in progress or just finished
    total_epochs: int
    phase: str  # the family's name for the stage ("head", "finetune", "256px", "train")
    step: int  # optimizer steps done in this epoch (1-based; steps_per_epoch when epoch_done)
    steps_per_epoch: int
    train_loss: float  # mean training loss of this epoch so far
    val_loss: float | None  # the validation loss (the training objective), set when epoch_done
    val_error_px: float | None  # mean radial error in ORIGINAL pixels on the val split (landmarks)
    images_per_s: float  # training images per second in this epoch so far
    epoch_done: bool
    val_score: float | None = None  # set when epoch_done: the family's model-selection metric
    # (segmentation: mean lesion Dice, higher is better; HRNet: MRE in mm, lower is better)
    # Set when epoch_done, for the training history: the family's validation metrics by name,
    # the learning rate of each optimiser parameter group, and the epoch's wall time.
    metrics: dict[str, float] = field(default_factory=dict)
    lrs: dict[str, float] = field(default_factory=dict)  # by parameter group name ("head"), else its index
    wall_s: float | None = None


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rate of each parameter group, as the history records them: by the group's
    ``name`` when the family gives one (a group's index means different parameters in two
    phases), else by its index."""
    return {str(group.get("name", i)): float(group["lr"]) for i, group in enumerate(optimizer.param_groups)}


def _no_progress(progress: Progress) -> None:
    return None


@dataclass
class TrainHooks:
    """Callbacks of the caller. Both run on every optimizer step: keep them cheap (a task that
    reads a cancel flag from the store should look at most every few seconds)."""

    progress: Callable[[Progress], None] = _no_progress
    should_stop: Callable[[], bool] = lambda: False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def seed_worker_transform(worker_id: int) -> None:
    """A DataLoader worker's augmentation seed (``worker_init_fn``): its torch seed, which the
    loader draws from the main process's generator (saved in every checkpoint) plus the worker
    id, so an epoch augments alike on every run and after a resume. The dataset's ``transform``
    is an albumentations Compose."""
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(torch.initial_seed() % 2**32)


def pick_device() -> torch.device:
    """cuda:0 when CUDA is available (the launcher sets CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, enabled: bool):
    """float16 autocast on ``device`` when ``enabled`` (a no-op context otherwise)."""
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled)


def amp_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, *, epoch: int,
             step: int, grad_clip: float = 0.0, params: Sequence[torch.nn.Parameter] | None = None) -> float:
    """One optimiser step through the GradScaler (a no-op scaler without AMP): refuse a NaN or
    infinite loss naming the epoch and 1-based ``step``, then zero the gradients, backward,
    unscale and clip to norm ``grad_clip`` when it is positive (``params``: the optimiser's by
    default), step and update the scale. Returns the loss value."""
    value = loss.item()
    if not math.isfinite(value):
        raise TrainingDiverged(f"training loss is {value} at epoch {epoch}, step {step}")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        if params is None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return value


@dataclass
class EpochMeter:
    """Counts of one epoch so far; a cut epoch's counts travel in the checkpoint (``to_dict``)."""

    loss_sum: float = 0.0  # sum over images of the batch-mean loss times batch size
    images: int = 0
    steps: int = 0
    seconds: float = 0.0  # training time only (the hooks' time left out)

    def add(self, value: float, images: int, seconds: float) -> None:
        self.loss_sum += value * images
        self.images += images
        self.steps += 1
        self.seconds += seconds

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.images, 1)

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "EpochMeter":
        data = data or {}
        return cls(float(data.get("loss_sum", 0.0)), int(data.get("images", 0)), int(data.get("steps", 0)),
                   float(data.get("seconds", 0.0)))


def train_one_epoch(model: torch.nn.Module, batches: Iterable, loss_of: Callable[[Any], tuple[torch.Tensor, int]],
                    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, *, epoch: int,
                    meter: EpochMeter, should_stop: Callable[[], bool], report: Callable[[EpochMeter], None],
                    after_step: Callable[[], None] = lambda: None, grad_clip: float = 0.0) -> bool:
    """Train ``model`` on ``batches``: per batch, ``loss_of(batch)`` -> (loss, images in it),
    ``amp_step``, ``after_step()`` (the schedule), the counts into ``meter`` (which may start
    with a resumed epoch's counts), then ``report(meter)``. Returns True when ``should_stop()``
    cut the epoch short (asked before every step)."""
    model.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    tick = time.perf_counter()
    for batch in batches:
        if should_stop():
            return True
        loss, images = loss_of(batch)
        value = amp_step(loss, optimizer, scaler, epoch=epoch, step=meter.steps + 1, grad_clip=grad_clip,
                         params=params)
        after_step()
        meter.add(value, images, time.perf_counter() - tick)
        report(meter)
        tick = time.perf_counter()  # the report's own time is not training time
    return False
