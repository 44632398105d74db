"""Synthetic chest radiographs: files, shapes from the real annotations, learnable pixels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medq.common.errors import SpecError
from medq.common.families.chest.csvio import read_landmark_csv, validate_dataset
from medq.common.families.chest.schema import category_of
from medq.common.families.chest.synth import real_shapes, synth_chest

N = 40


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "chest"
    synth_chest(out, n=N, seed=11)
    return out


@pytest.fixture(scope="module")
def loaded(dataset):
    records = read_landmark_csv(dataset / "landmarks.csv")
    paths = [dataset / "images" / f"{r.stem}.png" for r in records]
    images = np.stack([np.asarray(Image.open(path), dtype=np.float64) for path in paths])
    return records, images


def test_writes_n_greyscale_images_of_299_px(dataset):
    files = sorted((dataset / "images").glob("*.png"))
    assert len(files) == N
    for file in files:
        with Image.open(file) as image:
            assert image.mode == "L" and image.size == (299, 299)


def test_csv_reads_back_with_integer_points_inside_the_images(dataset, loaded):
    records, _ = loaded
    assert len(records) == N
    assert [r.row for r in records] == list(range(1, N + 1))
    points = np.stack([r.points for r in records])
    assert np.all(points == np.rint(points))
    assert points.min() >= 0 and points.max() <= 298
    summary = validate_dataset(dataset)  # every image decodes, every point inside
    assert summary.image_size == (299, 299) and summary.n_images == N


def test_categories_follow_the_real_proportions_with_unique_stems(loaded):
    records, _ = loaded
    # 40 * (306, 468, 183) / 957 = 12.79, 19.56, 7.65 -> largest remainder 13, 19, 8
    assert Counter(r.category for r in records) == {"COVID": 13, "Normal": 19, "Viral Pneumonia": 8}
    stems = [r.stem for r in records]
    assert len(set(stems)) == N
    for record in records:
        category, k = record.stem.rsplit("-", 1)
        assert category == record.category == category_of(record.stem) and int(k) >= 1


def test_shapes_stay_close_to_the_real_annotations(loaded):
    records, _ = loaded
    real, _ = real_shapes()
    synthetic = np.stack([r.points for r in records])
    # Jitter is a few pixels; the mean shape of 40 draws stays near the real mean shape.
    assert np.abs(synthetic.mean(axis=0) - real.mean(axis=0)).max() < 12
    # Left/right order survives: landmarks 2, 4, 6, 13 lie left of 3, 5, 7, 14 in every image.
    assert np.all(synthetic[:, [2, 4, 6, 13], 0] < synthetic[:, [3, 5, 7, 14], 0])


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    synth_chest(tmp_path / "a", n=5, seed=4)
    synth_chest(tmp_path / "b", n=5, seed=4)
    synth_chest(tmp_path / "c", n=5, seed=5)
    csv_a = (tmp_path / "a" / "landmarks.csv").read_bytes()
    assert csv_a == (tmp_path / "b" / "landmarks.csv").read_bytes()
    assert csv_a != (tmp_path / "c" / "landmarks.csv").read_bytes()
    for image in (tmp_path / "a" / "images").iterdir():
        assert image.read_bytes() == (tmp_path / "b" / "images" / image.name).read_bytes()


def test_other_sizes_scale_the_shapes(tmp_path):
    summary = synth_chest(tmp_path / "s", n=3, seed=1, size=128)
    assert summary.image_size == (128, 128)
    points = np.stack([r.points for r in summary.records])
    assert points.max() <= 127 and points[:, 14, 0].mean() > 90  # landmark 14 sits near the right side
    with Image.open(tmp_path / "s" / "images" / f"{summary.records[0].stem}.png") as image:
        assert image.size == (128, 128)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SpecError):
        synth_chest(tmp_path, n=0, seed=1)


# --- the pixels carry the landmarks ----------------------------------------------------------


def patch_mean(image: np.ndarray, x: float, y: float, r: int = 2) -> float:
    """Mean grey level of the (2r+1)^2 patch centred at pixel (x, y), clipped to the image."""
    x, y = int(round(x)), int(round(y))
    return float(image[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1].mean())


def test_lungs_are_darker_than_the_mediastinum(loaded):
    records, images = loaded
    for record, image in zip(records, images):
        p = record.points
        band = patch_mean(image, *p[9])  # on the mediastinal axis, mid-height
        left_lung = patch_mean(image, *(p[4] + p[9]) / 2)  # halfway from the lateral border to the axis
        right_lung = patch_mean(image, *(p[5] + p[9]) / 2)
        assert band - max(left_lung, right_lung) > 60, record.stem


def test_lateral_landmarks_sit_on_the_lung_border(loaded):
    records, images = loaded
    steps = []  # chest wall minus lung, 6 px either side of each lateral landmark
    for record, image in zip(records, images):
        p = record.points
        for k, outward in ((2, -6), (4, -6), (6, -6), (3, 6), (5, 6), (7, 6)):  # image left, then right
            x, y = p[k]
            if 9 <= x <= 289:
                steps.append(patch_mean(image, x + outward, y, 1) - patch_mean(image, x - outward, y, 1))
    steps = np.asarray(steps)
    assert len(steps) > 4 * N
    assert np.median(steps) > 40 and np.mean(steps > 15) > 0.95


def test_mediastinum_starts_at_landmark_0_and_ends_at_landmark_1(loaded):
    records, images = loaded
    top, bottom = [], []  # band minus what lies beyond it, 6 px either side of the end point
    for record, image in zip(records, images):
        (x0, y0), (x1, y1) = record.points[0], record.points[1]
        if y0 >= 9:
            top.append(patch_mean(image, x0, y0 + 6) - patch_mean(image, x0, y0 - 6))
        if y1 <= 289:
            bottom.append(patch_mean(image, x1, y1 - 6) - patch_mean(image, x1, y1 + 6))
    assert np.median(top) > 50  # the bright band begins just below landmark 0
    assert np.median(bottom) > 15  # and is brighter than the abdomen below landmark 1


def test_categories_look_different(loaded):
    records, images = loaded

    def lung_level(record, image) -> float:
        p = record.points
        return np.mean([patch_mean(image, *(p[a] + p[b]) / 2, 4) for a, b in ((4, 9), (5, 9), (6, 10), (7, 10))])

    def periphery_spread(record, image) -> float:
        """Grey-level spread along the lower outer lung, where the COVID patches sit."""
        p = record.points
        samples = [
            patch_mean(image, *(p[lat] * (1 - f) + p[axis] * f), 3)
            for lat, axis in ((4, 9), (6, 10), (5, 9), (7, 10))
            for f in (0.15, 0.25, 0.35)
        ]
        return float(np.std(samples))

    by_category: dict[str, list[tuple[float, float]]] = {}
    for record, image in zip(records, images):
        values = (lung_level(record, image), periphery_spread(record, image))
        by_category.setdefault(record.category, []).append(values)
    level = {c: np.mean([v[0] for v in values]) for c, values in by_category.items()}
    spread = {c: np.mean([v[1] for v in values]) for c, values in by_category.items()}
    assert level["Viral Pneumonia"] > level["Normal"] + 15  # diffuse haze brightens the whole lung
    assert spread["COVID"] > spread["Normal"] + 5  # patches make the periphery uneven
