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

Checkpoints in ``workdir``: ``last.pt`` after every epoch and on cancellation (written to a
temporary file, then ``os.replace``), ``best.pt`` whenever the validation loss improves. A
``last.pt`` found at start is resumed exactly: same data order, augmentation and dropout
streams, and mid-epoch cancellations continue at the step where they stopped.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from medq import common
from medq.common.errors import TrainingDiverged
from medq.common.families.chest.augment import eval_transform, train_transform
from medq.common.families.chest.checkpoint import (
    BEST_NAME,
    LAST_NAME,
    check_resumable,
    load_checkpoint,
    rng_states,
    prepare_workdir,
    save_atomic,
    set_rng_states,
)
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
from medq.common.specs import EnsembleSpec

log = logging.getLogger(__name__)

EVAL_BATCH = 32


@dataclass(frozen=True)
class Progress:
    """One report: after every optimizer step, and once more at the end of each epoch."""

    epoch: int  # 1-based, the epoch in progress or just finished
    total_epochs: int
    phase: str  # "head" | "finetune"
    step: int  # optimizer steps done in this epoch (1-based; steps_per_epoch when epoch_done)
    steps_per_epoch: int
    train_loss: float  # mean training loss of this epoch so far
    val_loss: float | None  # set when epoch_done
    val_error_px: float | None  # mean radial error in ORIGINAL pixels on the val split
    images_per_s: float  # training images per second in this epoch so far
    epoch_done: bool
    val_score: float | None = None  # set when epoch_done by engines with a higher-is-better score
    # (segmentation: the validation split's mean lesion Dice)


def _no_progress(progress: Progress) -> None:
    return None


@dataclass
class TrainHooks:
    """Callbacks of the caller. Both run on every optimizer step: keep them cheap (a task that
    reads a cancel flag from the store should look at most every few seconds)."""

    progress: Callable[[Progress], None] = _no_progress
    should_stop: Callable[[], bool] = lambda: False


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
    """What survives between epochs and goes into last.pt."""

    epoch: int = 0  # last completed epoch
    best_val_loss: float = math.inf
    best_val_error_px: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    partial: dict[str, float] = field(default_factory=dict)  # steps/loss_sum/images of a cut epoch
    stopped_early: bool = False


# --- set-up --------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def scaled_step(loss: torch.Tensor, optimizer, scaler, epoch: int, step: int) -> float:
    """One optimiser step through the GradScaler (a no-op scaler without AMP): refuse a NaN or
    infinite loss naming the epoch and 1-based step, then zero the gradients, backward, step and
    update the scale. Returns the loss value."""
    value = loss.item()
    if not math.isfinite(value):
        raise TrainingDiverged(f"training loss is {value} at epoch {epoch}, step {step}")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return value


