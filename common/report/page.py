"""What a report page is made of: plain, torch-free data that ``render.py`` turns into HTML.

A number that ``medq results JOB --json`` also gives carries the path to it (``Cell.path``, dots
between keys and list indexes, on the results of ``Cell.job``), so a test can check that every
figure on the page is the figure the store holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence


@dataclass(frozen=True)
class Cell:
    value: Any  # str, int, float or None ("–")
    digits: int = 2  # for floats
    path: str | None = None  # where `medq results JOB --json` holds this number
    job: str | None = None  # whose results (the section's job when None)
    bold: bool = False

    @property
    def text(self) -> str:
        return format_value(self.value, self.digits)

    @property
    def numeric(self) -> bool:
        return isinstance(self.value, (int, float)) and not isinstance(self.value, bool)


def format_value(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def clock(value: Any) -> str:
    """A stored time (ISO text or datetime) as YYYY-MM-DD HH:MM:SS (UTC)."""
    if value is None:
        return "–"
    value = datetime.fromisoformat(value) if isinstance(value, str) else value
    return value.strftime("%Y-%m-%d %H:%M:%S")


def seconds_between(start: Any, end: Any) -> float | None:
    """Seconds from ``start`` to ``end`` (None when either is missing)."""
    if not start or not end:
        return None
    start = datetime.fromisoformat(start) if isinstance(start, str) else start
    end = datetime.fromisoformat(end) if isinstance(end, str) else end
    return (end - start).total_seconds()


def duration(seconds: float | None) -> str:
    """H:MM:SS, or M:SS under an hour."""
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def cell(value: Any, digits: int = 2, path: str | None = None, job: str | None = None, bold: bool = False) -> Cell:
    return value if isinstance(value, Cell) else Cell(value, digits, path, job, bold)


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    note: str | None = None  # a line under the table: units, reductions, how a figure was made

    @classmethod
    def of(cls, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], note: str | None = None) -> "Table":
        return cls(title, tuple(columns), tuple(tuple(cell(v) for v in row) for row in rows), note)


@dataclass(frozen=True)
class Figure:
    title: str
    src: str  # a data: URI (PNG)
    caption: str = ""  # what the axes are and how to read it, for someone without the code
    alt: str = ""


@dataclass(frozen=True)
class Note:
    text: str
    style: str | None = None  # None | "warn" | "error"


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Table | Figure | Note, ...]
    job: str | None = None  # the job whose results the cells' paths point into

    @classmethod
    def of(cls, title: str, blocks: Sequence[Table | Figure | Note | None], job: str | None = None) -> "Section":
        return cls(title, tuple(b for b in blocks if b is not None), job)


@dataclass(frozen=True)
class Page:
    title: str
    subtitle: str
    as_of: str  # ISO time the report was rendered
    banners: tuple[Note, ...]  # "job still running: as of ..."
    sections: tuple[Section, ...]
    facts: tuple[tuple[str, str], ...] = ()  # the header's key facts: jobs, kinds, medq version


# --- what a family hands the side-by-side comparison ---------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A headline figure of a job, compared across jobs (``Family.report_headline``)."""

    label: str
    value: float | None
    path: str | None  # in `medq results JOB --json` (None: worked out by the report)
    digits: int = 2
    lower_is_better: bool = True


@dataclass(frozen=True)
class Curve:
    """One line of an overlaid plot: x and y values."""

    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    style: str = "-"  # matplotlib line style: "-" solid, "--" dashed
    color: str | None = None  # "C0".."C9" ties lines of one member together; None: the next colour


@dataclass(frozen=True)
class CurvePlot:
    """A plot every job of a family draws alike (CED, SDR, Dice), overlaid in a comparison."""

    title: str
    xlabel: str
    ylabel: str
    curves: tuple[Curve, ...]
    caption: str = ""


@dataclass(frozen=True)
class PairedErrors:
    """Per-image figures of a job's headline model on its test split, for a paired test."""

    label: str  # "mean radial error (px) per test image"
    values: dict[str, float] = field(default_factory=dict)  # image key -> value
    lower_is_better: bool = True
