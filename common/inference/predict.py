"""Bulk landmark inference with a trained ensemble: the predictor, and one chunk of studies.

``LandmarkPredictor`` holds the members (``best.pt`` files of ``train_member``) on one device
and turns a batch of model-size images into landmarks in pixels of each ORIGINAL image, with
the members' spread. ``run_chunk`` streams (study id, archive path) items through DataLoader
worker processes that read and decode them, predicts batch by batch, runs quality control and
hands every study's ``StudyOutcome`` (failures included) to a callback once per batch.

Coordinate conventions are those of training (``common.families.chest.augment``/``dataset``): a
member outputs x, y normalised by the model size S, so original pixels are ``x * width`` and
``y * height``; the flip test mirrors the image and maps x back by ``x -> S - 1 - x`` at model
scale, then swaps the left/right pairs back (``schema.flip_permutation()``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medq.common.errors import SpecError
from medq.common.inference.outcome import ChunkStats, StudyOutcome
from medq.common.inference.overlay import write_overlay
from medq.common.inference.qc import DEFAULT_SPREAD_LIMIT_FRACTION, qc_flags
from medq.common.inference.readers import decode_image
from medq.common.inference.types import StudyError
from medq.common.families.chest.augment import eval_transform
from medq.common.training.checkpoint import load_checkpoint
from medq.common.families.chest.evaluate import load_member
from medq.common.families.chest.metrics import AGGREGATORS, aggregate_predictions
from medq.common.families.chest.schema import N_LANDMARKS, flip_permutation
from medq.common.training.kit import pick_device
from medq.common.registry import Registry

__all__ = ["LandmarkPredictor", "build_predictor", "run_chunk", "overlay_path", "loader_processes", "TTAS", "StudyOutcome",
           "ChunkStats"]

_FLIP_PERMUTATION = flip_permutation()

# --- test-time augmentation: (model, images (B, 1, S, S)) -> normalised landmarks (B, 15, 2) ----

TestTimeAugmentation = Callable[[nn.Module, torch.Tensor], torch.Tensor]
TTAS: Registry[TestTimeAugmentation] = Registry("tta")


@TTAS.register("none")
def _plain(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model(images).float().view(-1, N_LANDMARKS, 2)


@TTAS.register("flip")
def _flip(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Mean of the plain prediction and the un-flipped prediction of the mirrored image."""
    size = images.shape[-1]
    plain = _plain(model, images)
    mirrored = _plain(model, torch.flip(images, dims=(3,)))[:, _FLIP_PERMUTATION]
    x = (size - 1) / size - mirrored[..., 0]  # x -> S - 1 - x at model scale, in units of S
    return (plain + torch.stack([x, mirrored[..., 1]], dim=-1)) / 2


# --- the predictor -----------------------------------------------------------------------------