def pick_device() -> torch.device:
    """cuda:0 when CUDA is available (the launcher sets CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def phase_of(epoch: int, spec: EnsembleSpec) -> str:
    return "head" if epoch <= spec.epochs_head else "finetune"


def make_optimizer(model: torch.nn.Module, spec: EnsembleSpec, phase: str) -> torch.optim.Adam:
    """Freeze or unfreeze the backbone for ``phase`` and return its Adam optimizer."""
    frozen = phase == "head"
    for parameter in backbone_parameters(model):
        parameter.requires_grad_(not frozen)
    if frozen:
        groups = [{"params": list(head_parameters(model)), "lr": spec.lr_head}]
    else:
        groups = [
            {"params": list(backbone_parameters(model)), "lr": spec.lr_finetune_backbone},
            {"params": list(head_parameters(model)), "lr": spec.lr_finetune_head},
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


# --- one epoch -----------------------------------------------------------------------------


@dataclass
class EpochResult:
    loss_sum: float  # sum over images of the batch-mean loss times batch size
    images: int
    steps: int
    seconds: float
    cancelled: bool


def train_one_epoch(
    model, loader, loss_fn, optimizer, scheduler, scaler, device, use_amp: bool, grad_clip: float,
    start: EpochResult, report: Callable[[EpochResult], None], should_stop: Callable[[], bool],
    epoch: int,
) -> EpochResult:
    """Run the batches of ``loader``; ``start`` carries the counts of a resumed, cut epoch."""
    model.train()
    done = EpochResult(start.loss_sum, start.images, start.steps, start.seconds, False)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    tick = time.perf_counter()
    for images, targets in loader:
        if should_stop():
            done.cancelled = True
            break
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            pred = model(images)
        loss = loss_fn(pred.float().view(-1, N_LANDMARKS, 2), targets)
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(f"training loss is {value} at epoch {epoch}, step {done.steps + 1}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        now = time.perf_counter()
        done.seconds += now - tick
        tick = now
        done.steps += 1
        done.images += len(images)
        done.loss_sum += value * len(images)
        report(done)
        tick = time.perf_counter()  # the report's own time is not training time
    return done


@torch.no_grad()
def evaluate(model, loader, loss_fn, device, use_amp: bool) -> tuple[float, np.ndarray]:
    """Mean loss per image and the normalised predictions (N, 15, 2) over ``loader``."""
    model.eval()
    loss_sum, preds = 0.0, []
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
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
    workdir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = workdir / LAST_NAME, workdir / BEST_NAME
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
    if not last_path.is_file():  # a resumed member gets its weights from last.pt
        load_pretrained(model, spec)
    model.to(device)
    loss_fn = build_loss(spec)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    steps_per_epoch = len(epoch_batches(len(train_set), spec.batch_size, seed, 1))

    state, resumed_from, checkpoint = _State(), None, None
    if last_path.is_file():
        checkpoint = load_checkpoint(last_path)
        check_resumable(checkpoint, spec, seed, last_path)
        model.load_state_dict(checkpoint["model"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = _State(**checkpoint["state"])
        resumed_from = state.epoch
        log.info("resuming seed %d from epoch %d in %s", seed, state.epoch, workdir)

    def save_last(optimizer, scheduler, phase: str) -> None:
        save_atomic({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "epoch": state.epoch, "phase": phase, "best_val_loss": state.best_val_loss,
            "best_epoch": state.best_epoch, "bad_epochs": state.bad_epochs,
            "spec": spec.to_dict(), "seed": seed, "code_version": common.__version__,
            "rng": rng_states(), "state": state.__dict__.copy(),
        }, last_path)

    def outcome(cancelled: bool, seconds: float, trained_images: int) -> MemberOutcome:
        return MemberOutcome(
            epochs_run=state.epoch, best_epoch=state.best_epoch,
            best_val_loss=state.best_val_loss if state.best_epoch else None,
            best_val_error_px=state.best_val_error_px, stopped_early=state.stopped_early,
            cancelled=cancelled, resumed_from_epoch=resumed_from, best_checkpoint=best_path,
            last_checkpoint=last_path, device=str(device),
            train_images_per_s=trained_images / seconds if seconds > 0 else 0.0,
        )

    optimizer = scheduler = None
    phase = None
    seconds, trained_images = 0.0, 0
    for epoch in range(state.epoch + 1, spec.total_epochs + 1):
        if state.stopped_early:
            break
        if phase_of(epoch, spec) != phase:
            phase = phase_of(epoch, spec)
            optimizer = make_optimizer(model, spec, phase)
            scheduler = make_scheduler(optimizer, spec, phase, steps_per_epoch)
            if checkpoint is not None and checkpoint["phase"] == phase:
                optimizer.load_state_dict(checkpoint["optimizer"])
                scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint is not None:
            set_rng_states(checkpoint["rng"])  # after every RNG-consuming set-up step
            checkpoint = None

        train_set.set_epoch(epoch)
        batches = epoch_batches(len(train_set), spec.batch_size, seed, epoch)
        skip = int(state.partial.get("steps", 0))
        loader = DataLoader(train_set, batch_sampler=batches[skip:], num_workers=spec.loader_workers,
                            pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        start = EpochResult(state.partial.get("loss_sum", 0.0), int(state.partial.get("images", 0)), skip,
                            state.partial.get("seconds", 0.0), False)

        def report(done: EpochResult, epoch=epoch, phase=phase) -> None:
            hooks.progress(Progress(epoch, spec.total_epochs, phase, done.steps, steps_per_epoch,
                                    done.loss_sum / done.images, None, None,
                                    done.images / max(done.seconds, 1e-9), False))

        done = train_one_epoch(model, loader, loss_fn, optimizer, scheduler, scaler, device, use_amp,
                               spec.grad_clip, start, report, hooks.should_stop, epoch)
        seconds += done.seconds - start.seconds
        trained_images += done.images - start.images
        if done.cancelled:
            state.partial = {"steps": done.steps, "loss_sum": done.loss_sum, "images": done.images,
                             "seconds": done.seconds}
            save_last(optimizer, scheduler, phase)
            log.info("seed %d cancelled at epoch %d, step %d", seed, epoch, done.steps)
            return outcome(True, seconds, trained_images)

        val_loss, val_pred = evaluate(model, val_loader, loss_fn, device, use_amp)
        if not math.isfinite(val_loss):
            raise TrainingDiverged(f"validation loss is {val_loss} after epoch {epoch}")
        val_error = float(radial_errors(to_original_pixels(val_pred, val_sizes), val_truth).mean())
        state.epoch, state.partial = epoch, {}
        if val_loss < state.best_val_loss:
            state.best_val_loss, state.best_val_error_px, state.best_epoch = val_loss, val_error, epoch
            state.bad_epochs = 0
            save_atomic({"model": model.state_dict(), "spec": spec.to_dict(), "seed": seed, "epoch": epoch,
                         "val_loss": val_loss, "val_error_px": val_error,
                         "code_version": common.__version__}, best_path)
        elif phase == "finetune":
            state.bad_epochs += 1
            state.stopped_early = state.bad_epochs >= spec.patience and epoch < spec.total_epochs
        save_last(optimizer, scheduler, phase)
        log.info("seed %d epoch %d/%d (%s): train loss %.5f, val loss %.5f, val error %.2f px",
                 seed, epoch, spec.total_epochs, phase, done.loss_sum / max(done.images, 1), val_loss, val_error)
        hooks.progress(Progress(epoch, spec.total_epochs, phase, done.steps, steps_per_epoch,
                                done.loss_sum / max(done.images, 1), val_loss, val_error,
                                done.images / max(done.seconds, 1e-9), True))
    return outcome(False, seconds, trained_images)
