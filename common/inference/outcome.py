"""What inference says about one study, and about one chunk of studies (torch-free).

A ``StudyOutcome`` is family-neutral data: the study's state and reason, what its image or
volume was (size, UIDs, format), whether it needs a human look, and ``result``, the JSON a
family defines (a landmark model's points, a segmenter's measurements). ``to_row`` gives the
columns of its study row in the results store. ``reason`` never holds a file name or path:
hospital exports name files after patients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STUDY_STATES = ("done", "failed", "skipped")


@dataclass(frozen=True)
class StudyOutcome:
    """One study. ``image_size`` is (width, height) of the original image (of a volume's slices)."""

    study_id: int
    state: str  # one of STUDY_STATES
    reason: str | None = None  # why a study failed or was skipped
    result: dict[str, Any] | None = None  # the family's JSON for a done study (the row's ``result``)
    qc_flag: bool = False  # flagged for review
    image_size: tuple[int, int] | None = None
    uids: dict[str, str] = field(default_factory=dict)  # StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID
    source_format: str | None = None

    def __post_init__(self) -> None:
        if self.state not in STUDY_STATES:
            raise ValueError(f"study state must be one of {', '.join(STUDY_STATES)}, got {self.state!r}")

    def to_row(self) -> dict[str, Any]:
        """The columns of the study row (``store.inference.record_studies``): plain JSON values.
        ``result`` and ``qc_flag`` are kept for a done study only."""
        done = self.state == "done"
        width, height = (None, None) if self.image_size is None else (int(v) for v in self.image_size)
        uids = {str(k): str(v) for k, v in self.uids.items()}
        return {"study_id": int(self.study_id), "state": self.state, "reason": self.reason,
                "study_uid": uids.get("StudyInstanceUID"), "series_uid": uids.get("SeriesInstanceUID"),
                "sop_uid": uids.get("SOPInstanceUID"), "source_format": self.source_format,
                "width": width, "height": height, "result": self.result if done else None,
                "qc_flag": bool(self.qc_flag) if done else None}


@dataclass(frozen=True)
class ChunkStats:
    """Counts of one ``run_chunk`` call; studies_per_s = done / seconds (wall time of the call)."""

    done: int
    failed: int
    skipped: int
    seconds: float
    studies_per_s: float
    stopped: bool = False  # should_stop() ended the chunk before every item was seen

    def to_record(self) -> dict[str, Any]:
        return {"done": self.done, "failed": self.failed, "skipped": self.skipped,
                "seconds": float(self.seconds), "studies_per_s": float(self.studies_per_s),
                "stopped": self.stopped}