class LandmarkPredictor:
    """An ensemble's members in eval mode on one device (channels_last + float16 autocast on CUDA)."""

    qc_flags = staticmethod(qc_flags)  # the chest's own checks (geometry, left/right pairs)

    def __init__(self, models: Sequence[nn.Module], image_size: int, aggregation: str = "mean",
                 tta: str | None = None, device: torch.device | str | None = None,
                 val_losses: Sequence[float] | None = None):
        AGGREGATORS.get(aggregation)  # an unknown name lists the valid ones
        self.tta_name = tta or "none"
        self._tta = TTAS.get(self.tta_name)
        if not models:
            raise SpecError("an ensemble needs at least one member checkpoint")
        if aggregation == "weighted" and (val_losses is None or len(val_losses) != len(models)):
            raise SpecError("aggregation 'weighted' needs one validation loss per member")
        self.device = torch.device(device) if device is not None else pick_device()
        self.use_amp = self.device.type == "cuda"
        memory_format = torch.channels_last if self.use_amp else torch.contiguous_format
        self.models = [m.to(self.device, memory_format=memory_format).eval() for m in models]
        self.image_size = int(image_size)
        self.aggregation = aggregation
        self.val_losses = None if val_losses is None else [float(v) for v in val_losses]

    @classmethod
    def from_checkpoints(cls, paths: Sequence[Path], aggregation: str = "mean", tta: str | None = None,
                         device: torch.device | str | None = None) -> "LandmarkPredictor":
        """Load every member's ``best.pt``; they must share ``image_size``. "weighted" uses each
        checkpoint's stored ``val_loss``. Raises SpecError (unknown aggregation or tta name,
        members of different sizes) and JobError (unreadable checkpoint)."""
        AGGREGATORS.get(aggregation)
        TTAS.get(tta or "none")
        if not paths:
            raise SpecError("an ensemble needs at least one member checkpoint")
        models, sizes, val_losses = [], [], []
        for path in paths:
            model, spec = load_member(Path(path))
            models.append(model)
            sizes.append(spec.image_size)
            if aggregation == "weighted":
                val_losses.append(load_checkpoint(Path(path)).get("val_loss"))
        if len(set(sizes)) > 1:
            listed = ", ".join(f"member {k}: {s} px" for k, s in enumerate(sizes))
            raise SpecError(f"ensemble members were trained at different image sizes ({listed})")
        if aggregation == "weighted" and any(v is None for v in val_losses):
            raise SpecError("aggregation 'weighted' needs best.pt checkpoints (with val_loss)")
        return cls(models, sizes[0], aggregation, tta, device, val_losses if aggregation == "weighted" else None)

    @torch.no_grad()
    def member_predictions(self, batch: torch.Tensor, sizes: np.ndarray) -> np.ndarray:
        """(M, B, 15, 2) float64: each member's landmarks in original pixels (x * w, y * h)."""
        s = self.image_size
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (1, s, s):
            raise ValueError(f"expected a batch of shape (B, 1, {s}, {s}), got {tuple(batch.shape)}")
        sizes = np.asarray(sizes, dtype=np.float64)
        if sizes.shape != (batch.shape[0], 2):
            raise ValueError(f"expected sizes of shape ({batch.shape[0]}, 2) (width, height), got {sizes.shape}")
        images = batch.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:  # decoded images travel as bytes; scaled on the device
            images = images.float().div_(255.0)
        if self.use_amp:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            normalised = torch.stack([self._tta(model, images) for model in self.models])
        return normalised.cpu().numpy().astype(np.float64) * sizes[None, :, None, :]

    def predict(self, batch: torch.Tensor, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks (B, 15, 2) and spread (B, 15), both in pixels of each ORIGINAL image.

        batch: (B, 1, S, S) grey, float in [0, 1] or uint8, at the members' image_size S; sizes: (B, 2)
        (width, height) of the originals. The members are combined by ``aggregation``; spread is
        the population standard deviation of the members' points about their mean,
        sqrt(mean_m |p_m - mean p|^2) (radial, so sqrt(var_x + var_y)); 0 for one member.
        """
        members = self.member_predictions(batch, sizes)
        landmarks = aggregate_predictions(members, self.aggregation, self.val_losses)
        spread = np.sqrt(((members - members.mean(axis=0)) ** 2).sum(axis=-1).mean(axis=0))
        return landmarks, spread

    def close(self) -> None:
        """Drop the models and give their GPU memory back (a worker lives on after the task)."""
        self.models = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def build_predictor(paths: Sequence[Path], aggregation: str = "mean", tta: str | None = None,
                    device: torch.device | str | None = None):
    """The predictor for these checkpoints, chosen by what they hold: an HRNet spec (a ``width``)
    gives the heatmap predictor of the cephalometric family, a segmentation spec (an ``arch``)
    the segmenter (one checkpoint), else the chest ensemble's."""
    spec = load_checkpoint(Path(paths[0])).get("spec") or {}
    if "arch" in spec:
        from medq.common.families.ct_lesions.predict import SegPredictor

        return SegPredictor(Path(paths[0]), device)
    if "width" in spec:
        from medq.common.families.ceph.predict import HeatmapPredictor

        return HeatmapPredictor(paths, aggregation, tta, device)
    return LandmarkPredictor.from_checkpoints(list(paths), aggregation=aggregation, tta=tta, device=device)


# --- decoding in DataLoader workers ------------------------------------------------------------

GPU_LOADER_PROCESSES = 2


def loader_processes(requested: int | None, device: torch.device) -> int:
    """Decoding processes for a chunk: as requested, else 2 beside a GPU (which would otherwise
    wait on PNG/DICOM decoding) and 0 on a CPU device, where the model's own threads already
    use every core and separate decoders only add copies between processes."""
    if requested is not None:
        return requested
    return GPU_LOADER_PROCESSES if device.type == "cuda" else 0



@dataclass
class _Decoded:
    """A good item, as it travels from a loader worker: the resized tensor and what the record
    needs (``pixels`` only when overlays are drawn)."""

    position: int
    study_id: int
    image: torch.Tensor  # (1, S, S) uint8: a quarter of float32's bytes between processes
    size: tuple[int, int]  # (width, height) of the original
    spacing_mm: tuple[float, float] | None
    uids: dict[str, str]
    source_format: str
    pixels: np.ndarray | None


@dataclass
class _Batch:
    images: torch.Tensor | None  # (B, 1, S, S) uint8 of the good items, None when all failed
    good: list[_Decoded]
    failed: list[tuple[int, StudyOutcome]]  # (position, outcome)

    def pin_memory(self) -> "_Batch":  # DataLoader calls this when pin_memory=True
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def _without_path(message: str, path: str) -> str:
    """The message with the archive path (and its file name) cut out: names can be patients'."""
    name = path.rsplit("/", 1)[-1]
    for text in (path, name):
        if len(text) >= 3:
            message = message.replace(text, "<file>")
    return message


class _StudyImages(Dataset):
    """Item k: archive bytes of ``items[k]`` decoded, resized to S, or the study's failure."""

    def __init__(self, items: Sequence[tuple[int, str]], archive: Any, image_size: int, keep_pixels: bool):
        self.items = list(items)
        self.archive = archive
        self.image_size = image_size
        self.keep_pixels = keep_pixels
        self._resize = None  # built in the worker on first use

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> _Decoded | tuple[int, StudyOutcome]:
        study_id, path = self.items[position]
        try:
            decoded = decode_image(self.archive.read(path))
            pixels = np.asarray(decoded.pixels)
            if pixels.ndim != 2 or pixels.dtype != np.uint8 or min(pixels.shape) < 1:
                raise StudyError(f"decoder returned {pixels.dtype} pixels of shape {pixels.shape}, "
                                 "not a (H, W) uint8 image")
            if self._resize is None:
                self._resize = eval_transform(self.image_size)
            resized = self._resize(image=pixels)["image"]
        except StudyError as exc:
            return position, StudyOutcome(study_id, state=exc.state, reason=_without_path(str(exc), path))
        except Exception as exc:  # an unforeseen decoder failure fails this study, not the chunk
            return position, StudyOutcome(study_id, state="failed",
                                          reason=_without_path(f"{type(exc).__name__}: {exc}", path))
        image = torch.from_numpy(np.ascontiguousarray(resized)).unsqueeze(0)
        return _Decoded(position, study_id, image, decoded.size, decoded.spacing_mm, dict(decoded.uids),
                        decoded.source_format, pixels if self.keep_pixels else None)


def _collate(items: list[_Decoded | tuple[int, StudyOutcome]]) -> _Batch:
    good = [item for item in items if isinstance(item, _Decoded)]
    failed = [item for item in items if not isinstance(item, _Decoded)]
    images = torch.stack([item.image for item in good]) if good else None
    return _Batch(images, good, failed)


# --- one chunk ---------------------------------------------------------------------------------


def overlay_path(overlay_dir: Path, study_id: int) -> Path:
    """Where ``run_chunk`` writes a study's overlay: ``<overlay_dir>/<study_id>.png``."""
    return Path(overlay_dir) / f"{int(study_id)}.png"


def _done(item: _Decoded, landmarks: np.ndarray, spread: np.ndarray, spread_limit_fraction: float,
          overlay_dir: Path | None, checks: Callable = qc_flags) -> StudyOutcome:
    reasons = checks(landmarks, spread, item.size, spread_limit_fraction * item.size[0])
    landmarks_mm = None
    if item.spacing_mm is not None:
        row, column = item.spacing_mm
        landmarks_mm = (landmarks * np.array([column, row], dtype=np.float64)).tolist()
    if overlay_dir is not None and item.pixels is not None:
        write_overlay(item.pixels, landmarks, bool(reasons), overlay_path(overlay_dir, item.study_id))
    return StudyOutcome(
        study_id=item.study_id, state="done", landmarks_px=landmarks.tolist(), landmarks_mm=landmarks_mm,
        spread_px=spread.tolist(), qc_flag=bool(reasons), qc_reasons=reasons, image_size=item.size,
        uids=item.uids, source_format=item.source_format,
    )


def run_chunk(
    items: Sequence[tuple[int, str]],
    archive: Any,
    predictor: Any,  # LandmarkPredictor, or any with its interface (common.families.ceph.predict.HeatmapPredictor)
    batch_size: int,
    loader_workers: int | None,
    on_results: Callable[[list[StudyOutcome]], None],
    should_stop: Callable[[], bool] = lambda: False,
    overlay_dir: Path | None = None,
    spread_limit_fraction: float = DEFAULT_SPREAD_LIMIT_FRACTION,
) -> ChunkStats:
    """Predict every (study id, archive path) of ``items``; return the chunk's counts.

    ``archive.read(path) -> bytes`` and ``decode_image`` run inside ``loader_workers`` DataLoader
    worker processes (0: in this process; None: ``loader_processes``). A study that cannot be read or decoded becomes a
    "failed" (or "skipped") outcome with a reason free of its path; the chunk goes on.
    ``on_results`` gets each batch's outcomes in item order, once per batch; ``should_stop()``
    is asked before each batch, and True ends the chunk (``stopped``) with the rest unseen.
    With ``overlay_dir``, each done study's overlay goes to ``overlay_path(overlay_dir, id)``.
    """
    if batch_size < 1:
        raise SpecError(f"batch_size must be at least 1, got {batch_size}")
    dataset = _StudyImages(items, archive, predictor.image_size, keep_pixels=overlay_dir is not None)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=loader_processes(loader_workers, predictor.device),
                        collate_fn=_collate, pin_memory=predictor.device.type == "cuda",
                        persistent_workers=False)
    counts = {"done": 0, "failed": 0, "skipped": 0}
    seen = 0
    start = time.perf_counter()
    batches = iter(loader)
    try:
        while not should_stop():
            batch = next(batches, None)
            if batch is None:
                break
            outcomes = list(batch.failed)
            if batch.good:
                sizes = np.array([item.size for item in batch.good], dtype=np.float64)
                landmarks, spread = predictor.predict(batch.images, sizes)
                for k, item in enumerate(batch.good):
                    outcome = _done(item, landmarks[k], spread[k], spread_limit_fraction, overlay_dir,
                                    predictor.qc_flags)
                    outcomes.append((item.position, outcome))
            ordered = [outcome for _, outcome in sorted(outcomes, key=lambda pair: pair[0])]
            on_results(ordered)
            for outcome in ordered:
                counts[outcome.state] += 1
            seen += len(ordered)
    finally:
        del batches  # shuts the loader workers down
    seconds = time.perf_counter() - start
    return ChunkStats(done=counts["done"], failed=counts["failed"], skipped=counts["skipped"],
                      seconds=seconds, images_per_s=counts["done"] / seconds if seconds > 0 else 0.0,
                      stopped=seen < len(dataset))
