"""The cephalometric family's spec: HRNet heatmap training (torch-free)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from medq.common.errors import SpecError, unknown_name
from medq.common.spec_checks import Bound, between, check_numbers, positive
from medq.common.specs import SplitSpec, TRAINING_BOUNDS, from_fields

HRNET_WIDTHS = ("w18s", "w18", "w32", "w48")
HEATMAP_REFINEMENTS = ("dark", "quadratic", "none")
CEPH_FORMATS = ("isbi", "csv")
CEPH_ANNOTATORS = ("senior", "junior", "mean")


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
        if "flip_pairs" in data:
            data["flip_pairs"] = tuple(tuple(pair) for pair in data["flip_pairs"])
        return from_fields(cls, data, tuples=("progressive", "scale"))
