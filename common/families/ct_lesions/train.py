"""Training and evaluation of the CT lesion segmenter (DESIGN.md, family 3).

HU clipped and z-scored with statistics of the training split (stored in every checkpoint, so
evaluation and bulk inference normalise the same way); albumentations on image and mask
together; a WeightedRandomSampler drawing slices with a lesion ``lesion_weight`` times as often;
loss w_ce·CE(class-weighted) + w_dice·Dice + w_focal·Focal(gamma); AdamW with OneCycle (from
``lr`` up to ``max_lr`` and down, per step); mixed precision on CUDA; a checkpoint after every
epoch (``last.pt``, the training kit's format, with the normaliser, class weights and the
sampler's lesion flags beside it); the best epoch by the validation split's mean lesion Dice
(pooled over its slices) kept as ``best.pt``; early stopping when that Dice has not improved for ``patience`` epochs. ``init.pt`` keeps the
weights before the first step: the untrained baseline of the evaluation.

Validation and evaluation predict at the model size and score at each slice's own size (logits
resized bilinearly, then the arg-max), against the original masks.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from medq.common.families.ct_lesions.augment import seg_transform
from medq.common.families.ct_lesions.data import SegSource, SliceReader, slice_arrays
from medq.common.families.ct_lesions.hu import HUNormaliser
from medq.common.families.ct_lesions.losses import SegLoss
from medq.common.families.ct_lesions.metrics import seg_report
from medq.common.families.ct_lesions.model import build_segmenter
from medq.common.families.ct_lesions.schema import CLASSES, LESIONS, N_CLASSES
from medq.common.families.ct_lesions.spec import SegmentSpec
from medq.common.training.checkpoint import (
    BEST_NAME, INIT_NAME, LAST_NAME, load_checkpoint, prepare_workdir, restore, resumable, save_checkpoint,
    save_weights, set_rng_states
)
from medq.common.training.kit import (
    EpochMeter, Progress, TrainHooks, autocast, learning_rates, pick_device, seed_everything, seed_worker_transform, train_one_epoch
)

log = logging.getLogger(__name__)
EVAL_BATCH = 8
AIR_HU = -1000.0
CLASS_WEIGHT_RANGE = (0.1, 10.0)


class SliceSet(Dataset):
    """(image (1, S, S) float32 z-scores, mask (S, S) int64) of each global slice index, read from
    the memory-mapped arrays (opened lazily, so DataLoader workers each map their own). The
    augmentation sees the clipped HU on [0, 1] (albumentations clips float images to that range),
    the model the z-scores."""

    def __init__(self, sources: Sequence[SegSource], indices: Sequence[int], normaliser: HUNormaliser,
                 spec: SegmentSpec, train: bool):
        self.read, self.indices, self.normaliser = SliceReader(sources), list(indices), normaliser
        self.transform = seg_transform(spec, train, air=float(normaliser.unit(np.array([AIR_HU]))[0]))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        hu, mask = self.read(self.indices[k])
        out = self.transform(image=self.normaliser.unit(hu), mask=mask)  # augmented in [0, 1], then z-scored
        return (torch.from_numpy(np.ascontiguousarray(self.normaliser.from_unit(out["image"]))).unsqueeze(0),
                torch.from_numpy(np.ascontiguousarray(out["mask"])).long())


def class_pixel_counts(sources: Sequence[SegSource], indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(pixels per class (C,), has-lesion flag per slice (N,)) over the given slices."""
    counts, lesion = np.zeros(N_CLASSES, dtype=np.int64), []
    for _, mask in slice_arrays(sources, indices):
        per_class = np.bincount(mask.ravel(), minlength=N_CLASSES)
        counts += per_class
        lesion.append(bool(per_class[list(LESIONS)].sum()))
    return counts, np.array(lesion, dtype=bool)


def inverse_frequency_weights(counts: np.ndarray) -> tuple[float, ...]:
    """w_c = total / (C * count_c), clipped to CLASS_WEIGHT_RANGE (a class absent from training
    gets the upper bound): 1 for every class when they are balanced."""
    counts = np.asarray(counts, dtype=np.float64)
    with np.errstate(divide="ignore"):
        weights = counts.sum() / (len(counts) * counts)
    return tuple(float(w) for w in np.clip(np.nan_to_num(weights, posinf=CLASS_WEIGHT_RANGE[1]),
                                           *CLASS_WEIGHT_RANGE))


@dataclass(frozen=True)
class SegOutcome:
    epochs_run: int
    best_epoch: int
    best_val_dice: float | None  # mean lesion Dice, pooled over the validation slices
    best_checkpoint: Path
    last_checkpoint: Path
    cancelled: bool
    stopped_early: bool
    resumed_from_epoch: int | None
    device: str
    train_slices_per_s: float
    best_val_loss: float | None  # validation loss of the best epoch (None when its checkpoint was
    # written before the loss was kept, or no epoch completed)


@dataclass
class _State:
    """The loop state that goes into last.pt (its last completed epoch is the checkpoint's own)."""

    best_dice: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    best_val_loss: float | None = None  # the validation loss of best_epoch


