"""Training of one ensemble member (one seed): two phases, checkpoints every epoch, resume.

Recipe (DESIGN.md family 1): phase "head" trains the head for ``spec.epochs_head`` epochs with
the backbone frozen (Adam, lr ``spec.lr_head``); phase "finetune" trains all layers for
``spec.epochs`` epochs (lr ``lr_finetune_backbone`` / ``lr_finetune_head``). Each phase has
its own cosine schedule, stepped per optimizer step, from the base lr down to
``lr * cosine_final_factor``. Gradients are clipped to norm ``spec.grad_clip``. Early stopping
on validation loss counts only phase-2 epochs without improvement (``spec.patience``); the best
checkpoint may come from either phase. Mixed precision (float16 autocast + GradScaler) is used
on CUDA when ``spec.amp``. The frozen backbone's BatchNorm layers stay in training mode, so
their running statistics adapt to the radiographs while their weights do not move.

Checkpoints in ``workdir`` (the training kit's format, ``medq.common.training.checkpoint``):
``last.pt`` after every epoch and on cancellation, its loop state holding the phase of its
optimiser and a cut epoch's counts, and ``best.pt`` whenever the validation loss improves. A
``last.pt`` found at start is resumed exactly: same data order, augmentation and dropout
streams, and mid-epoch cancellations continue at the step where they stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from medq.common.errors import TrainingDiverged
from medq.common.families.chest.augment import eval_transform, train_transform
from medq.common.families.chest.dataset import (
    LandmarkDataset,
    dataset_paths,
    preload_images,
    split_records,
    to_original_pixels,
)
from medq.common.families.chest.losses import build_loss
from medq.common.families.chest.metrics import radial_errors
from medq.common.families.chest.model import backbone_parameters, build_model, head_parameters, load_pretrained
from medq.common.families.chest.schema import N_LANDMARKS
from medq.common.families.chest.spec import EnsembleSpec
from medq.common.training.checkpoint import (
    BEST_NAME, LAST_NAME, prepare_workdir, restore, resumable, save_checkpoint, save_weights,
    set_rng_states
)
from medq.common.training.kit import (
    EpochMeter, Progress, TrainHooks, autocast, learning_rates, pick_device, seed_everything, train_one_epoch
)

log = logging.getLogger(__name__)

EVAL_BATCH = 32


@dataclass(frozen=True)
class MemberOutcome:
    epochs_run: int  # epochs completed in total, including those before a resume
    best_epoch: int  # 0 when no epoch completed
    best_val_loss: float | None
    best_val_error_px: float | None
    stopped_early: bool
    cancelled: bool
    resumed_from_epoch: int | None  # the last completed epoch found in last.pt
    best_checkpoint: Path
    last_checkpoint: Path
    device: str
    train_images_per_s: float  # over the training steps of this call (0.0 when none ran)


@dataclass
class _State:
    """The loop state that goes into last.pt (its last completed epoch is the checkpoint's own)."""

    phase: str = ""  # the phase of the optimiser and schedule saved beside it
    best_val_loss: float = math.inf
    best_val_error_px: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    partial: dict[str, float] = field(default_factory=dict)  # EpochMeter of a cut epoch
    stopped_early: bool = False


# --- the recipe ----------------------------------------------------------------------------


def phase_of(epoch: int, spec: EnsembleSpec) -> str:
    return "head" if epoch <= spec.epochs_head else "finetune"


def make_optimizer(model: torch.nn.Module, spec: EnsembleSpec, phase: str) -> torch.optim.Adam:
    """Freeze or unfreeze the backbone for ``phase`` and return its Adam optimizer."""
    frozen = phase == "head"
    for parameter in backbone_parameters(model):
        parameter.requires_grad_(not frozen)
    if frozen:
        groups = [{"params": list(head_parameters(model)), "lr": spec.lr_head, "name": "head"}]
    else:
        groups = [
            {"params": list(backbone_parameters(model)), "lr": spec.lr_finetune_backbone, "name": "backbone"},
            {"params": list(head_parameters(model)), "lr": spec.lr_finetune_head, "name": "head"},
        ]
    return torch.optim.Adam(groups, weight_decay=spec.weight_decay)


def cosine_factor(total_steps: int, final_factor: float) -> Callable[[int], float]:
    """lr multiplier at step t: 1 at t = 0, cosine down to ``final_factor`` at t = total_steps."""

    def factor(step: int) -> float:
        t = min(step, total_steps) / max(total_steps, 1)
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def make_scheduler(optimizer, spec: EnsembleSpec, phase: str, steps_per_epoch: int):
    epochs = spec.epochs_head if phase == "head" else spec.epochs
    factor = cosine_factor(epochs * steps_per_epoch, spec.cosine_final_factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled batches of ``epoch`` (fixed by seed and epoch); a last batch of one is
    dropped, as BatchNorm cannot train on a single image."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    order = torch.randperm(n, generator=generator).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return batches if len(batches[-1]) > 1 or len(batches) == 1 else batches[:-1]


@torch.no_grad()
def evaluate(model, loader, loss_fn, device, use_amp: bool) -> tuple[float, np.ndarray]:
    """Mean loss per image and the normalised predictions (N, 15, 2) over ``loader``."""
    model.eval()
    loss_sum, preds = 0.0, []
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device, use_amp):
            pred = model(images)
        pred = pred.float().view(-1, N_LANDMARKS, 2)
        loss_sum += loss_fn(pred, targets).item() * len(images)
        preds.append(pred.cpu().numpy())
    predictions = np.concatenate(preds)
    return loss_sum / len(predictions), predictions


# --- the member ----------------------------------------------------------------------------


def train_member(
    spec: EnsembleSpec,
    split: dict[str, list[str]],
    data_dir: Path,
    seed: int,
    workdir: Path,
    hooks: TrainHooks = TrainHooks(),
) -> MemberOutcome:
    """Train (or resume) the member of ``seed`` on split["train"], validating on split["val"].

    data_dir holds landmarks.csv and images/ (csvio's layout); split maps "train"/"val" to
    image stems. Returns when all epochs ran, early stopping fired, or ``hooks.should_stop()``
    returned True (``cancelled``; last.pt then holds the exact mid-epoch state). Raises
    DataError (bad CSV row, missing image, empty part), JobError (last.pt of another spec or
    seed, unreadable checkpoint) and TrainingDiverged (NaN/inf loss, naming epoch and step).
    """
    workdir = Path(workdir)
    last_path, best_path = workdir / LAST_NAME, workdir / BEST_NAME
    checkpoint = resumable(workdir, spec, seed)
    seed_everything(seed)
    device = pick_device()
    use_amp = spec.amp and device.type == "cuda"

    records = split_records(data_dir, split, ("train", "val"))
    images = preload_images(dataset_paths(data_dir)[1], [r.stem for part in records.values() for r in part])
    train_set = LandmarkDataset(records["train"], images, train_transform(spec), seed=seed)
    val_set = LandmarkDataset(records["val"], images, eval_transform(spec.image_size))
    val_loader = DataLoader(val_set, batch_size=EVAL_BATCH, num_workers=spec.loader_workers,
                            pin_memory=device.type == "cuda")
    val_sizes, val_truth = val_set.image_sizes, val_set.points_px

    model = build_model(spec)
    prepare_workdir(workdir, model)
    if checkpoint is None:  # a resumed member gets its weights from last.pt
        load_pretrained(model, spec)
    model.to(device)
    loss_fn = build_loss(spec)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    steps_per_epoch = len(epoch_batches(len(train_set), spec.batch_size, seed, 1))

    state, finished, resumed_from = _State(), 0, None  # finished: the last completed epoch
    if checkpoint is not None:
        state, finished = _State(**checkpoint["state"]), int(checkpoint["epoch"])
        resumed_from = finished
    phase = phase_of(finished + 1, spec)
    optimizer = make_optimizer(model, spec, phase)
    scheduler = make_scheduler(optimizer, spec, phase, steps_per_epoch)
    if checkpoint is not None:
        same_phase = state.phase == phase  # else the saved optimiser belongs to the phase that ended
        restore(checkpoint, model, optimizer if same_phase else None, scheduler if same_phase else None, scaler)
        set_rng_states(checkpoint["rng"])  # after every set-up step that draws random numbers
        log.info("resuming seed %d from epoch %d in %s", seed, finished, workdir)

    def save_last() -> None:
        save_checkpoint(last_path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                        epoch=finished, spec=spec, seed=seed, state=dataclasses.asdict(state))

    def outcome(cancelled: bool) -> MemberOutcome:
        return MemberOutcome(
            epochs_run=finished, best_epoch=state.best_epoch,
            best_val_loss=state.best_val_loss if state.best_epoch else None,
            best_val_error_px=state.best_val_error_px, stopped_early=state.stopped_early,
            cancelled=cancelled, resumed_from_epoch=resumed_from, best_checkpoint=best_path,
            last_checkpoint=last_path, device=str(device),
            train_images_per_s=trained_images / seconds if seconds > 0 else 0.0,
        )

    def loss_of(batch) -> tuple[torch.Tensor, int]:
        images, targets = (t.to(device, non_blocking=True) for t in batch)
        with autocast(device, use_amp):
            pred = model(images)
        return loss_fn(pred.float().view(-1, N_LANDMARKS, 2), targets), len(images)

    seconds, trained_images = 0.0, 0
    for epoch in range(finished + 1, spec.total_epochs + 1):
        if state.stopped_early:
            break
        epoch_start = time.monotonic()
        if phase_of(epoch, spec) != phase:
            phase = phase_of(epoch, spec)
            optimizer = make_optimizer(model, spec, phase)
            scheduler = make_scheduler(optimizer, spec, phase, steps_per_epoch)
        state.phase = phase

        train_set.set_epoch(epoch)
        meter = EpochMeter.from_dict(state.partial)  # a cut epoch continues at its next step
        before = (meter.seconds, meter.images)
        loader = DataLoader(train_set, batch_sampler=epoch_batches(len(train_set), spec.batch_size, seed, epoch)[
            meter.steps:], num_workers=spec.loader_workers, pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(seed * 1000 + epoch))

        def report(m: EpochMeter, epoch=epoch, phase=phase) -> None:
            hooks.progress(Progress(epoch, spec.total_epochs, phase, m.steps, steps_per_epoch, m.mean_loss, None,
                                    None, m.images_per_s, False))

        cancelled = train_one_epoch(model, loader, loss_of, optimizer, scaler, epoch=epoch, meter=meter,
                                    should_stop=hooks.should_stop, report=report, after_step=scheduler.step,
                                    grad_clip=spec.grad_clip)
        seconds, trained_images = seconds + meter.seconds - before[0], trained_images + meter.images - before[1]
        if cancelled:
            state.partial = meter.to_dict()
            save_last()
            log.info("seed %d cancelled at epoch %d, step %d", seed, epoch, meter.steps)
            return outcome(True)

        val_loss, val_pred = evaluate(model, val_loader, loss_fn, device, use_amp)
        if not math.isfinite(val_loss):
            raise TrainingDiverged(f"validation loss is {val_loss} after epoch {epoch}")
        val_error = float(radial_errors(to_original_pixels(val_pred, val_sizes), val_truth).mean())
        finished, state.partial = epoch, {}
        if val_loss < state.best_val_loss:
            state.best_val_loss, state.best_val_error_px, state.best_epoch = val_loss, val_error, epoch
            state.bad_epochs = 0
            save_weights(best_path, model, spec, epoch, seed=seed, val_loss=val_loss, val_error_px=val_error)
        elif phase == "finetune":
            state.bad_epochs += 1
            state.stopped_early = state.bad_epochs >= spec.patience and epoch < spec.total_epochs
        save_last()
        log.info("seed %d epoch %d/%d (%s): train loss %.5f, val loss %.5f, val error %.2f px",
                 seed, epoch, spec.total_epochs, phase, meter.mean_loss, val_loss, val_error)
        hooks.progress(Progress(epoch, spec.total_epochs, phase, meter.steps, steps_per_epoch, meter.mean_loss,
                                val_loss, val_error, meter.images_per_s, True,
                                metrics={"val_error_px": val_error}, lrs=learning_rates(optimizer),
                                wall_s=time.monotonic() - epoch_start))
    return outcome(False)
