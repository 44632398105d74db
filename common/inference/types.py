"""Types shared by archive enumeration, decoding and prediction (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medq.common.errors import JobError, TransientError


@dataclass(frozen=True)
class Entry:
    """One file of an archive. ``path`` is archive-relative (POSIX) and is never logged:
    file names in hospital exports can carry patient names."""

    path: str
    size: int


@dataclass(frozen=True)
class SkippedEntry:
    """A file enumeration refused on its own (unsafe name, symlink out of the archive, no
    permission); it gets a study record with this reason and the job goes on."""

    path: str
    reason: str
    state: str = "failed"  # or "skipped"


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # (H, W) uint8 greyscale, display-ready (LUTs applied, MONOCHROME1 inverted)
    source_format: str  # "dicom" | "png" | "jpeg"
    spacing_mm: tuple[float, float] | None = None  # (row, column) = (y, x) mm per pixel
    uids: dict[str, str] = field(default_factory=dict)  # StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID
    modality: str | None = None
    header: Any = None  # a DICOM source's dataset without its pixel data (what DICOM outputs copy)
    spacing_source: str | None = None  # the DICOM attribute spacing_mm came from: PixelSpacing or ImagerPixelSpacing

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


class StudyError(JobError):
    """One study cannot be processed; it is recorded with this reason and the job goes on.
    The message must not contain patient data (no names, IDs or file paths)."""

    state = "failed"


class StudySkipped(StudyError):
    """Not an image to process (a structured report, an RT structure set, ...)."""

    state = "skipped"


class ArchiveUnavailable(TransientError):
    """The storage under an archive failed for a while (EIO, a stale NFS handle): not the study's
    fault; the chunk's task is retried and the study stays pending. Names no path."""
