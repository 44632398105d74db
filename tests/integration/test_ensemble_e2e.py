"""The ensemble job end to end: the real CLI, a real redis-server, real worker processes."""

from __future__ import annotations

import json
import math
import re
import time

import pytest

from tests.conftest import TINY
from tests.integration.harness import Cluster, ended

pytestmark = pytest.mark.integration

def test_an_ensemble_trains_in_parallel_and_lands_in_postgres(tmp_path, redis_url, postgres_url, dataset):
    import redis

    redis.Redis.from_url(redis_url).flushall()
    c = Cluster(tmp_path / "home", broker_url=f"{redis_url}/1", database_url=postgres_url)
    try:
        c.start_workers(2, "a")
        done = c.medq("submit", "ensemble", "--data", str(dataset), "--seeds", "2", "--epochs", "1", *TINY, "--wait")
        assert done.returncode == 0, done.stdout + done.stderr + c.logs()
        job_id = done.stdout.splitlines()[0]
        assert re.fullmatch(r"[0-9a-f]{12}", job_id)

        status = c.status(job_id)
        assert status["state"] == "succeeded"
        members = status["members"]
        assert [(m["seed"], m["state"], m["epoch"], m["attempt"]) for m in members] == [
            (0, "succeeded", 2, 1), (1, "succeeded", 2, 1)]
        assert len({m["worker"] for m in members}) == 2, "members should run in parallel, one per worker"

        results = json.loads(c.medq("results", job_id, "--json").stdout)
        assert results["job_id"] == job_id and results["state"] == "succeeded"
        for m in results["members"]:
            metrics = m["metrics"]
            assert math.isfinite(metrics["mean_error_px"]) and metrics["mean_error_px"] > 0
            assert metrics["mean_error_px_224"] == pytest.approx(metrics["mean_error_px"] * 224 / 299, rel=1e-6)
            assert len(metrics["per_landmark"]) == 15
            assert set(metrics["per_category"]) <= {"COVID", "Normal", "Viral Pneumonia"}
        assert {e["aggregation"] for e in results["ensemble"]} == {"mean", "median", "weighted"}
        table = c.medq("results", job_id).stdout
        assert "ensemble (mean)" in table and "seed 1" in table
    finally:
        c.stop()


def test_a_bad_dataset_is_refused_before_anything_is_enqueued(tmp_path, dataset):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    lines = (bad / "landmarks.csv").read_text().splitlines()
    cells = lines[4].split(",")
    cells[7] = "abc"
    lines[4] = ",".join(cells)
    (bad / "landmarks.csv").write_text("\n".join(lines) + "\n")
    (bad / "images" / f"{lines[9].split(',')[-1]}.png").unlink()
    c = Cluster(tmp_path / "home")
    done = c.medq("submit", "ensemble", "--data", str(bad), "--seeds", "2")
    assert done.returncode == 2
    assert "landmarks.csv row 5" in done.stderr and "x4" in done.stderr
    assert done.stdout == ""
    assert json.loads(c.medq("status", "--json").stdout) == []

    wrong = c.medq("submit", "ensemble", "--data", str(dataset), "--loss", "huber")
    assert wrong.returncode == 2 and "complete" in wrong.stderr and "wing" in wrong.stderr
    assert json.loads(c.medq("status", "--json").stdout) == []


def test_a_member_killed_mid_training_resumes_from_its_checkpoint_on_the_other_worker(cluster, dataset):
    first = cluster.start_workers(1, "first")
    done = cluster.medq("submit", "ensemble", "--data", str(dataset), "--seeds", "1", "--epochs", "5", *TINY)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.splitlines()[0]
    checkpoint = cluster.home / "artifacts" / job_id / "seed-0" / "last.pt"
    deadline = time.monotonic() + 180
    while not checkpoint.exists():  # at least one epoch checkpointed
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.2)
    cluster.wait(job_id, lambda v: v["members"][0]["epoch"] >= 2 and v["members"][0]["state"] == "running")
    cluster.kill(first)
    cluster.start_workers(1, "second")

    view = cluster.wait(job_id, ended, timeout=300)
    assert view["state"] == "succeeded", cluster.logs()
    attempts = cluster.attempts(job_id, 0)
    assert [a.state for a in attempts] == ["lost", "succeeded"]
    assert attempts[0].worker != attempts[1].worker
    assert attempts[1].start_epoch >= 1, "the second attempt must resume, not start over"
    results = json.loads(cluster.medq("results", job_id, "--json").stdout)
    assert [m["seed"] for m in results["members"] if m["metrics"]] == [0]
    assert len(results["ensemble"]) == 3


def test_cancel_stops_a_running_member_and_survives_a_worker_restart(cluster, dataset):
    launcher = cluster.start_workers(1, "first")
    done = cluster.medq("submit", "ensemble", "--data", str(dataset), "--seeds", "2", "--epochs", "40", *TINY)
    job_id = done.stdout.splitlines()[0]
    cluster.wait(job_id, lambda v: any(m["state"] == "running" and m["epoch"] >= 1 for m in v["members"]))
    cluster.kill(launcher)  # the worker is gone while the user cancels
    out = cluster.medq("cancel", job_id)
    assert out.returncode == 0 and "cancellation requested" in out.stdout
    cluster.start_workers(1, "second")
    view = cluster.wait(job_id, ended, timeout=120)
    assert view["state"] == "cancelled"
    assert {m["state"] for m in view["members"]} == {"cancelled"}
    assert all(m["epoch"] < 40 for m in view["members"])


def test_cancel_stops_a_running_member_within_an_epoch(cluster, dataset):
    cluster.start_workers(1, "only")
    done = cluster.medq("submit", "ensemble", "--data", str(dataset), "--seeds", "1", "--epochs", "40", *TINY)
    job_id = done.stdout.splitlines()[0]
    cluster.wait(job_id, lambda v: v["members"][0]["state"] == "running" and v["members"][0]["epoch"] >= 2)
    assert cluster.medq("cancel", job_id).returncode == 0
    view = cluster.wait(job_id, ended, timeout=60)
    assert view["state"] == "cancelled" and view["members"][0]["state"] == "cancelled"
    assert view["members"][0]["epoch"] < 40
    assert (cluster.home / "artifacts" / job_id / "seed-0" / "last.pt").exists()
