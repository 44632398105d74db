"""The disc family's data: ``labels.csv`` (``stem,label``, label 0 or 1) and ``images/<stem>.png``
(grey), checked before anything is enqueued (torch-free), and a synthetic generator."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from medq.common.errors import DataError

LABELS = ("empty", "disc")


def make_discs(out: Path, n: int, seed: int, size: int = 32) -> Path:
    """``n`` noisy images, every second one with a bright disc somewhere; returns ``out``."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    yy, xx = np.mgrid[:size, :size]
    for k in range(n):
        image = rng.normal(60, 12, (size, size))
        label = k % 2
        if label:
            cy, cx = rng.uniform(size * 0.25, size * 0.75, 2)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < (size / 6) ** 2] += 120
        stem = f"img{k:03d}"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(out / "images" / f"{stem}.png")
        rows.append((stem, label))
    with open(out / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("stem", "label"), *rows])
    return out


def read_labels(data_dir: Path) -> list[tuple[str, int]]:
    """Every row checked; DataError naming file and row for each problem."""
    path = Path(data_dir) / "labels.csv"
    if not path.is_file():
        raise DataError(f"{path}: missing")
    rows, problems = [], []
    with open(path, newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if number == 1 and row == ["stem", "label"]:
                continue
            if len(row) != 2 or row[1] not in ("0", "1"):
                problems.append(f"{path}, row {number}: expected stem,label with label 0 or 1, got {row}")
                continue
            image = Path(data_dir) / "images" / f"{row[0]}.png"
            if not image.is_file():
                problems.append(f"{path}, row {number}: no image {image}")
                continue
            rows.append((row[0], int(row[1])))
    if problems:
        raise DataError(problems)
    if len(rows) < 6:
        raise DataError(f"{path}: {len(rows)} images; a split needs at least 6")
    return rows


def load_images(data_dir: Path, stems, size: int) -> np.ndarray:
    """(N, 1, size, size) float32 in [0, 1]."""
    out = []
    for stem in stems:
        with Image.open(Path(data_dir) / "images" / f"{stem}.png") as image:
            out.append(np.asarray(image.convert("L").resize((size, size)), dtype=np.float32) / 255.0)
    return np.stack(out)[:, None]
