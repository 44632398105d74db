"""Typed, frozen job specs (hyperparameters), stored as JSON on the job and in every checkpoint.

Torch-free: the CLI validates a spec before anything is enqueued. The engines own the
registries; the names they accept are listed here too, and a unit test keeps the two equal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from medq.common.errors import SpecError, unknown_name
from medq.common.spec_checks import Bound, between, check_numbers, positive

LANDMARK_LOSSES = ("mse", "wing", "symmetry", "distance", "complete")
LANDMARK_BACKBONES = ("resnet18", "resnet34", "resnet50")
AGGREGATIONS = ("mean", "median", "weighted")
TTA_MODES = ("none", "flip")
PRIORITIES = ("high", "normal", "low")
HRNET_WIDTHS = ("w18s", "w18", "w32", "w48")
HEATMAP_REFINEMENTS = ("dark", "quadratic", "none")
CEPH_FORMATS = ("isbi", "csv")
CEPH_ANNOTATORS = ("senior", "junior", "mean")
# segmentation-models-pytorch architectures (smp.create_model names) and a list of its encoders;
# any timm model also works as "tu-<timm name>" (checked when the member builds it)
SEG_ARCHS = ("unet", "unetplusplus", "manet", "linknet", "fpn", "pspnet", "deeplabv3", "deeplabv3plus", "pan",
             "upernet", "segformer")
SEG_ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "efficientnet-b0",
                "efficientnet-b1", "efficientnet-b2", "efficientnet-b3", "efficientnet-b4", "efficientnet-b5",
                "efficientnet-b6", "efficientnet-b7", "mobilenet_v2", "densenet121", "densenet169", "vgg16_bn",
                "mit_b0", "mit_b1", "mit_b2")
SEG_EMPTY_RULES = ("one", "skip")

# Bounds shared by the specs: what a real run could use on today's largest GPU hosts.
EPOCHS, BATCH, LOADERS = between(0, 100_000, "--epochs"), between(1, 4096, "--batch-size"), \
    between(0, 64, "--loader-workers")
LR, FRACTION, DEGREES = positive(1.0, "--lr"), between(0, 1), between(0, 180)
TRAINING_BOUNDS = {"epochs": EPOCHS, "batch_size": BATCH, "loader_workers": LOADERS, "lr": LR,
                   "weight_decay": between(0, 1), "rotation_deg": DEGREES, "brightness": FRACTION,
                   "contrast": FRACTION, "translate": FRACTION, "scale": positive(10), "flip_p": FRACTION,
                   "patience": between(0, 100_000, "--patience")}


@dataclass(frozen=True)
class SplitSpec:
    """70/15/15 by a fixed seed, stratified by category; recorded with the job."""

    seed: int = 42
    train: float = 0.70
    val: float = 0.15
    test: float = 0.15

    def __post_init__(self) -> None:
        check_numbers(self, {"train": FRACTION, "val": FRACTION, "test": FRACTION})
        if min(self.train, self.val, self.test) <= 0 or abs(self.train + self.val + self.test - 1) > 1e-6:
            raise SpecError(f"split fractions must be positive and sum to 1, got {self.train}/{self.val}/{self.test}")


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
        return _from_dict(cls, data)


@dataclass(frozen=True)
class HRNetSpec:
    """Family 2: HRNet heatmaps for cephalometric landmarks (DESIGN.md)."""

    kind: ClassVar[str] = "hrnet"

    width: str = "w32"
    image_size: int = 512  # square model input, px
    sigma: float = 3.5  # Gaussian sigma at input scale, px
    refine: str = "dark"  # sub-pixel decoding
    epochs: int = 250
    batch_size: int = 6
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_epochs: int = 5
    amp: bool = True  # mixed precision, used on CUDA only
    channels_last: bool = False  # NHWC memory format (faster convolutions on tensor cores)
    progressive: tuple[int, int] | None = None  # (size, epochs): train at size for the first epochs
    patience: int = 0  # early stopping on validation MRE; 0: off
    top_k: int = 3  # best checkpoints averaged at evaluation
    rotation_deg: float = 10.0
    translate: float = 0.1
    scale: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.2
    contrast: float = 0.2
    flip_pairs: tuple[tuple[int, int], ...] = ()  # 0-based left/right landmark pairs; none: no flip test
    format: str = "isbi"
    annotator: str = "senior"
    pretrained: str | None = None  # local timm HRNet weights; nothing is downloaded
    loader_workers: int = 0
    split: SplitSpec = field(default_factory=SplitSpec)

    BOUNDS: ClassVar[dict[str, Bound]] = {
        **TRAINING_BOUNDS, "image_size": between(64, 4096, "--image-size"), "sigma": positive(100, "--sigma"),
        "warmup_epochs": between(0, 100_000, "--warmup-epochs"), "top_k": between(1, 100, "--top-k"),
        "progressive": between(0, 100_000, "--progressive")}

    def __post_init__(self) -> None:
        check_numbers(self, self.BOUNDS)
        for name, valid in (("width", HRNET_WIDTHS), ("refine", HEATMAP_REFINEMENTS), ("format", CEPH_FORMATS),
                            ("annotator", CEPH_ANNOTATORS)):
            if getattr(self, name) not in valid:
                raise unknown_name(name, getattr(self, name), valid)
        for name in ("epochs", "batch_size", "top_k"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SpecError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for size in (self.image_size, *(self.progressive[:1] if self.progressive else ())):
            if size < 64 or size % 32:
                raise SpecError(f"image sizes must be multiples of 32 from 64 up, got {size}")
        if self.progressive and not 0 < self.progressive[1] < self.epochs:
            raise SpecError(f"--progressive SIZE:EPOCHS needs 0 < EPOCHS < epochs ({self.epochs}), "
                            f"got {self.progressive[1]}")
        if self.sigma <= 0 or self.lr <= 0:
            raise SpecError("sigma and lr must be positive")
        flat = [k for pair in self.flip_pairs for k in pair]
        if any(len(pair) != 2 for pair in self.flip_pairs) or len(set(flat)) != len(flat) or \
                any(not 0 <= k < 19 for k in flat):
            raise SpecError(f"flip pairs must be distinct landmark numbers from 1 to 19, two by two, got "
                            f"{[tuple(k + 1 for k in pair) for pair in self.flip_pairs]}")

    def size_at(self, epoch: int) -> int:
        """Input size of a 1-based epoch (progressive resizing: the smaller size first)."""
        return self.progressive[0] if self.progressive and epoch <= self.progressive[1] else self.image_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HRNetSpec":
        data = dict(data)
        for key in ("progressive", "scale"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        if "flip_pairs" in data:
            data["flip_pairs"] = tuple(tuple(pair) for pair in data["flip_pairs"])
        return _from_dict(cls, data)


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
        data = dict(data)
        for key in ("scale", "class_weights"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return _from_dict(cls, data)


@dataclass(frozen=True)
class InferSpec:
    """Bulk inference of a trained model (any family's) over a study archive."""

    kind: ClassVar[str] = "infer"

    archive: str  # absolute path of the folder, zip or tar
    checkpoints: tuple[str, ...]  # the model's checkpoints (``Family.model_checkpoints``)
    model_job: str | None = None  # the training job they came from, if any
    aggregation: str = "mean"
    tta: str = "none"
    chunk: int = 256  # studies per task
    batch_size: int = 32
    loader_workers: int | None = None  # decoding processes per worker; None: loader_processes()
    priority: str = "normal"
    window: str | None = None
    out_dir: str | None = None  # overlays are written here when set
    skip_done: bool = False
    spread_limit_fraction: float = 0.03  # QC of landmark models: a spread above this fraction of the width

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "chunk": between(1, 1_000_000, "--chunk"), "batch_size": BATCH, "loader_workers": LOADERS,
        "spread_limit_fraction": positive(1)}

    def __post_init__(self) -> None:
        check_numbers(self, self.BOUNDS)
        from medq.common.windows import parse_window

        if self.aggregation not in AGGREGATIONS:  # which of them a model supports: its family says, at submit
            raise unknown_name("aggregation", self.aggregation, AGGREGATIONS)
        if self.tta not in TTA_MODES:
            raise unknown_name("tta", self.tta, TTA_MODES)
        if self.priority not in PRIORITIES:
            raise unknown_name("priority", self.priority, PRIORITIES)
        if self.window:
            parse_window(self.window)
        for name in ("chunk", "batch_size"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.loader_workers is not None and self.loader_workers < 0:
            raise SpecError(f"loader_workers must be 0 or more, got {self.loader_workers}")
        if not self.checkpoints:
            raise SpecError("no model checkpoints to run")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["checkpoints"] = list(self.checkpoints)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InferSpec":
        data = dict(data)
        data["checkpoints"] = tuple(data.get("checkpoints", ()))
        return _from_dict(cls, data)


def _from_dict(cls, data: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise SpecError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    data = dict(data)
    if "split" in data and isinstance(data["split"], dict):
        data["split"] = SplitSpec(**data["split"])
    return cls(**data)
