"""Cephalometric datasets: the ISBI 2015 layout and a generic CSV, read and checked whole.

Every reader collects all problems first and raises one ``DataError`` whose lines name the file
and the 1-based line (or row) at fault, so a bad dataset is refused before anything is queued.

- ISBI 2015: ``RawImage/<set>/<stem>.bmp`` and ``AnnotationsByMD/400_senior|400_junior/<stem>.txt``;
  an annotation file starts with 19 lines ``x,y`` (pixels); lines after them that are not a
  coordinate pair (the challenge's classification labels) are ignored, a 20th pair is an error.
  Ground truth: the senior annotator by default, the junior's, or the mean of both. Every image
  has the challenge's spacing (0.1 mm) unless told otherwise, and all must share one size.
- Generic CSV: a header ``image,spacing_mm,x1,y1,...,x19,y19``; ``image`` relative to the CSV's
  folder; ``spacing_mm`` per image (mm/px), or empty when unknown: such a dataset is scored in
  pixels only, and says so.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from medq.common.families.ceph import schema as S
from medq.common.datafiles import decoded_image_size, not_regular, read_text
from medq.common.errors import DataError, unknown_name
from medq.common.specs import SplitSpec

ANNOTATORS = ("senior", "junior", "mean")
CSV_COLUMNS = ("image", "spacing_mm", *(f"{a}{k}" for k in range(1, S.N_LANDMARKS + 1) for a in "xy"))


@dataclass(frozen=True)
class CephRecord:
    stem: str
    image: Path
    points: np.ndarray  # (19, 2) pixels of the original image
    size: tuple[int, int]  # (width, height)
    spacing_mm: float | None  # mm per pixel; None when unknown


@dataclass(frozen=True)
class CephDataset:
    name: str
    records: tuple[CephRecord, ...]

    @property
    def spacing_known(self) -> bool:
        return all(r.spacing_mm is not None for r in self.records)


def read_isbi(root: Path, subset: str = S.ISBI_TRAIN, annotator: str = "senior",
              spacing_mm: float = S.ISBI_SPACING_MM) -> CephDataset:
    if annotator not in ANNOTATORS:
        raise unknown_name("annotator", annotator, ANNOTATORS)
    root = Path(root)
    images_dir = root / S.ISBI_IMAGE_DIR / subset
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: no such folder (expected the ISBI 2015 layout: "
                        f"{S.ISBI_IMAGE_DIR}/{subset}/*.bmp and {S.ISBI_ANNOTATION_DIR}/400_senior/*.txt)")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in S.IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{images_dir}: no images")
    wanted = ("senior", "junior") if annotator == "mean" else (annotator,)
    problems: list[str] = []
    records = []
    for image in images:
        marks = []
        for who in wanted:
            path = root / S.ISBI_ANNOTATION_DIR / S.ISBI_ANNOTATORS[who] / f"{image.stem}.txt"
            if not path.exists():
                problems.append(f"{image}: no annotation (missing {path})")
                continue
            points = _read_annotation(path, problems)
            if points is not None:
                marks.append((path, points))
        size = _image_size(image, problems)
        if len(marks) != len(wanted) or size is None:
            continue
        points = np.mean([m for _, m in marks], axis=0)
        for path, m in marks:
            problems += _outside(m, size, f"{path}", image)
        records.append(CephRecord(image.stem, image, points, size, spacing_mm))
    sizes = {r.size for r in records}
    if len(sizes) > 1:
        counts = {s: [r.image.name for r in records if r.size == s] for s in sorted(sizes)}
        listed = "; ".join(f"{w} x {h}: {len(n)} image(s), e.g. {n[0]}" for (w, h), n in counts.items())
        problems.append(f"{images_dir}: images differ in size ({listed}); the ISBI layout has one size")
    if problems:
        raise DataError(problems)
    return CephDataset(f"{root.name}/{subset}", tuple(records))


def _read_annotation(path: Path, problems: list[str]) -> np.ndarray | None:
    """The first 19 lines as (x, y); a line with a comma is a coordinate line, and there must be
    exactly 19 of them, first in the file (later lines without one are ignored)."""
    text, problem = read_text(path)
    if problem:
        problems.append(f"{path}: {problem}")
        return None
    lines = text.splitlines()
    count = sum(1 for line in lines if "," in line)
    if count != S.N_LANDMARKS:
        problems.append(f"{path}: {count} coordinate lines, expected {S.N_LANDMARKS}")
        return None
    points, before = [], len(problems)
    for number, line in enumerate(lines[:S.N_LANDMARKS], start=1):
        parsed = _pair(line.strip())
        if parsed is None:
            problems.append(f"{path}: line {number}: {line.strip()[:40]!r} is not two numbers x,y")
        points.append(parsed)
    return None if len(problems) > before else np.array(points, dtype=np.float64)


def _pair(text: str) -> tuple[float, float] | None:
    cells = text.split(",")
    if len(cells) != 2:
        return None
    try:
        x, y = float(cells[0]), float(cells[1])
    except ValueError:
        return None
    return (x, y) if np.isfinite(x) and np.isfinite(y) else None


def _image_size(path: Path, problems: list[str]) -> tuple[int, int] | None:
    size = decoded_image_size(path)
    if isinstance(size, str):
        problems.append(f"{path}: unreadable image: {size}")
        return None
    return size


def _outside(points: np.ndarray, size: tuple[int, int], where: str, image: Path) -> list[str]:
    w, h = size
    return [f"{where}: line {k + 1} ({S.LANDMARKS[k]}): ({x:g}, {y:g}) lies outside the {w} x {h} image "
            f"{image.name}" for k, (x, y) in enumerate(points) if not (0 <= x <= w - 1 and 0 <= y <= h - 1)]


def read_ceph_csv(path: Path) -> CephDataset:
    path = Path(path)
    text, problem = read_text(path)
    if problem:
        raise DataError(f"{path}: {problem}")
    problems: list[str] = []
    records = []
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    if not rows:
        raise DataError(f"{path}: empty file, no header and no rows")
    header = tuple(c.strip() for c in rows[0])
    if header != CSV_COLUMNS:
        wrong = next((f"column {k + 1} is {got!r}, expected {want!r}" for k, (got, want) in
                      enumerate(zip(header, CSV_COLUMNS)) if got != want),
                     f"{len(header)} columns, expected {len(CSV_COLUMNS)}")
        raise DataError(f"{path}: row 1: the header must be {','.join(CSV_COLUMNS[:4])},...,x19,y19 "
                        f"({len(CSV_COLUMNS)} columns): {wrong}")
    if len(rows) == 1:
        raise DataError(f"{path}: a header and no rows")
    for number, cells in enumerate(rows[1:], start=2):
        where = f"{path}: row {number}"
        if len(cells) != len(CSV_COLUMNS):
            problems.append(f"{where}: {len(cells)} columns, expected {len(CSV_COLUMNS)}")
            continue
        image = path.parent / cells[0].strip()
        spacing = None
        if cells[1].strip():
            try:
                spacing = float(cells[1])
            except ValueError:
                spacing = -1.0
            if not (np.isfinite(spacing) and spacing > 0):
                problems.append(f"{where}: spacing_mm {cells[1]!r} is not a positive number (leave it empty "
                                "when unknown)")
                continue
        try:
            points = np.array([float(c) for c in cells[2:]], dtype=np.float64).reshape(S.N_LANDMARKS, 2)
        except ValueError:
            problems.append(f"{where}: a coordinate is not a number")
            continue
        if unusable := not_regular(image):
            problems.append(f"{where}: image {image} {unusable}")
            continue
        size = _image_size(image, problems)
        if size is None:
            continue
        problems += _outside(points, size, where, image)
        records.append(CephRecord(image.stem, image, points, size, spacing))
    if problems:
        raise DataError(problems)
    return CephDataset(path.name, tuple(records))


def split_stems(stems: Sequence[str], split: SplitSpec) -> dict[str, list[str]]:
    """A seeded shuffle cut train/val/test by the spec's fractions (at least one image each)."""
    stems = sorted(stems)
    if len(stems) < 3:
        raise DataError(f"{len(stems)} image(s): need at least 3 for train/val/test")
    order = [stems[k] for k in np.random.default_rng(split.seed).permutation(len(stems))]
    n_val = max(1, round(len(stems) * split.val))
    n_test = max(1, round(len(stems) * split.test))
    return {"train": sorted(order[n_val + n_test:]), "val": sorted(order[:n_val]),
            "test": sorted(order[n_val:n_val + n_test])}


def read_dataset(path: Path, fmt: str, annotator: str = "senior") -> CephDataset:
    """The training data: an ISBI root (its TrainingData set), or a CSV file (or a folder
    holding ``landmarks.csv``)."""
    path = Path(path)
    if fmt == "csv":
        return read_ceph_csv(path / "landmarks.csv" if path.is_dir() else path)
    if fmt == "isbi":
        return read_isbi(path, annotator=annotator)
    raise unknown_name("format", fmt, ("isbi", "csv"))


def read_test_set(path: Path, fmt: str, annotator: str = "senior") -> CephDataset:
    """An extra evaluation set: an image folder of an ISBI layout (``ROOT/RawImage/Test1Data``),
    or a CSV file."""
    path = Path(path)
    if fmt == "csv":
        return read_ceph_csv(path)
    if path.parent.name != S.ISBI_IMAGE_DIR:
        raise DataError(f"{path}: for the ISBI layout give a set's image folder, "
                        f"such as ROOT/{S.ISBI_IMAGE_DIR}/Test1Data")
    return read_isbi(path.parent.parent, path.name, annotator)
