"""The synthetic cephalogram generator and the ISBI / CSV readers, bad input included."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medq.common.families.ceph import schema as S
from medq.common.families.ceph.readers import read_ceph_csv, read_isbi
from medq.common.families.ceph.synth import synth_ceph
from medq.common.errors import DataError, SpecError


@pytest.fixture
def isbi(tmp_path) -> Path:
    synth_ceph(tmp_path / "ceph", n=6, seed=1, n_test=2)
    return tmp_path / "ceph"


def senior(root: Path, stem: str) -> Path:
    return root / S.ISBI_ANNOTATION_DIR / "400_senior" / f"{stem}.txt"


def test_the_generator_writes_the_isbi_layout_and_the_reader_reads_it_back(isbi):
    train = read_isbi(isbi)
    assert [r.stem for r in train.records] == ["001", "002", "003", "004", "005", "006"]
    assert {r.size for r in train.records} == {(480, 600)} and train.spacing_known
    assert all(r.spacing_mm == 0.1 and r.points.shape == (19, 2) for r in train.records)
    assert [r.stem for r in read_isbi(isbi, "Test1Data").records] == ["007", "008"]
    assert [r.stem for r in read_isbi(isbi, "Test2Data").records] == ["009", "010"]


def test_same_seed_same_bytes_and_the_annotators_differ_by_a_little(isbi, tmp_path):
    synth_ceph(tmp_path / "again", n=6, seed=1, n_test=2)
    image = Path(S.ISBI_IMAGE_DIR) / S.ISBI_TRAIN / "003.bmp"
    assert (isbi / image).read_bytes() == (tmp_path / "again" / image).read_bytes()
    a, b = read_isbi(isbi, annotator="senior"), read_isbi(isbi, annotator="junior")
    gap = np.linalg.norm(np.stack([r.points for r in a.records]) - np.stack([r.points for r in b.records]), axis=-1)
    assert 0.5 < gap.mean() < 4.0  # px: a second observer, not another shape
    mean = read_isbi(isbi, annotator="mean").records[0].points
    np.testing.assert_allclose(mean, (a.records[0].points + b.records[0].points) / 2)


def test_landmarks_sit_on_visible_structure():
    """The image around Sella (a dark fossa in bright bone) differs from the same place in an
    image whose Sella lies elsewhere: the pixels carry the landmark."""
    rng = np.random.default_rng(0)
    from medq.common.families.ceph.synth import random_shape, render_ceph

    points = random_shape(480, 600, rng)
    pixels = render_ceph(points, 480, 600, rng).astype(float)
    x, y = points[S.SELLA].astype(int)
    fossa, rim = pixels[y - 3:y + 4, x - 3:x + 4].mean(), pixels[y - 3:y + 4, x + 18:x + 22].mean()
    assert rim - fossa > 40


def test_an_unknown_annotator_lists_the_valid_ones(isbi):
    with pytest.raises(SpecError, match="junior, mean, senior"):
        read_isbi(isbi, annotator="resident")


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines[:18], "001.txt: 18 coordinate lines, expected 19"),
    (lambda lines: lines + ["5,5"], "001.txt: 20 coordinate lines, expected 19"),
    (lambda lines: lines[:6] + ["12,abc"] + lines[7:], "001.txt: line 7: '12,abc' is not two numbers x,y"),
    (lambda lines: lines[:1] + ["9999,10"] + lines[2:], "001.txt: line 2 (Nasion): (9999, 10) lies outside the 480 x 600 image 001.bmp"),
])
def test_bad_annotation_files_are_refused_naming_file_and_line(isbi, edit, message):
    path = senior(isbi, "001")
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(DataError) as caught:
        read_isbi(isbi)
    assert message in str(caught.value)


def test_label_lines_after_the_coordinates_are_ignored(isbi):
    """The challenge's own files carry classification labels after the 19 coordinates."""
    path = senior(isbi, "002")
    path.write_text(path.read_text() + "3\n1\n2\n")
    assert len(read_isbi(isbi).records) == 6


def test_a_missing_annotation_and_mismatched_sizes_are_refused(isbi):
    senior(isbi, "004").unlink()
    Image.new("L", (500, 600)).save(isbi / S.ISBI_IMAGE_DIR / S.ISBI_TRAIN / "005.bmp")
    with pytest.raises(DataError) as caught:
        read_isbi(isbi)
    text = str(caught.value)
    assert "004.bmp: no annotation (missing" in text and "400_senior/004.txt" in text
    assert "images differ in size (480 x 600: 4 image(s), e.g. 001.bmp; 500 x 600: 1 image(s), e.g. 005.bmp)" in text


def _csv(tmp_path: Path, isbi: Path, spacings: list[str]) -> Path:
    header = "image,spacing_mm," + ",".join(f"x{k},y{k}" for k in range(1, 20))
    rows = [header]
    for stem, spacing in zip(["001", "002"], spacings):
        points = np.loadtxt(senior(isbi, stem), delimiter=",")
        rows.append(f"../ceph/RawImage/TrainingData/{stem}.bmp,{spacing}," + ",".join(f"{v:g}" for v in points.ravel()))
    path = tmp_path / "csv" / "landmarks.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def test_the_generic_csv_keeps_each_images_own_spacing(isbi, tmp_path):
    data = read_ceph_csv(_csv(tmp_path, isbi, ["0.089", "0.144"]))
    assert [r.spacing_mm for r in data.records] == [0.089, 0.144] and data.spacing_known
    np.testing.assert_array_equal(data.records[0].points, read_isbi(isbi).records[0].points)


def test_a_csv_image_without_spacing_is_scored_in_pixels_and_a_bad_spacing_is_refused(isbi, tmp_path):
    assert not read_ceph_csv(_csv(tmp_path, isbi, ["", "0.1"])).spacing_known
    with pytest.raises(DataError, match=r"landmarks.csv: row 3: spacing_mm '-1' is not a positive number"):
        read_ceph_csv(_csv(tmp_path, isbi, ["0.1", "-1"]))
