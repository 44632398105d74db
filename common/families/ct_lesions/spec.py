"""The CT lesion family's spec: smp segmentation models of 4 classes (torch-free)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from medq.common.errors import SpecError, unknown_name
from medq.common.spec_checks import Bound, between, check_numbers, positive
from medq.common.specs import FRACTION, SplitSpec, TRAINING_BOUNDS, from_fields

# segmentation-models-pytorch architectures (smp.create_model names) and a list of its encoders;
# any timm model also works as "tu-<timm name>" (checked when the member builds it)
SEG_ARCHS = ("unet", "unetplusplus", "manet", "linknet", "fpn", "pspnet", "deeplabv3", "deeplabv3plus", "pan",
             "upernet", "segformer")
SEG_ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "efficientnet-b0",
                "efficientnet-b1", "efficientnet-b2", "efficientnet-b3", "efficientnet-b4", "efficientnet-b5",
                "efficientnet-b6", "efficientnet-b7", "mobilenet_v2", "densenet121", "densenet169", "vgg16_bn",
                "mit_b0", "mit_b1", "mit_b2")
SEG_EMPTY_RULES = ("one", "skip")


@dataclass(frozen=True)
class SegmentSpec:
    """Family 3: smp UNet++ (any smp architecture and encoder) for CT lesions, 4 classes."""

    kind: ClassVar[str] = "segment"

    arch: str = "unetplusplus"
    encoder: str = "efficientnet-b3"
    image_size: int = 384  # square model input, px
    epochs: int = 60
    batch_size: int = 6
    lr: float = 1e-4  # AdamW's starting rate; OneCycle rises to max_lr
    max_lr: float = 5e-4
    weight_decay: float = 1e-4
    amp: bool = True  # mixed precision, used on CUDA only
    patience: int = 7  # early stopping on validation lesion Dice; 0: off
    lesion_weight: float = 3.0  # WeightedRandomSampler: slices with a lesion this many times as likely
    w_ce: float = 0.25
    w_dice: float = 0.5
    w_focal: float = 0.25
    gamma: float = 2.5
    class_weights: tuple[float, ...] | None = None  # CE weights per class; None: from training pixel counts
    flip_p: float = 0.5
    rotate90_p: float = 0.5
    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    brightness: float = 0.1  # fractions of the HU window [-1500, 500]
    contrast: float = 0.1
    bn_momentum: float | None = 0.1  # BatchNorm running-statistics momentum; None: the encoder's own
    empty: str = "one"  # how a slice where a class is absent from both masks counts (per-image Dice)
    pretrained: str | None = None  # local encoder/model weights file; nothing is downloaded
    loader_workers: int = 0
    split: SplitSpec = field(default_factory=SplitSpec)

    BOUNDS: ClassVar[dict[str, Bound]] = {
        **TRAINING_BOUNDS, "image_size": between(64, 4096, "--image-size"), "max_lr": positive(1.0, "--max-lr"),
        "lesion_weight": positive(1000, "--lesion-weight"), "w_ce": between(0, 100, "--loss-weights"),
        "w_dice": between(0, 100, "--loss-weights"), "w_focal": between(0, 100, "--loss-weights"),
        "gamma": between(0, 10, "--gamma"), "class_weights": positive(1e6, "--class-weights"),
        "rotate90_p": FRACTION, "bn_momentum": positive(1)}

    def __post_init__(self) -> None:
        check_numbers(self, self.BOUNDS)
        if self.w_ce + self.w_dice + self.w_focal <= 0:
            raise SpecError("at least one of the loss weights (--loss-weights CE,Dice,Focal) must be positive")
        if self.arch not in SEG_ARCHS:
            raise unknown_name("architecture", self.arch, SEG_ARCHS)
        if self.encoder not in SEG_ENCODERS and not (self.encoder.startswith("tu-") and len(self.encoder) > 3):
            raise SpecError(f"unknown encoder {self.encoder!r}; valid: {', '.join(SEG_ENCODERS)}, or any timm "
                            f"model as tu-<name>")
        if self.empty not in SEG_EMPTY_RULES:
            raise unknown_name("empty rule", self.empty, SEG_EMPTY_RULES)
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SpecError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise SpecError(f"patience must be 0 (off) or a positive integer, got {self.patience!r}")
        if self.image_size < 64 or self.image_size % 32:
            raise SpecError(f"image_size must be a multiple of 32 from 64 up, got {self.image_size}")
        if not 0 < self.lr <= self.max_lr:
            raise SpecError(f"need 0 < lr <= max_lr, got lr {self.lr}, max_lr {self.max_lr}")
        if self.bn_momentum is not None and not 0 < self.bn_momentum <= 1:
            raise SpecError(f"bn_momentum must be in (0, 1], got {self.bn_momentum}")
        if self.lesion_weight <= 0 or min(self.w_ce, self.w_dice, self.w_focal) < 0 or self.gamma < 0:
            raise SpecError("lesion_weight must be positive; loss weights and gamma 0 or more")
        if self.class_weights is not None and (len(self.class_weights) != 4 or min(self.class_weights) <= 0):
            raise SpecError(f"class_weights needs 4 positive numbers (ground glass, consolidation, other lung, "
                            f"background), got {list(self.class_weights)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SegmentSpec":
        return from_fields(cls, data, tuples=("scale", "class_weights"))
