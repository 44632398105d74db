"""Typed, frozen job specs (hyperparameters), stored as JSON on the job and in every checkpoint:
what the families' specs share (the split, the bounds of training options, ``from_fields``) and
the spec of bulk inference. Each family's own spec lives in its folder (``<family>/spec.py``).

Torch-free: the CLI validates a spec before anything is enqueued. The engines own the
registries; the names they accept are listed in the specs too, and unit tests keep them equal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from medq.common.errors import SpecError, unknown_name
from medq.common.spec_checks import Bound, between, check_numbers, positive

AGGREGATIONS = ("mean", "median", "weighted")
TTA_MODES = ("none", "flip")
PRIORITIES = ("high", "normal", "low")
SEG_TYPES = ("binary", "fractional")

# Bounds shared by the specs: what a real run could use on today's largest GPU hosts.
EPOCHS, BATCH, LOADERS = between(0, 100_000, "--epochs"), between(1, 4096, "--batch-size"), \
    between(0, 64, "--loader-workers")
LR, FRACTION, DEGREES = positive(1.0, "--lr"), between(0, 1), between(0, 180)
TRAINING_BOUNDS = {"epochs": EPOCHS, "batch_size": BATCH, "loader_workers": LOADERS, "lr": LR,
                   "weight_decay": between(0, 1), "rotation_deg": DEGREES, "brightness": FRACTION,
                   "contrast": FRACTION, "translate": FRACTION, "scale": positive(10), "flip_p": FRACTION,
                   "patience": between(0, 100_000, "--patience")}

# The job kind of bulk inference (chunks and studies); every other kind is a model family's
# training job (members), named by its family (common/families/registry.py).
INFER_KIND = "infer"
# The job kind of an evaluation report on one or several jobs (common/report/).
REPORT_KIND = "report"


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
class InferSpec:
    """Bulk inference of a trained model (any family's) over a study archive."""

    kind: ClassVar[str] = INFER_KIND

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
    preempt: bool = False  # training yields its workers to this job's chunks (while its window is open)
    out_dir: str | None = None  # overlays are written here when set
    skip_done: bool = False
    spread_limit_fraction: float = 0.03  # QC of landmark models: a spread above this fraction of the width
    query: str | None = None  # with a DICOMweb ``archive`` URL: the QIDO-RS search ("Modality=CT&StudyDate=...")
    send_to: str | None = None  # a DICOMweb URL that every DICOM output is stored to (STOW-RS)
    outputs: tuple[str, ...] | None = None  # what is written per study; None: the family's defaults
    seg_type: str = "binary"  # a DICOM SEG's segments: "binary" or "fractional" (probabilities)

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
        if self.seg_type not in SEG_TYPES:
            raise unknown_name("seg-type", self.seg_type, SEG_TYPES)
        if self.send_to and not self.out_dir:
            raise SpecError("--send-to stores the DICOM outputs written under --out: give --out DIR too")

    def wants(self, output: str, default: bool = True) -> bool:
        """Whether a study's ``output`` is written: as listed by --outputs, else ``default``."""
        return default if self.outputs is None else output in self.outputs

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["checkpoints"] = list(self.checkpoints)
        if self.outputs is not None:
            data["outputs"] = list(self.outputs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InferSpec":
        data = dict(data)
        data["checkpoints"] = tuple(data.get("checkpoints", ()))
        if data.get("outputs") is not None:
            data["outputs"] = tuple(data["outputs"])
        return from_fields(cls, data)


@dataclass(frozen=True)
class ReportSpec:
    """A report on jobs: one training job, several of one family side by side, or one inference job."""

    kind: ClassVar[str] = REPORT_KIND

    jobs: tuple[str, ...]  # full job ids, checked at submit (common/report/plan.py)
    out_dir: str  # absolute folder the HTML (and PDF) go into
    pdf: bool = False

    def __post_init__(self) -> None:
        if not self.jobs:
            raise SpecError("a report needs at least one job")

    def to_dict(self) -> dict[str, Any]:
        return {"jobs": list(self.jobs), "out_dir": self.out_dir, "pdf": self.pdf}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReportSpec":
        return from_fields(cls, data, tuples=("jobs",))


def from_fields(cls, data: dict[str, Any], tuples: tuple[str, ...] = ()):
    """A spec of ``cls`` from its JSON fields: unknown ones refused, the split rebuilt, and the
    fields named in ``tuples`` back from JSON lists to tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise SpecError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    data = {k: tuple(v) if k in tuples and v is not None else v for k, v in data.items()}
    if "split" in data and isinstance(data["split"], dict):
        data["split"] = SplitSpec(**data["split"])
    return cls(**data)
