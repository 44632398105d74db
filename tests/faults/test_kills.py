"""Processes killed outright (SIGKILL: no clean-up, no ack) at the worst moments: the launcher
alone, the pool process during training, during an evaluation and during a chunk. Each job
ends, loses and repeats nothing, and the user sees why it took another attempt."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest
from sqlalchemy import select

from medq.common.store import Job, Member, Store
from medq.common.store.models import Chunk
from tests.conftest import TINY
from tests.faults.conftest import group_alive, pool_process
from tests.integration.harness import ended

pytestmark = pytest.mark.integration


def _until(check, timeout: float = 180, poll: float = 0.1, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def _member(store: Store, job_id: str) -> Member:
    with store.session() as s:
        return s.scalars(select(Member).where(Member.job_id == job_id)).first()


def _submit(cluster, dataset, epochs: int) -> str:
    done = cluster.medq("submit", "ensemble", "--data", str(dataset), "--seeds", "1", "--epochs", str(epochs), *TINY)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[0]


def _one_result_per_seed(cluster, job_id: str) -> None:
    results = json.loads(cluster.medq("results", job_id, "--json").stdout)
    assert [m["seed"] for m in results["members"] if m["metrics"]] == [0]
    assert {e["aggregation"] for e in results["ensemble"]} == {"mean", "median", "weighted"}


def test_a_sigkilled_launcher_takes_its_workers_with_it_and_another_resumes(cluster, dataset, fault_log):
    """The launcher alone is killed: its Celery worker and pool process must not run on beside
    the launcher that replaces it (they used to, holding the member and its device)."""
    fault_log.trying("launcher SIGKILLed mid-member")
    first = cluster.start_workers(1, "first")
    job_id = _submit(cluster, dataset, epochs=30)  # long enough that a warm stop would still be running
    store = Store(cluster.database_url)
    _until(lambda: (m := _member(store, job_id)).state == "running" and m.epoch >= 2, what="epoch 2")
    os.kill(first.pid, signal.SIGKILL)  # the launcher only, not its process group
    first.wait()
    killed_at, epoch = time.monotonic(), _member(store, job_id).epoch
    _until(lambda: not group_alive(first.pid), timeout=10, what="the orphaned worker to stop")
    orphan_gone_s = time.monotonic() - killed_at
    cluster.start_workers(1, "second")
    _until(lambda: _member(store, job_id).epoch > epoch and _member(store, job_id).state == "running",
           what="the next epoch on the new launcher")
    recovery = time.monotonic() - killed_at
    view = cluster.wait(job_id, ended, timeout=240)
    assert view["state"] == "succeeded", cluster.logs()
    attempts = cluster.attempts(job_id, 0)
    assert [a.state for a in attempts] == ["lost", "succeeded"] and attempts[1].start_epoch >= 1  # epoch 2 was running
    _one_result_per_seed(cluster, job_id)
    store.dispose()
    fault_log.survived(recovery, f"its worker gone in {orphan_gone_s:.1f} s; includes starting a new launcher")


def test_a_pool_process_sigkilled_mid_training_resumes_from_its_checkpoint(cluster, dataset, fault_log):
    fault_log.trying("pool process SIGKILLed mid-training")
    launcher = cluster.start_workers(1, "a")
    job_id = _submit(cluster, dataset, epochs=8)
    store = Store(cluster.database_url)
    _until(lambda: (m := _member(store, job_id)).state == "running" and m.epoch >= 2, what="epoch 2")
    epoch = _member(store, job_id).epoch
    os.kill(pool_process(launcher.pid), signal.SIGKILL)
    killed_at = time.monotonic()
    _until(lambda: _member(store, job_id).epoch > epoch + 1, what="two more epochs")
    recovery = time.monotonic() - killed_at
    view = cluster.wait(job_id, ended, timeout=240)
    assert view["state"] == "succeeded", cluster.logs()
    attempts = cluster.attempts(job_id, 0)
    assert [a.state for a in attempts][-1] == "succeeded" and attempts[-1].start_epoch >= epoch - 1
    assert sum(a.state == "succeeded" for a in attempts) == 1
    _one_result_per_seed(cluster, job_id)
    store.dispose()
    fault_log.survived(recovery, "to the epoch after the resumed one")


def test_an_evaluation_whose_pool_process_is_sigkilled_is_retried_after_one_lease(cluster, tmp_path, fault_log):
    """The evaluation holds a lease renewed by a heartbeat, like a member: a killed one is taken
    again after the lease (6 s here, 60 s by default), not after ten of them."""
    fault_log.trying("pool process SIGKILLed during an evaluation")
    data = tmp_path / "eval-data"  # a larger test split, so that the evaluation takes a while
    assert cluster.medq("data", "synth-chest", str(data), "--n", "240", "--seed", "4").returncode == 0
    launcher = cluster.start_workers(1, "a")
    job_id = _submit(cluster, data, epochs=0)
    store = Store(cluster.database_url)

    def evaluating():
        with store.session() as s:
            return s.get(Job, job_id).eval_state == "running"

    _until(evaluating, timeout=240, poll=0.02, what="the evaluation to start")
    os.kill(pool_process(launcher.pid), signal.SIGKILL)
    killed_at = time.monotonic()
    view = cluster.wait(job_id, ended, timeout=120, poll=0.2)
    recovery = time.monotonic() - killed_at
    assert view["state"] == "succeeded", cluster.logs()
    assert recovery < 45, f"the evaluation took {recovery:.0f} s to come back; it waits for one lease (6 s)"
    assert "evaluation sent again" in cluster.full_logs(), "the kill did not land in the evaluation"
    _one_result_per_seed(cluster, job_id)
    store.dispose()
    fault_log.survived(recovery, "to the job's results")


def test_a_pool_process_sigkilled_mid_chunk_loses_and_repeats_no_study(cluster, tmp_path, fault_log):
    from medq.common.families.chest.synth import synth_chest
    from medq.scheduler.bench import _untrained_checkpoint

    fault_log.trying("pool process SIGKILLed mid-chunk")
    synth_chest(tmp_path / "synth", n=60, seed=5)
    archive = tmp_path / "archive"
    shutil.copytree(tmp_path / "synth" / "images", archive)
    model = _untrained_checkpoint(tmp_path / "best.pt", 64)
    launcher = cluster.start_workers(1, "a")
    done = cluster.medq("submit", "infer", "--archive", str(archive), "--model", str(model), "--chunk", "20",
                        "--batch-size", "2", "--loader-workers", "0")
    job_id = done.stdout.splitlines()[0]
    _until(lambda: cluster.status(job_id)["studies"]["done"] >= 6, poll=0.2, what="six studies")
    before = cluster.status(job_id)["studies"]["done"]
    os.kill(pool_process(launcher.pid), signal.SIGKILL)
    killed_at = time.monotonic()
    _until(lambda: cluster.status(job_id)["studies"]["done"] > before + 2, poll=0.2, what="the next studies")
    recovery = time.monotonic() - killed_at
    view = cluster.wait(job_id, ended, timeout=240)
    assert view["state"] == "succeeded" and view["studies"]["done"] == 60, cluster.logs()
    rows = cluster.medq("results", job_id, "--csv").stdout.splitlines()[1:]
    assert len(rows) == 60 and len({r.split(",")[0] for r in rows}) == 60
    # Taken again either way: the reaper re-enqueues it, or Celery's requeue of the lost message
    # claims it once the lease has lapsed. Both count as an attempt on the chunk's row.
    store = Store(cluster.database_url)
    with store.session() as s:
        attempts = sorted(s.scalars(select(Chunk.attempts).where(Chunk.job_id == job_id)))
    store.dispose()
    assert attempts[-1] == 2 and attempts[:-1] == [1] * (len(attempts) - 1), f"chunk attempts {attempts}"
    fault_log.survived(recovery, "to the next studies done")
