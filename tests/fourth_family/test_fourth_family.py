"""A fourth model family, defined in this folder and registered with one line, runs through
medq as the built-in ones do: real worker processes on a real Redis, the `medq` CLI, the store.
Submit (a bad dataset refused first), train, cancel, resume, evaluate, results, a transient
fault retried, and bulk inference over a two-study archive."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest

from tests.fourth_family.data import make_discs
from tests.integration.harness import ended

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REGISTERED = "tests.fourth_family.family:FAMILY"  # the one line: MEDQ_FAMILIES for submitter and workers


@pytest.fixture
def discs(tmp_path):
    return make_discs(tmp_path / "discs", n=24, seed=1)


def test_a_fourth_family_trains_cancels_resumes_evaluates_and_predicts(cluster, discs, tmp_path):
    cluster.env["MEDQ_FAMILIES"] = REGISTERED
    bad = tmp_path / "bad"
    shutil.copytree(discs, bad)
    (bad / "labels.csv").write_text((bad / "labels.csv").read_text().replace("img003,1", "img003,7"))
    refused = cluster.medq("submit", "train", "disc", "--data", str(bad))
    assert refused.returncode == 2 and "row 5: expected stem,label with label 0 or 1" in refused.stderr
    assert json.loads(cluster.medq("status", "--json").stdout) == []  # nothing was created

    cluster.start_workers(2, "a")
    job = cluster.medq("submit", "train", "disc", "--data", str(discs), "--set", "epochs=150", "--seeds", "2")
    assert job.returncode == 0, job.stderr
    job_id = job.stdout.splitlines()[0]
    cluster.wait(job_id, lambda v: all(m["epoch"] >= 2 for m in v["members"]), timeout=120)
    assert cluster.medq("cancel", job_id).returncode == 0
    cancelled = cluster.wait(job_id, ended, timeout=120)
    assert cancelled["state"] == "cancelled"
    stopped_at = {m["seed"]: m["epoch"] for m in cancelled["members"]}
    assert all(0 < epoch < 150 for epoch in stopped_at.values())

    assert cluster.medq("resume", job_id).returncode == 0
    done = cluster.wait(job_id, ended, timeout=300)
    assert done["state"] == "succeeded", cluster.logs()
    for seed, epoch in stopped_at.items():
        attempts = cluster.attempts(job_id, seed)
        assert attempts[-1].start_epoch == epoch  # went on from its checkpoint, not from scratch
    status = cluster.medq("status", job_id)
    assert "val accuracy" in status.stdout
    results = json.loads(cluster.medq("results", job_id, "--json").stdout)
    assert [m["metrics"]["accuracy"] > 0.5 for m in results["members"]] == [True, True]
    table = cluster.medq("results", job_id)
    assert table.returncode == 0 and "accuracy" in table.stdout and "seed 1" in table.stdout

    archive = tmp_path / "archive"
    archive.mkdir()
    for image in sorted((discs / "images").glob("*.png"))[:2]:
        shutil.copy(image, archive / image.name)
    refused = cluster.medq("submit", "infer", "--archive", str(archive), "--model", job_id, "--aggregation", "median")
    assert refused.returncode == 2 and "aggregation" in refused.stderr
    infer = cluster.medq("submit", "infer", "--archive", str(archive), "--model", job_id, "--wait")
    assert infer.returncode == 0, infer.stderr + cluster.logs()
    rows = list(csv.DictReader(io.StringIO(cluster.medq("results", infer.stdout.splitlines()[0], "--csv").stdout)))
    assert [(r["path"], r["state"], r["label"]) for r in rows] == [("img000.png", "done", "empty"),
                                                                   ("img001.png", "done", "disc")]


def test_a_transient_fault_during_a_member_is_retried_and_counted(cluster, discs):
    cluster.env["MEDQ_FAMILIES"] = REGISTERED
    cluster.start_workers(1, "a")
    job = cluster.medq("submit", "train", "disc", "--data", str(discs), "--set", "epochs=2", "--set", "flaky_reads=1")
    job_id = job.stdout.splitlines()[0]
    done = cluster.wait(job_id, ended, timeout=120)
    assert done["state"] == "succeeded", cluster.logs()
    first, second = cluster.attempts(job_id, 0)
    assert first.state == "retried" and "transient fault 1 of 4: OSError" in first.error
    assert second.state == "succeeded"
    assert "goes back to the queue and runs again in 10 s" in cluster.full_logs()
