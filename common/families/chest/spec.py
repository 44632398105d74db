"""The chest family's spec: ResNet regressor ensembles, two training phases (torch-free)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from medq.common.errors import SpecError, unknown_name
from medq.common.spec_checks import Bound, between, check_numbers, positive
from medq.common.specs import FRACTION, SplitSpec, TRAINING_BOUNDS, from_fields

LANDMARK_LOSSES = ("mse", "wing", "symmetry", "distance", "complete")
LANDMARK_BACKBONES = ("resnet18", "resnet34", "resnet50")


@dataclass(frozen=True)
class EnsembleSpec:
    """Family 1: ResNet + regression head, two phases, one member per seed."""

    kind: ClassVar[str] = "ensemble"

    backbone: str = "resnet18"
    loss: str = "complete"
    epochs_head: int = 5  # phase 1: frozen backbone
    epochs: int = 40  # phase 2: all layers
    batch_size: int = 8
    image_size: int = 224
    lr_head: float = 1e-3
    lr_finetune_backbone: float = 2e-5
    lr_finetune_head: float = 2e-4
    weight_decay: float = 5e-5
    cosine_final_factor: float = 0.1  # cosine decays to lr / 10
    grad_clip: float = 1.0
    patience: int = 10  # early stopping on validation loss (epochs)
    wing_omega_px: float = 10.0  # Wing parameters in pixels at image_size
    wing_epsilon_px: float = 2.0
    symmetry_weight: float = 0.3
    distance_weight: float = 0.2
    flip_p: float = 0.7
    rotation_deg: float = 15.0
    brightness: float = 0.4
    contrast: float = 0.4
    pretrained: str | None = None  # local weights file; None looks in the framework cache
    amp: bool = True  # mixed precision, used on CUDA only
    loader_workers: int = 0
    split: SplitSpec = field(default_factory=SplitSpec)

    BOUNDS: ClassVar[dict[str, Bound]] = {
        **TRAINING_BOUNDS, "epochs_head": between(0, 100_000, "--epochs-head"),
        "image_size": between(32, 4096, "--image-size"), "lr_head": positive(1.0),
        "lr_finetune_backbone": positive(1.0, "--lr-backbone"), "lr_finetune_head": positive(1.0, "--lr-head"),
        "cosine_final_factor": FRACTION, "grad_clip": between(0, 1e6), "wing_omega_px": positive(1e4),
        "wing_epsilon_px": positive(1e4), "symmetry_weight": between(0, 100), "distance_weight": between(0, 100)}

    def __post_init__(self) -> None:
        check_numbers(self, self.BOUNDS)
        if self.loss not in LANDMARK_LOSSES:
            raise unknown_name("loss", self.loss, LANDMARK_LOSSES)
        if self.backbone not in LANDMARK_BACKBONES:
            raise unknown_name("model", self.backbone, LANDMARK_BACKBONES)
        for name in ("epochs_head", "epochs", "batch_size", "image_size", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name.startswith("epochs") else 1):
                raise SpecError(f"{name} must be a positive integer, got {value!r}")
        if self.epochs_head + self.epochs < 1:
            raise SpecError("epochs_head + epochs must be at least 1")
        if self.image_size < 32:
            raise SpecError(f"image_size must be at least 32, got {self.image_size}")
        if not 0 <= self.flip_p <= 1:
            raise SpecError(f"flip_p must be in [0, 1], got {self.flip_p}")

    @property
    def total_epochs(self) -> int:
        return self.epochs_head + self.epochs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EnsembleSpec":
        return from_fields(cls, data)
