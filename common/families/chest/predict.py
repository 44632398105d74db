"""Bulk inference with a trained chest ensemble: its members on one device, over 2D studies.

``EnsemblePredictor`` holds the members (``best.pt`` files of ``train_member``) and turns a
batch of model-size images into landmarks in pixels of each ORIGINAL image, with the members'
spread (``locate``); the shared ``LandmarkPredictor`` does the rest (decoding in loader
processes, the chest's quality checks, millimetres, overlays with its pairs and axis).

Coordinate conventions are those of training (``augment``/``dataset``): a member outputs x, y
normalised by the model size S, so original pixels are ``x * width`` and ``y * height``; the
flip test mirrors the image and maps x back by ``x -> S - 1 - x`` at model scale, then swaps
the left/right pairs back (``schema.flip_permutation()``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from medq.common.errors import SpecError
from medq.common.training.checkpoint import load_checkpoint
from medq.common.families.chest.evaluate import load_member
from medq.common.families.chest.metrics import AGGREGATORS, aggregate_predictions
from medq.common.families.chest.qc import CHEST_CHECKS, MEDIASTINAL_AXIS
from medq.common.families.chest.schema import (
    FLIP_PAIRS, LANDMARK_NAMES, N_LANDMARKS, SR_DISTANCES, flip_permutation,
)
from medq.common.training.kit import pick_device
from medq.common.inference.landmarks import LandmarkPredictor
from medq.common.registry import Registry

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


class EnsemblePredictor(LandmarkPredictor):
    """An ensemble's members in eval mode on one device (channels_last + float16 autocast on CUDA)."""

    checks = CHEST_CHECKS
    overlay_pairs = FLIP_PAIRS
    overlay_axis = MEDIASTINAL_AXIS
    landmark_names = LANDMARK_NAMES
    sr_distances = SR_DISTANCES

    def __init__(self, models: Sequence[nn.Module], image_size: int, aggregation: str = "mean",
                 tta: str | None = None, device: torch.device | str | None = None,
                 val_losses: Sequence[float] | None = None, **options: Any):
        """``options``: those of ``LandmarkPredictor`` (studies_per_batch, out_dir, spread_limit_fraction)."""
        AGGREGATORS.get(aggregation)  # an unknown name lists the valid ones
        self.tta_name = tta or "none"
        self._tta = TTAS.get(self.tta_name)
        if not models:
            raise SpecError("an ensemble needs at least one member checkpoint")
        if aggregation == "weighted" and (val_losses is None or len(val_losses) != len(models)):
            raise SpecError("aggregation 'weighted' needs one validation loss per member")
        super().__init__(image_size, torch.device(device) if device is not None else pick_device(), **options)
        self.use_amp = self.device.type == "cuda"
        memory_format = torch.channels_last if self.use_amp else torch.contiguous_format
        self.models = [m.to(self.device, memory_format=memory_format).eval() for m in models]
        self.aggregation = aggregation
        self.val_losses = None if val_losses is None else [float(v) for v in val_losses]

    @classmethod
    def from_checkpoints(cls, paths: Sequence[Path], aggregation: str = "mean", tta: str | None = None,
                         device: torch.device | str | None = None, **options: Any) -> "EnsemblePredictor":
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
        return cls(models, sizes[0], aggregation, tta, device, val_losses if aggregation == "weighted" else None,
                   **options)

    @torch.no_grad()
    def member_predictions(self, batch: torch.Tensor, sizes: np.ndarray) -> np.ndarray:
        """(M, B, 15, 2) float64: each member's landmarks in original pixels (x * w, y * h)."""
        s = self.image_size
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (1, s, s):
            raise ValueError(f"expected a batch of shape (B, 1, {s}, {s}), got {tuple(batch.shape)}")
        sizes = np.asarray(sizes, dtype=np.float64)
        if sizes.shape != (batch.shape[0], 2):
            raise ValueError(f"expected sizes of shape ({batch.shape[0]}, 2) (width, height), got {sizes.shape}")
        images = self.to_device(batch, self.device, channels_last=self.use_amp)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            normalised = torch.stack([self._tta(model, images) for model in self.models])
        return normalised.cpu().numpy().astype(np.float64) * sizes[None, :, None, :]

    def locate(self, images: torch.Tensor, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks (B, 15, 2) and spread (B, 15), both in pixels of each ORIGINAL image.

        images: (B, 1, S, S) grey, float in [0, 1] or uint8, at the members' image_size S; sizes:
        (B, 2) (width, height) of the originals. The members are combined by ``aggregation``;
        spread is the population standard deviation of the members' points about their mean,
        sqrt(mean_m |p_m - mean p|^2) (radial, so sqrt(var_x + var_y)); 0 for one member.
        """
        members = self.member_predictions(images, sizes)
        landmarks = aggregate_predictions(members, self.aggregation, self.val_losses)
        return landmarks, self.spread(members)
