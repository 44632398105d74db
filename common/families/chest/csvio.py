"""Read, write, check and split chest-landmark datasets (torch-free: numpy and Pillow only).

A dataset is a folder with ``landmarks.csv`` (no header, 32 columns:
``ID, x1, y1, ..., x15, y15, image_stem``) and ``images/<image_stem>.png``. Coordinates are
pixels of the original image, 0-based, x to the right and y down. Every check collects all
problems first and raises one ``DataError`` whose lines name the file and the 1-based CSV row.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from medq.common.datafiles import decoded_image_size, not_regular
from medq.common.errors import DataError
from medq.common.families.chest.schema import N_COLUMNS, N_LANDMARKS, category_of
from medq.common.specs import SplitSpec

CSV_NAME = "landmarks.csv"
IMAGES_DIR = "images"
# Column names as the format describes them (1-based landmark numbers, as in a header).
COORD_NAMES: tuple[str, ...] = tuple(f"{axis}{k}" for k in range(1, N_LANDMARKS + 1) for axis in "xy")
SPLIT_PARTS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class LandmarkRecord:
    """One annotated image: its CSV row (1-based line), ID, stem, category and points.

    ``points`` is a read-only (15, 2) float64 array of pixel x, y in the original image.
    Two records are equal when every field, the points included, is equal.
    """

    row: int
    id: int
    stem: str
    category: str
    points: np.ndarray

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LandmarkRecord):
            return NotImplemented
        return (self.row, self.id, self.stem, self.category) == (
            other.row,
            other.id,
            other.stem,
            other.category,
        ) and np.array_equal(self.points, other.points)

    def __hash__(self) -> int:
        return hash((self.row, self.id, self.stem, self.category))


@dataclass(frozen=True)
class DatasetSummary:
    """What ``validate_dataset`` found: sizes in pixels (width, height), counts per category."""

    n_images: int
    categories: dict[str, int]
    image_size: tuple[int, int] | None  # (width, height) when every image has it, else None
    records: tuple[LandmarkRecord, ...]


def make_record(row: int, id: int, stem: str, points: np.ndarray) -> LandmarkRecord:
    """A record with its category derived from the stem and a read-only copy of ``points``."""
    pts = np.array(points, dtype=np.float64).reshape(N_LANDMARKS, 2)
    pts.flags.writeable = False
    return LandmarkRecord(row=row, id=id, stem=stem, category=category_of(stem), points=pts)


# --- reading -------------------------------------------------------------------------------


def read_landmark_csv(path: Path) -> list[LandmarkRecord]:
    """Parse a landmark CSV; raise one ``DataError`` listing every bad row.

    Blank lines are skipped (they still count in the row numbers). Cells are stripped of
    surrounding whitespace; a stem may contain spaces ("Viral Pneumonia-12").
    """
    path = Path(path)
    name = path.name
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            lines = list(_numbered_rows(handle))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{name}: not a readable CSV text file ({exc})") from None
    if not lines:
        raise DataError(f"{name}: empty file, no rows")

    problems: list[str] = []
    records: list[LandmarkRecord] = []
    first_row_of: dict[str, int] = {}
    for row, cells in lines:
        record = _parse_row(name, row, cells, problems)
        if record is None:
            continue
        if record.stem in first_row_of:
            problems.append(
                f"{name} row {row}: duplicate stem {record.stem!r} (first at row {first_row_of[record.stem]})"
            )
            continue
        first_row_of[record.stem] = row
        records.append(record)
    if problems:
        raise DataError(problems)
    return records


def _numbered_rows(handle) -> Iterable[tuple[int, list[str]]]:
    """(1-based line number, stripped cells) for each non-blank CSV row."""
    reader = csv.reader(handle)
    for cells in reader:
        stripped = [cell.strip() for cell in cells]
        if any(stripped):
            yield reader.line_num, stripped


def _parse_row(name: str, row: int, cells: list[str], problems: list[str]) -> LandmarkRecord | None:
    """One record, or None after appending this row's problems."""
    where = f"{name} row {row}"
    if len(cells) != N_COLUMNS:
        problems.append(f"{where}: {len(cells)} columns, expected {N_COLUMNS}")
        return None
    found: list[str] = []
    try:
        record_id = int(cells[0])
    except ValueError:
        found.append(f"ID {cells[0]!r} is not an integer")
        record_id = 0
    coords = np.zeros(2 * N_LANDMARKS)
    bad = []
    for k, (column, cell) in enumerate(zip(COORD_NAMES, cells[1:-1])):
        try:
            coords[k] = float(cell)
        except ValueError:
            coords[k] = np.nan
        if not np.isfinite(coords[k]):
            bad.append(f"{column} ({cell!r})")
    if bad:
        found.append("not a finite number in " + ", ".join(bad))
    stem = cells[-1]
    if not stem:
        found.append("empty image stem")
    if found:
        problems.append(f"{where}: " + "; ".join(found))
        return None
    return make_record(row, record_id, stem, coords)


