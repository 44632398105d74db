"""Training and evaluation of the HRNet heatmap model (DESIGN.md, family 2).

AdamW with a linear warm-up then cosine decay (per step), mixed precision on CUDA, albumentations
(rotation, translation, scale, brightness/contrast) with the keypoints moved along, progressive
resizing (``spec.progressive``: a smaller input for the first epochs), a checkpoint after every
epoch (``last.pt``, the training kit's format) plus the best ``top_k`` epochs by validation
MRE (``best-<epoch>.pt``), whose heatmaps are averaged at evaluation; each epoch also reports
the validation heatmap loss (the training objective).
A resumed run starts again at the epoch after the last one completed; a cancel stops within an
epoch. Validation and evaluation decode at ``spec.image_size``.

Coordinates: keypoints follow albumentations' scaling (x_input = x_original * S / width), and
predictions map back by the inverse, so the codec's pixel-centre convention cancels out.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import albumentations as A
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from medq.common.families.ceph.codec import HeatmapCodec
from medq.common.families.ceph.metrics import CASES, ceph_metrics, image_results, radial_errors_mm
from medq.common.families.ceph.model import HEATMAP_STRIDE, build_hrnet
from medq.common.families.ceph.readers import CephRecord
from medq.common.families.ceph.schema import LANDMARKS, N_LANDMARKS
from medq.common.landmark_pairs import flip_permutation
from medq.common.families.ceph.spec import HRNetSpec
from medq.common.training.checkpoint import (
    INIT_NAME, LAST_NAME, load_checkpoint, prepare_workdir, restore, resumable, save_checkpoint, save_weights,
    set_rng_states
)
from medq.common.training.kit import (
    EpochMeter, Progress, TrainHooks, autocast, learning_rates, pick_device, seed_everything, seed_worker_transform, train_one_epoch
)

log = logging.getLogger(__name__)
EVAL_BATCH = 8


def load_grey(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def _transform(spec: HRNetSpec, size: int, train: bool) -> A.Compose:
    steps = [A.Resize(size, size)]
    if train:
        steps += [A.Affine(rotate=(-spec.rotation_deg, spec.rotation_deg),
                           translate_percent=(-spec.translate, spec.translate), scale=spec.scale, p=1.0),
                  A.RandomBrightnessContrast(spec.brightness, spec.contrast, p=1.0)]
    return A.Compose(steps, keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))


class HeatmapDataset(Dataset):
    """(image (1, S, S) float in [0, 1], heatmaps (K, S/4, S/4), weights (K,)) per record."""

    def __init__(self, records: Sequence[CephRecord], images: dict[str, np.ndarray], spec: HRNetSpec,
                 size: int, train: bool):
        self.records, self.images = list(records), images
        self.codec = HeatmapCodec(size, HEATMAP_STRIDE, spec.sigma * size / spec.image_size, spec.refine)
        self.transform = _transform(spec, size, train)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        out = self.transform(image=self.images[record.stem], keypoints=record.points)
        heatmaps, weights = self.codec.encode(np.asarray(out["keypoints"], dtype=np.float64))
        image = torch.from_numpy(np.ascontiguousarray(out["image"])).float().div_(255.0).unsqueeze(0)
        return image, torch.from_numpy(heatmaps), torch.from_numpy(weights)


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean squared error over heatmap pixels, landmarks outside the input weighted 0."""
    per_landmark = ((pred.float() - target) ** 2).mean(dim=(2, 3))
    return (per_landmark * weights).sum() / weights.sum().clamp_min(1.0)


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass
class _State:
    """The loop state that goes into last.pt (its last completed epoch is the checkpoint's own)."""

    best: list[tuple[float, int]] = field(default_factory=list)  # (val MRE, epoch), best first
    bad_epochs: int = 0
    stopped_early: bool = False
    best_val_loss: float | None = None  # validation heatmap loss of the best epoch (best[0])
    best_val_error_px: float | None = None  # its mean radial error in original pixels

    @classmethod
    def from_dict(cls, data: dict) -> "_State":
        return cls(**{**data, "best": [(float(mre), int(epoch)) for mre, epoch in data.get("best", [])]})