def set_bn_momentum(model: torch.nn.Module, momentum: float | None) -> None:
    """smp's EfficientNet encoders keep BatchNorm statistics with momentum 0.01 (TensorFlow's 0.99),
    so after a few hundred steps the running statistics that validation uses still lag the
    weights and an improving model validates as if it had learnt nothing. 0.1, PyTorch's default,
    follows within tens of steps; None keeps the encoder's own."""
    if momentum is None:
        return
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def _sampler(lesion: np.ndarray, spec: SegmentSpec, seed: int, epoch: int) -> WeightedRandomSampler:
    weights = np.where(lesion, spec.lesion_weight, 1.0)
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples=len(weights),
                                 replacement=True, generator=torch.Generator().manual_seed(seed * 1000 + epoch))


def train_segmenter(spec: SegmentSpec, sources: Sequence[SegSource], split: dict[str, list[int]], workdir: Path,
                    seed: int = 0, hooks: TrainHooks = TrainHooks()) -> SegOutcome:
    """Train (or resume from ``workdir/last.pt``) on split["train"], validating on split["val"]."""
    workdir = Path(workdir)
    last_path, best_path = workdir / LAST_NAME, workdir / BEST_NAME
    checkpoint = resumable(workdir, spec, seed)
    seed_everything(seed)
    device = pick_device()
    use_amp = spec.amp and device.type == "cuda"
    if checkpoint is None:
        normaliser = HUNormaliser.fit(hu for hu, _ in slice_arrays(sources, split["train"]))
        counts, lesion = class_pixel_counts(sources, split["train"])
        class_weights = spec.class_weights or inverse_frequency_weights(counts)
    else:
        normaliser = HUNormaliser(**checkpoint["hu"])
        class_weights, lesion = tuple(checkpoint["class_weights"]), checkpoint["lesion"].numpy()
    model = build_segmenter(spec.arch, spec.encoder, N_CLASSES, None if checkpoint else spec.pretrained).to(device)
    prepare_workdir(workdir, model)
    set_bn_momentum(model, spec.bn_momentum)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    steps_per_epoch = math.ceil(len(split["train"]) / spec.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.max_lr, total_steps=spec.epochs * steps_per_epoch,
                                                    div_factor=spec.max_lr / spec.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = SegLoss(spec.w_ce, spec.w_dice, spec.w_focal, spec.gamma, class_weights)
    normalisation = {"hu": normaliser.to_dict(), "class_weights": list(class_weights)}  # in every file
    state, finished, resumed_from = _State(), 0, None  # finished: the last completed epoch
    if checkpoint is not None:
        restore(checkpoint, model, optimizer, scheduler, scaler)
        state, finished = _State(**checkpoint["state"]), int(checkpoint["epoch"])
        set_rng_states(checkpoint["rng"])
        resumed_from = finished
        log.info("resuming from epoch %d in %s", finished, workdir)
    else:
        save_weights(workdir / INIT_NAME, model, spec, 0, seed=seed, **normalisation)

    def loss_of(batch) -> tuple[torch.Tensor, int]:
        images, masks = (t.to(device, non_blocking=True) for t in batch)
        with autocast(device, use_amp):
            logits = model(images)
        return loss_fn(logits, masks), len(images)

    def schedule() -> None:
        if scheduler.last_epoch < scheduler.total_steps:  # OneCycle refuses a step past its end
            scheduler.step()

    train_set = SliceSet(sources, split["train"], normaliser, spec, train=True)
    seconds, trained, cancelled = 0.0, 0, False
    for epoch in range(finished + 1, spec.epochs + 1):
        if state.stopped_early:
            break
        epoch_start = time.monotonic()
        train_set.transform.set_random_seed(seed * 1000 + epoch)  # in-process loading: one seed per epoch
        loader = DataLoader(train_set, batch_size=spec.batch_size, sampler=_sampler(lesion, spec, seed, epoch),
                            num_workers=spec.loader_workers, pin_memory=device.type == "cuda", drop_last=False,
                            worker_init_fn=seed_worker_transform)
        meter = EpochMeter()

        def report(m: EpochMeter, epoch=epoch) -> None:
            hooks.progress(Progress(epoch, spec.epochs, "train", m.steps, steps_per_epoch, m.mean_loss, None, None,
                                    m.images_per_s, False))

        cancelled = train_one_epoch(model, loader, loss_of, optimizer, scaler, epoch=epoch, meter=meter,
                                    should_stop=hooks.should_stop, report=report, after_step=schedule)
        seconds, trained = seconds + meter.seconds, trained + meter.images
        if cancelled:  # last.pt keeps the last completed epoch; a resume repeats this one
            break
        val_loss, val_dice = validate(model, sources, split["val"], normaliser, spec, device, use_amp, loss_fn)
        finished = epoch
        if state.best_dice is None or val_dice > state.best_dice:
            state.best_dice, state.best_epoch, state.bad_epochs, state.best_val_loss = val_dice, epoch, 0, val_loss
            save_weights(best_path, model, spec, epoch, seed=seed, val_lesion_dice=val_dice, val_loss=val_loss,
                         **normalisation)
        else:
            state.bad_epochs += 1
        state.stopped_early = bool(spec.patience) and state.bad_epochs >= spec.patience
        save_checkpoint(last_path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                        epoch=finished, spec=spec, seed=seed, state=dataclasses.asdict(state),
                        extra={**normalisation, "lesion": torch.from_numpy(lesion)})
        hooks.progress(Progress(epoch, spec.epochs, "train", meter.steps, steps_per_epoch, meter.mean_loss, val_loss,
                                None, meter.images_per_s, True, val_score=val_dice,
                                metrics={"val_lesion_dice": val_dice}, lrs=learning_rates(optimizer),
                                wall_s=time.monotonic() - epoch_start))
        log.info("epoch %d: train loss %.4f, val loss %.4f, val lesion Dice %.4f", epoch, meter.mean_loss,
                 val_loss, val_dice)
    return SegOutcome(finished, state.best_epoch, state.best_dice, best_path, last_path, cancelled,
                      state.stopped_early, resumed_from, str(device), trained / seconds if seconds > 0 else 0.0,
                      state.best_val_loss)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, device: torch.device, use_amp: bool,
                   out_size: tuple[int, int]) -> torch.Tensor:
    """Float32 logits (B, C, H, W) at ``out_size`` of a batch (B, 1, S, S) of z-scores."""
    with autocast(device, use_amp):
        logits = model(images.to(device, non_blocking=True))
    logits = logits.float()
    if tuple(logits.shape[-2:]) != tuple(out_size):
        logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
    return logits