# --- writing -------------------------------------------------------------------------------


def write_landmark_csv(path: Path, records: Iterable[LandmarkRecord]) -> None:
    """Write records in the 32-column format; integral coordinates are written as integers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        for record in records:
            values = [_number_text(v) for v in np.asarray(record.points, dtype=np.float64).reshape(-1)]
            writer.writerow([record.id, *values, record.stem])


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# --- checking a dataset folder -------------------------------------------------------------


def validate_dataset(data_dir: Path) -> DatasetSummary:
    """Read ``landmarks.csv``, decode every image once, check every point lies inside its image.

    Raises one ``DataError`` listing each missing, unreadable or truncated image and each
    landmark outside ``0 <= x < width, 0 <= y < height``, with the CSV row it belongs to.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder does not exist")
    csv_path = data_dir / CSV_NAME
    if not csv_path.exists():
        raise DataError(f"{csv_path}: missing {CSV_NAME} (expected in the data folder)")
    if unusable := not_regular(csv_path):
        raise DataError(f"{csv_path}: {unusable}")
    records = read_landmark_csv(csv_path)

    problems: list[str] = []
    sizes: set[tuple[int, int]] = set()
    for record in records:
        where = f"{CSV_NAME} row {record.row}"
        image_name = f"{IMAGES_DIR}/{record.stem}.png"
        size = _decoded_size(data_dir / IMAGES_DIR / f"{record.stem}.png")
        if isinstance(size, str):
            problems.append(f"{image_name} ({where}): {size}")
            continue
        sizes.add(size)
        outside = _points_outside(record.points, size)
        if outside:
            problems.append(f"{where}: {', '.join(outside)} outside the {size[0]}x{size[1]} image {image_name}")
    if problems:
        raise DataError(problems)
    return DatasetSummary(
        n_images=len(records),
        categories=count_categories(records),
        image_size=sizes.pop() if len(sizes) == 1 else None,
        records=tuple(records),
    )


def _decoded_size(path: Path) -> tuple[int, int] | str:
    """(width, height) after a full decode, or the reason the image cannot be used."""
    if not path.exists():
        return "missing"
    return decoded_image_size(path)


def _points_outside(points: np.ndarray, size: tuple[int, int]) -> list[str]:
    """'landmark k (x, y)' for each point outside the image; k is 1-based as in x1..x15."""
    width, height = size
    x, y = points[:, 0], points[:, 1]
    bad = np.flatnonzero((x < 0) | (x >= width) | (y < 0) | (y >= height))
    return [f"landmark {k + 1} ({x[k]:g}, {y[k]:g})" for k in bad]


def count_categories(records: Iterable[LandmarkRecord]) -> dict[str, int]:
    """Images per category, in name order."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.category] = counts.get(record.category, 0) + 1
    return dict(sorted(counts.items()))


# --- splitting -----------------------------------------------------------------------------


def make_split(records: Sequence[LandmarkRecord], split: SplitSpec) -> dict[str, list[str]]:
    """Stems for "train", "val" and "test": stratified by category, fixed by ``split.seed``.

    Part sizes are the fractions of n rounded by largest remainder (each part gets at least
    one image). Within each category, stems are shuffled by the seed and spread evenly over
    [0, 1); the merged order is cut at the part sizes, so each category lands in each part in
    proportion (within one image). The result depends only on the set of stems and the seed.
    """
    stems = [record.stem for record in records]
    if len(set(stems)) != len(stems):
        raise DataError("make_split: duplicate stems in the records")
    n = len(stems)
    if n < len(SPLIT_PARTS):
        raise DataError(f"make_split: {n} image(s), need at least {len(SPLIT_PARTS)} for train/val/test")
    sizes = _part_sizes(n, (split.train, split.val, split.test))

    rng = np.random.default_rng(split.seed)
    by_category: dict[str, list[str]] = {}
    for record in records:
        by_category.setdefault(record.category, []).append(record.stem)
    positions, ordered = [], []
    for category in sorted(by_category):
        members = sorted(by_category[category])
        shuffled = [members[i] for i in rng.permutation(len(members))]
        offset = rng.uniform(0.0, 1.0)  # where this category's evenly spaced positions start
        positions.extend((np.arange(len(shuffled)) + offset) / len(shuffled))
        ordered.extend(shuffled)
    order = np.argsort(np.asarray(positions), kind="stable")
    merged = [ordered[i] for i in order]
    ends = np.cumsum(sizes)
    return {part: merged[end - size : end] for part, size, end in zip(SPLIT_PARTS, sizes, ends)}


def _part_sizes(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Largest-remainder rounding of n * fractions, then at least 1 per part (taken from the largest)."""
    exact = np.asarray(fractions) * n
    sizes = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - sizes), kind="stable")[: n - sizes.sum()]:
        sizes[k] += 1
    for k in range(len(sizes)):
        if sizes[k] == 0:
            sizes[int(np.argmax(sizes))] -= 1
            sizes[k] = 1
    return [int(s) for s in sizes]
