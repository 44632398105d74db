"""The chest-landmark CSV reader/writer, dataset validation and the stratified split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medq.common.errors import DataError
from medq.common.families.chest.csvio import (
    DatasetSummary,
    make_record,
    make_split,
    read_landmark_csv,
    validate_dataset,
    write_landmark_csv,
)
from medq.common.families.chest.synth import synth_chest
from medq.common.specs import SplitSpec

REAL_CSV = Path(__file__).resolve().parents[2] / "common" / "families" / "chest" / "data" / "chest_landmarks_957.csv"
# Row 1 of the real file, as it is written there.
FIRST_ROW = (
    "0,145,56,150,229,65,98,238,93,51,145,252,140,51,187,257,182,145,98,150,140,150,187,"
    "107,56,182,51,42,234,276,224,COVID-269"
)


def good_row(record_id: int, stem: str) -> str:
    return ",".join([str(record_id), *FIRST_ROW.split(",")[1:31], stem])


def write_csv(tmp_path: Path, lines: list[str], name: str = "landmarks.csv") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(DataError) as caught:
        read_landmark_csv(path)
    return caught.value.problems


@pytest.fixture(scope="module")
def real_records():
    return read_landmark_csv(REAL_CSV)


# --- the real file --------------------------------------------------------------------------


def test_real_file_has_957_rows_in_three_categories(real_records):
    assert len(real_records) == 957
    assert Counter(r.category for r in real_records) == {"COVID": 306, "Normal": 468, "Viral Pneumonia": 183}


def test_real_file_first_row_values(real_records):
    first = real_records[0]
    assert (first.row, first.id, first.stem, first.category) == (1, 0, "COVID-269", "COVID")
    assert first.points.shape == (15, 2) and first.points.dtype == np.float64
    assert first.points[0].tolist() == [145.0, 56.0]  # x1, y1
    assert first.points[1].tolist() == [150.0, 229.0]  # x2, y2
    assert first.points[14].tolist() == [276.0, 224.0]  # x15, y15
    assert real_records[-1].row == 957


def test_points_are_read_only(real_records):
    with pytest.raises(ValueError):
        real_records[0].points[0, 0] = 1.0


# --- bad files: every problem names the file and the row -------------------------------------


def test_wrong_column_count_names_file_row_and_count(tmp_path):
    lines = [good_row(i, f"COVID-{i}") for i in range(6)]
    lines.append(",".join(good_row(6, "COVID-6").split(",")[:-2] + ["COVID-6"]))  # 31 columns
    assert problems_of(write_csv(tmp_path, lines)) == ["landmarks.csv row 7: 31 columns, expected 32"]


def test_non_numeric_coordinate_names_the_column(tmp_path):
    cells = good_row(1, "Normal-1").split(",")
    cells[7] = "abc"  # x4 is the 7th value after the ID
    (problem,) = problems_of(write_csv(tmp_path, [good_row(0, "Normal-0"), ",".join(cells)]))
    assert problem.startswith("landmarks.csv row 2:")
    assert "x4 ('abc')" in problem


def test_non_finite_coordinate_is_rejected(tmp_path):
    cells = good_row(0, "Normal-0").split(",")
    cells[2] = "nan"  # y1
    (problem,) = problems_of(write_csv(tmp_path, [",".join(cells)]))
    assert "landmarks.csv row 1:" in problem and "y1 ('nan')" in problem


def test_non_integer_id(tmp_path):
    lines = [good_row(0, "Normal-0"), good_row(1, "Normal-1"), good_row(2, "Normal-2").replace("2,", "2.5,", 1)]
    (problem,) = problems_of(write_csv(tmp_path, lines))
    assert problem == "landmarks.csv row 3: ID '2.5' is not an integer"


def test_empty_stem(tmp_path):
    (problem,) = problems_of(write_csv(tmp_path, [good_row(0, "  ")]))
    assert problem == "landmarks.csv row 1: empty image stem"


def test_duplicate_stem_names_both_rows(tmp_path):
    lines = [good_row(0, "COVID-1"), good_row(1, "COVID-2"), good_row(2, "COVID-1")]
    (problem,) = problems_of(write_csv(tmp_path, lines))
    assert problem == "landmarks.csv row 3: duplicate stem 'COVID-1' (first at row 1)"


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path, text):
    path = tmp_path / "landmarks.csv"
    path.write_text(text)
    assert problems_of(path) == ["landmarks.csv: empty file, no rows"]


def test_all_problems_are_collected_in_one_error(tmp_path):
    lines = [
        good_row(0, "COVID-0"),
        "1,2,3",
        good_row(2, "COVID-0"),
        good_row(3, "").replace("3,", "x,", 1),
    ]
    problems = problems_of(write_csv(tmp_path, lines, name="mine.csv"))
    assert [p.split(":")[0] for p in problems] == ["mine.csv row 2", "mine.csv row 3", "mine.csv row 4"]
    assert "ID 'x' is not an integer" in problems[2] and "empty image stem" in problems[2]


def test_stem_with_space_and_padded_cells(tmp_path):
    cells = [f"  {c} " for c in good_row(12, "Viral Pneumonia-12").split(",")]
    path = write_csv(tmp_path, ["", ",".join(cells)])  # a blank first line still counts as row 1
    (record,) = read_landmark_csv(path)
    assert (record.row, record.id, record.stem) == (2, 12, "Viral Pneumonia-12")
    assert record.category == "Viral Pneumonia"
    assert record.points[3].tolist() == [238.0, 93.0]


def test_write_then_read_round_trip(tmp_path):
    points = np.arange(30, dtype=np.float64).reshape(15, 2)
    points[2, 1] = 12.25
    records = [make_record(1, 7, "Normal-3", points), make_record(2, 8, "Viral Pneumonia-1", points + 1)]
    path = tmp_path / "out" / "landmarks.csv"
    write_landmark_csv(path, records)
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("7,0,1,2,3,4,12.25,6,")  # integral values written as integers
    assert first_line.endswith(",28,29,Normal-3")
    assert read_landmark_csv(path) == records


# --- a dataset folder ------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path) -> Path:
    synth_chest(tmp_path / "ds", n=6, seed=3)
    return tmp_path / "ds"


def test_validate_passes_on_a_synthetic_dataset(dataset):
    summary = validate_dataset(dataset)
    assert isinstance(summary, DatasetSummary)
    assert summary.n_images == 6 and len(summary.records) == 6
    assert summary.image_size == (299, 299)
    assert sum(summary.categories.values()) == 6


def test_validate_reports_a_missing_image(dataset):
    records = read_landmark_csv(dataset / "landmarks.csv")
    (dataset / "images" / f"{records[3].stem}.png").unlink()
    with pytest.raises(DataError) as caught:
        validate_dataset(dataset)
    assert caught.value.problems == [f"images/{records[3].stem}.png (landmarks.csv row 4): missing"]


def test_validate_reports_a_truncated_png(dataset):
    records = read_landmark_csv(dataset / "landmarks.csv")
    image = dataset / "images" / f"{records[1].stem}.png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as caught:
        validate_dataset(dataset)
    (problem,) = caught.value.problems
    assert problem.startswith(f"images/{records[1].stem}.png (landmarks.csv row 2): cannot be decoded")


def test_validate_reports_a_point_outside_the_image(dataset):
    records = read_landmark_csv(dataset / "landmarks.csv")
    moved = records[4].points.copy()
    moved[6] = [299.0, 10.0]  # x = width is already outside
    records[4] = make_record(records[4].row, records[4].id, records[4].stem, moved)
    write_landmark_csv(dataset / "landmarks.csv", records)
    with pytest.raises(DataError) as caught:
        validate_dataset(dataset)
    (problem,) = caught.value.problems
    assert problem.startswith("landmarks.csv row 5: landmark 7 (299, 10) outside the 299x299 image")


def test_validate_reports_every_image_problem_at_once(dataset):
    records = read_landmark_csv(dataset / "landmarks.csv")
    (dataset / "images" / f"{records[0].stem}.png").unlink()
    (dataset / "images" / f"{records[5].stem}.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as caught:
        validate_dataset(dataset)
    assert [p.split(": ")[0] for p in caught.value.problems] == [
        f"images/{records[0].stem}.png (landmarks.csv row 1)",
        f"images/{records[5].stem}.png (landmarks.csv row 6)",
    ]


def test_validate_reports_mixed_image_sizes_as_none(dataset):
    records = read_landmark_csv(dataset / "landmarks.csv")
    Image.new("L", (320, 300), 0).save(dataset / "images" / f"{records[0].stem}.png")
    assert validate_dataset(dataset).image_size is None


def test_validate_missing_folder_and_missing_csv(tmp_path):
    with pytest.raises(DataError, match="nowhere: data folder does not exist"):
        validate_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="missing landmarks.csv"):
        validate_dataset(tmp_path / "empty")


# --- the split -------------------------------------------------------------------------------


def test_split_is_deterministic_and_depends_on_the_seed(real_records):
    first = make_split(real_records, SplitSpec(seed=42))
    assert make_split(list(reversed(real_records)), SplitSpec(seed=42)) == first  # input order does not matter
    assert make_split(real_records, SplitSpec(seed=43))["test"] != first["test"]


def test_split_is_disjoint_and_covers_every_stem(real_records):
    parts = make_split(real_records, SplitSpec())
    stems = parts["train"] + parts["val"] + parts["test"]
    assert len(stems) == len(set(stems)) == 957
    assert set(stems) == {r.stem for r in real_records}


def test_split_sizes_and_strata_follow_the_fractions(real_records):
    spec = SplitSpec(seed=7, train=0.6, val=0.25, test=0.15)
    parts = make_split(real_records, spec)
    fractions = {"train": 0.6, "val": 0.25, "test": 0.15}
    totals = {"COVID": 306, "Normal": 468, "Viral Pneumonia": 183}
    for part, stems in parts.items():
        assert abs(len(stems) - fractions[part] * 957) <= 2
        counts = Counter(stem.rsplit("-", 1)[0] for stem in stems)
        assert set(counts) == set(totals)  # every category in every part
        for category, total in totals.items():
            assert abs(counts[category] - fractions[part] * total) <= 2


def test_split_of_three_images_gives_one_each_and_fewer_is_refused(real_records):
    parts = make_split(real_records[:3], SplitSpec())
    assert sorted(len(stems) for stems in parts.values()) == [1, 1, 1]
    with pytest.raises(DataError, match="2 image"):
        make_split(real_records[:2], SplitSpec())
