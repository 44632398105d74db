"""What inference says about one study, and about one chunk of studies (torch-free).

A ``StudyOutcome`` becomes one per-study record of the results store (``to_record``); its
``reason`` never holds a file name or path: hospital exports name files after patients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STUDY_STATES = ("done", "failed", "skipped")


@dataclass(frozen=True)
class StudyOutcome:
    """One study. Coordinates are 0-based, x to the right and y down.

    landmarks_px: 15 [x, y] in pixels of the ORIGINAL image; landmarks_mm: the same times the
    pixel spacing (x * column spacing, y * row spacing), None when the image has no spacing;
    spread_px: 15 ensemble spreads in original pixels (see ``LandmarkPredictor.predict``);
    image_size: (width, height) of the original image in pixels.
    """

    study_id: int
    state: str  # one of STUDY_STATES
    reason: str | None = None  # why a study failed or was skipped
    landmarks_px: list[list[float]] | None = None
    landmarks_mm: list[list[float]] | None = None
    spread_px: list[float] | None = None
    qc_flag: bool = False
    qc_reasons: list[str] = field(default_factory=list)
    image_size: tuple[int, int] | None = None
    uids: dict[str, str] = field(default_factory=dict)
    source_format: str | None = None
    measures: dict[str, Any] | None = None  # a segmentation's per-study figures (common.families.ct_lesions.predict.measure)

    def __post_init__(self) -> None:
        if self.state not in STUDY_STATES:
            raise ValueError(f"study state must be one of {', '.join(STUDY_STATES)}, got {self.state!r}")

    def to_record(self) -> dict[str, Any]:
        """Plain JSON values: ints, floats, strings, lists, dicts and None."""
        return {
            "study_id": int(self.study_id),
            "state": self.state,
            "reason": self.reason,
            "landmarks_px": _floats(self.landmarks_px),
            "landmarks_mm": _floats(self.landmarks_mm),
            "spread_px": _floats(self.spread_px),
            "qc_flag": bool(self.qc_flag),
            "qc_reasons": [str(reason) for reason in self.qc_reasons],
            "image_size": None if self.image_size is None else [int(v) for v in self.image_size],
            "uids": {str(k): str(v) for k, v in self.uids.items()},
            "source_format": self.source_format,
            "measures": self.measures,
        }


def _floats(values: Any) -> Any:
    """Nested lists / arrays of numbers -> nested lists of Python floats (None stays None)."""
    if values is None:
        return None
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, (list, tuple)):
        return [_floats(v) for v in values]
    return float(values)


@dataclass(frozen=True)
class ChunkStats:
    """Counts of one ``run_chunk`` call; images_per_s = done / seconds (wall time of the call)."""

    done: int
    failed: int
    skipped: int
    seconds: float
    images_per_s: float
    stopped: bool = False  # should_stop() ended the chunk before every item was seen

    def to_record(self) -> dict[str, Any]:
        return {"done": self.done, "failed": self.failed, "skipped": self.skipped,
                "seconds": float(self.seconds), "images_per_s": float(self.images_per_s),
                "stopped": self.stopped}
