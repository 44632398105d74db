"""`medq results JOB --format table|json|jsonl|csv|parquet` for every job kind: the same records
in each format, options that do not apply refused (exit 2, naming why), files written whole."""

from __future__ import annotations

import csv
import io
import json

import pytest
from sqlalchemy import update

from tests.unit.infer_jobs import home, medq, run_chunks  # noqa: F401
from tests.unit.test_predict import random_member


@pytest.fixture
def infer_job(home, tmp_path):
    """An inference job of 4 synthetic radiographs and one unreadable file, run to its end."""
    from medq.common.families.chest.synth import synth_chest

    synth_chest(tmp_path / "synth", n=4, seed=2)
    (tmp_path / "synth" / "images" / "broken.png").write_bytes(b"not a png")
    member = random_member(tmp_path / "m" / "best.pt", seed=3)
    done = medq("submit", "infer", "--archive", tmp_path / "synth" / "images", "--model", member, "--batch-size", "2")
    assert done.exit_code == 0, done.output
    job_id = done.stdout.splitlines()[0]
    run_chunks(home, job_id)
    return job_id


@pytest.fixture
def ensemble_job(home):
    """A finished two-seed ensemble job with per-member and combined metrics in the store."""
    from medq.common import subjects
    from medq.common.store import jobs, open_store
    from medq.common.store.models import Job, Result

    store = open_store(home)
    job_id, members = jobs.create_job(store, "ensemble", {}, {"split": {}}, [0, 1], 2)
    for seed, member in enumerate(members):
        assert jobs.claim_member(store, member, f"o{seed}", "cpu0@h", "cpu", 60, 3).run
        jobs.finish_member(store, member, f"o{seed}", jobs.State.SUCCEEDED)
    with store.session() as s:
        for seed, mre in ((0, 3.5), (1, 4.25)):
            s.add(Result(job_id=job_id, subject=subjects.member(seed),
                         metrics={"mre_px": mre, "sdr_4px": 0.5 + seed / 10, "per_landmark": [1.0, 2.0]}))
        s.add(Result(job_id=job_id, subject=subjects.COMBINED + "mean", metrics={"mre_px": 3.0, "sdr_4px": 0.7}))
        s.execute(update(Job).where(Job.id == job_id).values(state="succeeded"))
    return job_id


def test_an_inference_job_gives_the_same_studies_in_csv_jsonl_and_parquet(infer_job, tmp_path):
    import pyarrow.parquet as pq

    as_csv = list(csv.DictReader(io.StringIO(medq("results", infer_job, "--format", "csv").stdout)))
    assert len(as_csv) == 5 and sum(r["state"] == "failed" for r in as_csv) == 1
    lines = medq("results", infer_job, "--format", "jsonl").stdout.splitlines()
    as_jsonl = [json.loads(line) for line in lines]
    assert [r["path"] for r in as_jsonl] == [r["path"] for r in as_csv]
    broken = next(r for r in as_jsonl if r["state"] == "failed")
    assert "broken.png" in broken["path"] and broken["reason"]  # the failure, with why
    assert all(("" if v is None else str(v)) == as_csv[i][k]  # null where the CSV cell is empty
               for i, r in enumerate(as_jsonl) for k, v in r.items())
    done = medq("results", infer_job, "--format", "parquet", "-o", tmp_path / "studies.parquet")
    assert done.exit_code == 0, done.output
    table = pq.read_table(tmp_path / "studies.parquet")
    assert table.num_rows == 5 and table.column_names == list(as_csv[0])
    assert table.column("path").to_pylist() == [r["path"] for r in as_csv]
    failed = list(csv.DictReader(io.StringIO(medq("results", infer_job, "--failed").stdout)))
    assert [r["state"] for r in failed] == ["failed"]
    summary = medq("results", infer_job).stdout
    assert "studies: 5 total, 4 done, 1 failed" in summary and "--format csv" in summary


def test_a_training_job_has_records_too_one_per_member_and_combination(ensemble_job, tmp_path):
    rows = list(csv.DictReader(io.StringIO(medq("results", ensemble_job, "--format", "csv").stdout)))
    assert [r["row"] for r in rows] == ["seed 0", "seed 1", "mean"]
    assert [r["mre_px"] for r in rows] == ["3.5", "4.25", "3.0"] and "per_landmark" not in rows[0]  # scalars only
    assert [r["state"] for r in rows] == ["succeeded", "succeeded", ""]
    records = [json.loads(line) for line in medq("results", ensemble_job, "--format", "jsonl").stdout.splitlines()]
    assert records[1]["seed"] == 1 and records[1]["mre_px"] == 4.25 and records[2]["seed"] is None
    whole = json.loads(medq("results", ensemble_job, "--json").stdout)
    assert whole["members"][0]["metrics"]["per_landmark"] == [1.0, 2.0]  # the full record in json
    out = tmp_path / "metrics.csv"
    assert medq("results", ensemble_job, "--format", "csv", "-o", out).exit_code == 0
    assert list(csv.DictReader(out.open()))[2]["row"] == "mean"


def test_options_that_do_not_apply_are_refused_not_ignored(ensemble_job, tmp_path):
    failed = medq("results", ensemble_job, "--failed")
    assert failed.exit_code == 2 and "--failed applies to inference jobs, not to ensemble jobs" in failed.output
    both = medq("results", ensemble_job, "--json", "--csv")
    assert both.exit_code == 2 and "give one format, not csv and json" in both.output
    binary = medq("results", ensemble_job, "--format", "parquet")
    assert binary.exit_code == 2 and "give -o FILE" in binary.output
    assert not list(tmp_path.glob("*.parquet"))


def test_failed_studies_are_records_so_a_summary_format_is_refused(infer_job):
    refused = medq("results", infer_job, "--failed", "--json")
    assert refused.exit_code == 2 and "--failed gives study records: use --format csv, jsonl or parquet" in refused.output


def test_parquet_columns_keep_one_type_across_row_groups(tmp_path):
    """Coordinates empty in the first row group (PNG studies) and numbers later (DICOM), whole
    numbers first and fractions later: the types of the first group hold, nothing is cut."""
    import pyarrow.parquet as pq

    from medq.scheduler.results_out import write_records

    records = [{"x1_mm": None, "width": 512, "path": "a.png"}] * 3 + [{"x1_mm": "12.5", "width": 1.5, "path": "b.dcm"}]
    with open(tmp_path / "t.parquet", "wb") as out:
        assert write_records("parquet", ["x1_mm", "width", "path"], iter(records), out, batch=3) == 4
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.column("x1_mm").to_pylist() == [None, None, None, "12.5"]
    assert table.column("width").to_pylist() == [512.0, 512.0, 512.0, 1.5]


def test_watch_of_an_ended_inference_job_says_how_its_studies_went(infer_job):
    """`medq watch` on an inference job in a log: its studies' line, then how the job ended."""
    done = medq("watch", infer_job)
    assert done.exit_code == 0  # a bad study fails alone: the job succeeded
    lines = done.stdout.splitlines()
    assert "4 done, 1 failed, 0 skipped, 0 left" in lines[0] and "100%" in lines[0], done.stdout
    assert lines[-1].startswith(f"job {infer_job} succeeded after ") and "4 done, 1 failed" in lines[-1], lines[-1]
