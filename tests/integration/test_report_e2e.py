"""Report jobs end to end: the real CLI, a real redis-server and real worker processes. A report
of a finished ensemble and of one still training (rendered "as of" now, taken by the free
worker while the other trains), and every bad request refused with exit 2 and nothing created
or enqueued."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import TINY
from tests.integration.harness import Cluster

pytestmark = pytest.mark.integration


def _report(c: Cluster, *args: str) -> tuple[str, dict]:
    done = c.medq("submit", "report", *args, "--wait", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr + c.logs()
    report_id = done.stdout.splitlines()[0]
    assert re.fullmatch(r"[0-9a-f]{12}", report_id)
    results = json.loads(c.medq("results", report_id, "--json").stdout)
    return report_id, results


def _queue_length(redis_url: str, queue: str) -> int:
    import redis

    return redis.Redis.from_url(f"{redis_url}/0").llen(queue)


def test_reports_of_a_finished_and_a_running_ensemble(cluster, dataset, tmp_path):
    c = cluster
    c.start_workers(2, "a")
    done = c.medq("submit", "ensemble", "--data", str(dataset), "--seeds", "2", "--epochs", "1", *TINY, "--wait")
    assert done.returncode == 0, done.stdout + done.stderr + c.logs()
    job_id = done.stdout.splitlines()[0]

    trained = json.loads(c.medq("results", job_id, "--json").stdout)
    for member in trained["members"]:  # the history: every epoch once, in order, with its numbers
        assert [e["epoch"] for e in member["history"]] == [1, 2]
        assert [e["phase"] for e in member["history"]] == ["head", "finetune"]
        assert all(e["train_loss"] > 0 and e["val_loss"] > 0 and e["metrics"]["val_error_px"] > 0
                   and e["lrs"] and e["images_per_s"] > 0 and e["wall_s"] > 0 for e in member["history"])

    report_id, report = _report(c, job_id, "--out", str(tmp_path / "reports"))
    assert report["kind"] == "report" and report["state"] == "succeeded" and report["jobs"] == [job_id]
    page = Path(report["html"])
    assert page.parent == tmp_path / "reports" and page.name == f"report-{report_id}.html"
    text = page.read_text()
    assert job_id in text and "Learning curves" in text and "still running" not in text
    listed = c.medq("status").stdout
    assert report_id in listed and "report" in listed
    assert str(page) in c.medq("status", report_id).stdout

    # a long member on one worker; the report is taken by the other worker while it trains
    long = c.medq("submit", "ensemble", "--data", str(dataset), "--seeds", "1", "--epochs", "30", *TINY)
    assert long.returncode == 0, long.stderr
    running_id = long.stdout.splitlines()[0]
    c.wait(running_id, lambda v: v["members"][0]["epoch"] >= 2 and v["members"][0]["state"] == "running")
    _, report = _report(c, running_id)
    assert report["running"] == [running_id]
    assert "is still running" in Path(report["html"]).read_text()
    assert c.status(running_id)["state"] == "running", "the report must not wait for the training to end"
    c.medq("cancel", running_id)


def test_bad_report_requests_are_refused_with_nothing_enqueued(cluster, dataset, redis_url):
    from medq.common.store import jobs
    from medq.common.store.db import Store

    c = cluster
    store = Store(c.database_url)
    store.ensure_schema()
    split = {"train": ["a"], "val": ["b"], "test": ["c", "d"]}
    chest, _ = jobs.create_job(store, "ensemble", {}, {"data_dir": "/d", "split": split}, [0])
    other_split, _ = jobs.create_job(store, "ensemble", {}, {"data_dir": "/d", "split": {**split, "test": ["e"]}}, [0])
    ceph, _ = jobs.create_job(store, "hrnet", {}, {"data_dir": "/d", "split": split}, [0])
    with store.session() as s:  # give the first two something to show: one finished epoch each
        from medq.common.store import history
        from medq.common.store.models import Member

        for job_id in (chest, other_split, ceph):
            member = s.query(Member).filter_by(job_id=job_id).one()
            history.write_epochs(s, member.id, job_id, [{"epoch": 1, "train_loss": 1.0}])
    empty, _ = jobs.create_job(store, "ensemble", {}, {"data_dir": "/d", "split": split}, [0])
    store.dispose()
    before = len(json.loads(c.medq("status", "--json", "--limit", "100").stdout))
    cases = {
        "no such job": ["feedfacecafe"],
        "several": [chest, ceph],
        "different test splits": [chest, other_split],
        "nothing to show yet": [empty],
        "cannot create it": [chest, "--out", "/dev/null/reports"],
    }
    for expected, args in cases.items():
        done = c.medq("submit", "report", *args)
        assert done.returncode == 2, (expected, done.stdout, done.stderr)
        assert expected in done.stderr and done.stdout == "", (expected, done.stderr)
    done = c.medq("submit", "report", chest, ceph)
    assert chest in done.stderr and ceph in done.stderr and "hrnet" in done.stderr
    assert len(json.loads(c.medq("status", "--json", "--limit", "100").stdout)) == before
    assert _queue_length(redis_url, "report") == 0