def _batches(sources, indices, normaliser: HUNormaliser, spec: SegmentSpec):
    """(z-scores resized (B, 1, S, S), original masks (B, H, W)) of the slices, EVAL_BATCH at a time."""
    resize = seg_transform(spec, train=False)
    images, masks = [], []
    for hu, mask in slice_arrays(sources, indices):
        images.append(normaliser.from_unit(resize(image=normaliser.unit(hu))["image"]))
        masks.append(mask)
        if len(images) == EVAL_BATCH:
            yield torch.from_numpy(np.stack(images)).unsqueeze(1), np.stack(masks)
            images, masks = [], []
    if images:
        yield torch.from_numpy(np.stack(images)).unsqueeze(1), np.stack(masks)


def predict_split(model, sources, indices, normaliser, spec, device, use_amp, loss_fn=None):
    """(predicted class indices (N, H, W) uint8, truth (N, H, W) uint8, mean loss or None)."""
    model.eval()
    preds, truths, loss_sum = [], [], 0.0
    for images, masks in _batches(sources, indices, normaliser, spec):
        logits = predict_logits(model, images, device, use_amp, masks.shape[1:])
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, torch.from_numpy(masks).long().to(device))) * len(masks)
        preds.append(logits.argmax(dim=1).to(torch.uint8).cpu().numpy())
        truths.append(masks)
    model.train()
    return np.concatenate(preds), np.concatenate(truths), (loss_sum / len(indices) if loss_fn else None)


def validate(model, sources, indices, normaliser, spec, device, use_amp, loss_fn) -> tuple[float, float]:
    """(validation loss, mean lesion Dice pooled over the slices; 0 when no lesion anywhere)."""
    pred, truth, loss = predict_split(model, sources, indices, normaliser, spec, device, use_amp, loss_fn)
    dice = seg_report(pred, truth, CLASSES, LESIONS)["lesion_mean"]["dice_pooled"]
    return loss, float(dice) if dice is not None else 0.0


def load_segmenter(path: Path) -> tuple[torch.nn.Module, SegmentSpec, HUNormaliser]:
    checkpoint = load_checkpoint(Path(path))
    spec = SegmentSpec.from_dict(checkpoint["spec"])
    model = build_segmenter(spec.arch, spec.encoder, N_CLASSES, weights_follow=True)
    model.load_state_dict(checkpoint["model"])
    return model.eval(), spec, HUNormaliser(**checkpoint["hu"])


def evaluate_segmenter(checkpoint: Path, sources: Sequence[SegSource], indices: Sequence[int],
                       overlay_dir: Path | None = None, n_overlays: int = 8) -> dict:
    """Per-class Dice and IoU (both reductions, the spec's empty rule) of one checkpoint on the
    slices; with ``overlay_dir``, review overlays of the slices with the most lesion."""
    model, spec, normaliser = load_segmenter(checkpoint)
    device = pick_device()
    model.to(device)
    pred, truth, _ = predict_split(model, sources, indices, normaliser, spec, device,
                                   spec.amp and device.type == "cuda")
    report = seg_report(pred, truth, CLASSES, LESIONS, spec.empty, ids=indices)
    report["checkpoint_epoch"] = int(load_checkpoint(Path(checkpoint)).get("epoch", 0))
    if overlay_dir is not None:
        from medq.common.families.ct_lesions.overlay import write_review_overlays

        report["overlays"] = str(write_review_overlays(sources, indices, pred, truth, Path(overlay_dir), n_overlays))
    return report