@dataclass(frozen=True)
class HRNetOutcome:
    epochs_run: int
    best_epoch: int
    best_val_mre: float | None  # mm, or px when a spacing is unknown
    best_checkpoints: tuple[Path, ...]
    last_checkpoint: Path
    cancelled: bool
    stopped_early: bool
    resumed_from_epoch: int | None
    device: str
    train_images_per_s: float
    best_val_loss: float | None  # validation heatmap loss of the best epoch (None when its
    # checkpoint was written before the loss was kept, or no epoch completed)
    best_val_error_px: float | None  # the best epoch's mean radial error in original pixels


def train_hrnet(spec: HRNetSpec, records: dict[str, Sequence[CephRecord]], workdir: Path, seed: int = 0,
                hooks: TrainHooks = TrainHooks()) -> HRNetOutcome:
    """Train (or resume from ``workdir/last.pt``) on records["train"], validating on records["val"].
    Each epoch's report carries the validation heatmap loss (``val_loss``), the MRE
    (``val_score``: mm, or px without a spacing) and the radial error in px (``val_error_px``)."""
    workdir = Path(workdir)
    last_path = workdir / LAST_NAME
    checkpoint = resumable(workdir, spec, seed)
    seed_everything(seed)
    device = pick_device()
    use_amp = spec.amp and device.type == "cuda"
    images = {r.stem: load_grey(r.image) for part in ("train", "val") for r in records[part]}
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    model = build_hrnet(spec.width, N_LANDMARKS, None if checkpoint else spec.pretrained).to(
        device, memory_format=memory_format)
    prepare_workdir(workdir, model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    steps_per_epoch = math.ceil(len(records["train"]) / spec.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(spec.warmup_epochs * steps_per_epoch, spec.epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    state, finished, resumed_from = _State(), 0, None  # finished: the last completed epoch
    if checkpoint is not None:
        restore(checkpoint, model, optimizer, scheduler, scaler)
        state, finished = _State.from_dict(checkpoint["state"]), int(checkpoint["epoch"])
        set_rng_states(checkpoint["rng"])
        resumed_from = finished
        log.info("resuming from epoch %d in %s", finished, workdir)
    else:
        save_weights(workdir / INIT_NAME, model, spec, 0, seed=seed)

    def loss_of(batch) -> tuple[torch.Tensor, int]:
        inputs, targets, weights = (t.to(device, non_blocking=True) for t in batch)
        with autocast(device, use_amp):
            pred = model(inputs.contiguous(memory_format=memory_format))
        return heatmap_loss(pred, targets, weights), len(inputs)

    val_set = HeatmapDataset(records["val"], images, spec, spec.image_size, train=False)
    seconds, trained, cancelled = 0.0, 0, False
    for epoch in range(finished + 1, spec.epochs + 1):
        if state.stopped_early:
            break
        epoch_start = time.monotonic()
        phase = f"{spec.size_at(epoch)}px"
        train_set = HeatmapDataset(records["train"], images, spec, spec.size_at(epoch), train=True)
        train_set.transform.set_random_seed(seed * 1000 + epoch)  # in-process loading: one seed per epoch
        loader = DataLoader(train_set, batch_size=spec.batch_size, shuffle=True, num_workers=spec.loader_workers,
                            pin_memory=device.type == "cuda", drop_last=False, worker_init_fn=seed_worker_transform,
                            generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        meter = EpochMeter()

        def report(m: EpochMeter, epoch=epoch, phase=phase) -> None:
            hooks.progress(Progress(epoch, spec.epochs, phase, m.steps, steps_per_epoch, m.mean_loss, None, None,
                                    m.images_per_s, False))

        cancelled = train_one_epoch(model, loader, loss_of, optimizer, scaler, epoch=epoch, meter=meter,
                                    should_stop=hooks.should_stop, report=report, after_step=scheduler.step)
        seconds, trained = seconds + meter.seconds, trained + meter.images
        if cancelled:  # last.pt keeps the last completed epoch; a resume repeats this one
            break
        val_loss, val_mre, val_px = validate_hrnet(model, val_set, device, use_amp)
        finished = epoch
        _keep_best(state, (val_mre, val_loss, val_px), epoch, spec, seed, model, workdir)
        state.bad_epochs = 0 if state.best and state.best[0][1] == epoch else state.bad_epochs + 1
        state.stopped_early = bool(spec.patience) and state.bad_epochs >= spec.patience
        save_checkpoint(last_path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                        epoch=finished, spec=spec, seed=seed, state=dataclasses.asdict(state))
        hooks.progress(Progress(epoch, spec.epochs, phase, meter.steps, steps_per_epoch, meter.mean_loss, val_loss,
                                val_px, meter.images_per_s, True, val_score=val_mre,
                                metrics={"val_mre_mm": val_mre, "val_error_px": val_px}, lrs=learning_rates(optimizer),
                                wall_s=time.monotonic() - epoch_start))
        log.info("epoch %d: train loss %.6f, val loss %.6f, val MRE %.3f, val error %.2f px", epoch,
                 meter.mean_loss, val_loss, val_mre, val_px)
    return HRNetOutcome(
        epochs_run=finished, best_epoch=state.best[0][1] if state.best else 0,
        best_val_mre=state.best[0][0] if state.best else None,
        best_checkpoints=tuple(_best_path(workdir, e) for _, e in state.best), last_checkpoint=last_path,
        cancelled=cancelled, stopped_early=state.stopped_early, resumed_from_epoch=resumed_from,
        device=str(device), train_images_per_s=trained / seconds if seconds > 0 else 0.0,
        best_val_loss=state.best_val_loss, best_val_error_px=state.best_val_error_px)


def _best_path(workdir: Path, epoch: int) -> Path:
    return workdir / f"best-{epoch:04d}.pt"


def _keep_best(state: _State, scores: tuple[float, float, float], epoch: int, spec: HRNetSpec, seed: int, model,
               workdir: Path) -> None:
    """Keep the ``top_k`` best epochs by validation MRE as files; drop the one pushed out.
    ``scores``: this epoch's (MRE, heatmap loss, radial error in px)."""
    val_mre, val_loss, val_px = scores
    ranked = sorted([*state.best, (val_mre, epoch)])
    kept, dropped = ranked[:spec.top_k], ranked[spec.top_k:]
    if (val_mre, epoch) in kept:
        save_weights(_best_path(workdir, epoch), model, spec, epoch, seed=seed, val_mre=val_mre, val_loss=val_loss,
                     val_error_px=val_px)
    for _, old in dropped:
        _best_path(workdir, old).unlink(missing_ok=True)
    state.best = kept
    if kept and kept[0][1] == epoch:
        state.best_val_loss, state.best_val_error_px = val_loss, val_px


@torch.no_grad()
def heatmaps_of(model: torch.nn.Module, images: torch.Tensor, flip_pairs: Sequence[tuple[int, int]] = ()) -> torch.Tensor:
    """The model's heatmaps; with flip pairs, the mean with those of the mirrored image, mirrored
    back and its pairs swapped (a heatmap column u mirrors to w - 1 - u exactly, as the input's
    x does to W - 1 - x under the codec's pixel-centre convention)."""
    maps = model(images).float()
    if flip_pairs:
        mirrored = torch.flip(model(torch.flip(images, dims=(3,))).float(), dims=(3,))
        maps = (maps + mirrored[:, flip_permutation(maps.shape[1], flip_pairs)]) / 2
    return maps


@torch.no_grad()
def predict_heatmaps(models: Sequence[torch.nn.Module], dataset: HeatmapDataset, device: torch.device,
                     use_amp: bool, flip_pairs: Sequence[tuple[int, int]] = ()) -> np.ndarray:
    """Mean heatmaps (N, K, h, w) of ``models`` over ``dataset`` (checkpoint ensembling), with the
    flip test when flip pairs are given."""
    loader = DataLoader(dataset, batch_size=EVAL_BATCH, pin_memory=device.type == "cuda")
    outputs = []
    for model in models:
        model.eval()
        maps = []
        for batch, _, _ in loader:
            with autocast(device, use_amp):
                maps.append(heatmaps_of(model, batch.to(device), flip_pairs).cpu().numpy())
        outputs.append(np.concatenate(maps))
    return np.mean(outputs, axis=0)


def to_original(points_input: np.ndarray, records: Sequence[CephRecord], size: int) -> np.ndarray:
    """(N, K, 2) input pixels -> pixels of each original image (albumentations' Resize scaling)."""
    scale = np.array([[r.size[0] / size, r.size[1] / size] for r in records])
    return points_input * scale[:, None, :]


@torch.no_grad()
def validate_hrnet(model, val_set: HeatmapDataset, device, use_amp: bool) -> tuple[float, float, float]:
    """(heatmap loss per image, MRE in mm or px when a spacing is unknown, mean radial error in
    original px) of ``model`` on the validation set, in one pass."""
    model.eval()
    loss_sum, maps = 0.0, []
    for batch, targets, weights in DataLoader(val_set, batch_size=EVAL_BATCH, pin_memory=device.type == "cuda"):
        with autocast(device, use_amp):
            pred = heatmaps_of(model, batch.to(device))
        loss_sum += heatmap_loss(pred, targets.to(device), weights.to(device)).item() * len(batch)
        maps.append(pred.cpu().numpy())
    points = to_original(val_set.codec.decode(np.concatenate(maps))[0], val_set.records, val_set.codec.input_size)
    truth = np.stack([r.points for r in val_set.records])
    px = float(np.linalg.norm(points - truth, axis=-1).mean())
    spacing = [r.spacing_mm for r in val_set.records]
    mre = float(radial_errors_mm(points, truth, spacing).mean()) if None not in spacing else px
    return loss_sum / len(val_set), mre, px


def load_hrnet(path: Path) -> tuple[torch.nn.Module, HRNetSpec]:
    checkpoint = load_checkpoint(Path(path))
    spec = HRNetSpec.from_dict(checkpoint["spec"])
    model = build_hrnet(spec.width, N_LANDMARKS)
    model.load_state_dict(checkpoint["model"])
    return model, spec


def evaluate_hrnet(checkpoints: Sequence[Path], records: Sequence[CephRecord], cases: int = CASES) -> dict:
    """MRE ± SD and SDR (mm, each image's own spacing) of the checkpoints' mean heatmaps; in pixels
    only (``unit``: "px") when an image's spacing is unknown. With them, every image's radial
    errors and the points of the ``cases`` best and worst images (none when 0)."""
    loaded = [load_hrnet(p) for p in checkpoints]
    spec = loaded[0][1]
    device = pick_device()
    models = [m.to(device) for m, _ in loaded]
    images = {r.stem: load_grey(r.image) for r in records}
    dataset = HeatmapDataset(records, images, spec, spec.image_size, train=False)
    maps = predict_heatmaps(models, dataset, device, spec.amp and device.type == "cuda", spec.flip_pairs)
    points = to_original(dataset.codec.decode(maps)[0], records, spec.image_size)
    truth = np.stack([r.points for r in records])
    known = all(r.spacing_mm is not None for r in records)
    spacing = [r.spacing_mm for r in records] if known else None
    metrics = ceph_metrics(points, truth, spacing, LANDMARKS)
    errors = radial_errors_mm(points, truth, spacing if known else np.ones(len(records)))
    metrics.update(image_results(errors, [r.stem for r in records], points, truth, [str(r.image) for r in records],
                                 metrics["unit"], cases))
    metrics["checkpoints"] = len(checkpoints)
    metrics["flip_test"] = bool(spec.flip_pairs)
    return metrics
