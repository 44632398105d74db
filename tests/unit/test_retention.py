"""`medq gc` and MEDQ_RETENTION_DAYS: what a disk that fills up with checkpoints gets back, and
what is never touched (weights, what `medq resume` needs, running jobs, folders not medq's)."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from medq.common.store import jobs, open_store
from medq.common.store.models import Artifact, Job, Member, utcnow
from tests.unit.infer_jobs import home, medq  # noqa: F401

MB = 1024 * 1024


def _file(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    return path


def _age(path, days):
    then = time.time() - days * 86400
    os.utime(path, (then, then))


def _ended_job(store, root, days_ago, member_states=("succeeded", "failed"), state="failed"):
    job_id, members = jobs.create_job(store, "ensemble", {}, {"split": {}}, range(len(member_states)), 2)
    for seed, (member, member_state) in enumerate(zip(members, member_states)):
        folder = root / job_id / f"seed-{seed}"
        last = _file(folder / "last.pt", 3 * MB)
        _file(folder / "best.pt", MB)
        assert jobs.claim_member(store, member, f"o{seed}", "cpu0@h", "cpu", 60, 3).run
        if member_state == "running":
            continue
        jobs.finish_member(store, member, f"o{seed}", jobs.State(member_state),
                           artifacts={f"seed-{seed}/best": str(folder / "best.pt"), f"seed-{seed}/last": str(last)})
    with store.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(state=state, finished_at=utcnow() - timedelta(days=days_ago)
                                                             if state != "running" else None))
    return job_id


@pytest.fixture
def artifacts(home):
    store = open_store(home)
    root = home.artifacts
    old = _ended_job(store, root, days_ago=10)
    recent = _ended_job(store, root, days_ago=1, member_states=("succeeded",), state="succeeded")
    running = _ended_job(store, root, days_ago=0, member_states=("succeeded", "running"), state="running")
    orphan = _file(root / "0123456789ab" / "seed-0" / "last.pt", 2 * MB).parents[1]
    _age(orphan, 30)
    _file(root / "ct-nifti-slices" / "case1" / "slice-000.npy", MB)  # not a job's folder
    _age(_file(root / "ct-nifti-slices" / "case1" / "slice-001.npy.tmp", MB), 1)  # nor are its partial files
    stale = _file(root / old / "seed-1" / "best.pt.tmp", MB)
    _age(stale, 1)
    _file(root / recent / "seed-0" / "best.pt.tmp", MB)  # a write in progress
    return {"store": store, "root": root, "old": old, "recent": recent, "running": running, "orphan": orphan,
            "stale": stale}


def test_gc_frees_resume_checkpoints_of_succeeded_members_and_keeps_every_weights_file(artifacts):
    a, root = artifacts, artifacts["root"]
    dry = medq("gc", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"{a['old']}/seed-0/last.pt" in dry.output and "would free 4.0 MiB in 2 item(s)" in dry.output, dry.output
    assert (root / a["old"] / "seed-0" / "last.pt").exists()  # a dry run removes nothing
    done = medq("gc")
    assert done.exit_code == 0 and "freed 4.0 MiB in 2 item(s)" in done.output, done.output
    assert not (root / a["old"] / "seed-0" / "last.pt").exists() and not a["stale"].exists()
    kept = [root / a["old"] / "seed-0" / "best.pt",  # the weights inference and reports load
            root / a["old"] / "seed-1" / "last.pt",  # a failed member: `medq resume` goes on from it
            root / a["recent"] / "seed-0" / "last.pt",  # ended a day ago, under the 7 days
            root / a["running"] / "seed-0" / "last.pt",  # a job still running
            root / a["recent"] / "seed-0" / "best.pt.tmp",  # a write that may be in progress
            a["orphan"], root / "ct-nifti-slices" / "case1" / "slice-001.npy.tmp"]
    assert all(p.exists() for p in kept), [p for p in kept if not p.exists()]
    with a["store"].session() as s:
        names = set(s.scalars(select(Artifact.name).where(Artifact.job_id == a["old"])))
    assert names == {"seed-0/best", "seed-1/best", "seed-1/last"}  # no row names a removed file
    assert "freed 0 B in 0 item(s)" in medq("gc").output  # nothing more to do


def test_gc_with_orphans_removes_folders_of_jobs_the_store_does_not_have(artifacts):
    done = medq("gc", "--orphans", "--older-than", "30", "--json")
    report = json.loads(done.output)
    assert [r["path"] for r in report["removed"] if r["why"] == "no such job in the store"] == [str(artifacts["orphan"])]
    assert not artifacts["orphan"].exists() and (artifacts["root"] / "ct-nifti-slices").exists()
    assert (artifacts["root"] / artifacts["old"] / "seed-0" / "last.pt").exists()  # ended 10 days ago, not 30


def test_launchers_collect_once_an_hour_with_a_retention_setting(artifacts, home):
    from medq.common.settings import load_settings
    from medq.workers import reaper

    reaper._gc.update(last=None, thread=None)
    assert reaper.collect_garbage(artifacts["store"], home, now=0.0, wait=True) == 0  # MEDQ_RETENTION_DAYS unset
    settings = load_settings({"MEDQ_HOME": str(home.home), "MEDQ_RETENTION_DAYS": "5"})
    assert reaper.collect_garbage(artifacts["store"], settings, now=10.0, wait=True) == 4 * MB
    _file(artifacts["root"] / artifacts["old"] / "seed-0" / "last.pt", MB)
    assert reaper.collect_garbage(artifacts["store"], settings, now=100.0, wait=True) == 0  # within the hour
    assert reaper.collect_garbage(artifacts["store"], settings, now=3700.0, wait=True) == MB
    with artifacts["store"].session() as s:
        assert s.scalar(select(Member.state).where(Member.job_id == artifacts["old"], Member.seed == 0)) == "succeeded"


def test_a_resume_checkpoint_an_inference_job_predicts_with_is_kept(artifacts):
    """`medq submit infer --model .../last.pt` is allowed; a job held by its window, or failed
    and resumed later, must find its model."""
    from medq.common.store.models import Job

    model = artifacts["root"] / artifacts["old"] / "seed-0" / "last.pt"
    job_id, _ = jobs.create_job(artifacts["store"], "infer", {"checkpoints": [str(model)]}, {}, [], 0)
    with artifacts["store"].session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(state="failed", finished_at=utcnow()))
    done = medq("gc")
    assert done.exit_code == 0 and "freed 1.0 MiB in 1 item(s)" in done.output, done.output  # the stale .tmp only
    assert model.exists()
