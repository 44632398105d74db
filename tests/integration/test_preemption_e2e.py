"""Training yields its workers to urgent inference and loses no step: real Redis, real workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest

from medq.common.store import Store
from medq.common.store import preemption
from medq.common.store.views import find_job
from tests.conftest import TINY
from tests.faults.conftest import pool_process
from tests.integration.harness import ended

pytestmark = pytest.mark.integration
EPOCHS = ["--epochs", "3"]  # + 1 head epoch (TINY): 4 per member


def _until(check, timeout: float = 240, poll: float = 0.1, what: str = ""):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)
    return value


@pytest.fixture
def sharing_cluster(cluster):
    cluster.env.update({"MEDQ_PREEMPT_MIN_RUN": "0", "MEDQ_PREEMPT_GRACE": "1"})
    return cluster


def _train(cluster, data, seeds: int) -> str:
    done = cluster.medq("submit", "ensemble", "--data", str(data), "--seeds", str(seeds), *EPOCHS, *TINY,
                        "--project", "labA")
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[0]


def _results(cluster, job_id: str) -> dict:
    return json.loads(cluster.medq("results", job_id, "--json").stdout)


def _epochs_once_each(results: dict) -> None:
    for member in results["members"]:
        assert [e["epoch"] for e in member["history"]] == [1, 2, 3, 4], f"seed {member['seed']}"


def test_urgent_inference_takes_a_training_worker_and_training_resumes_exactly(sharing_cluster, big_dataset, tmp_path):
    from medq.common.families.chest.synth import synth_chest
    from medq.scheduler.bench import _untrained_checkpoint

    cluster = sharing_cluster
    synth_chest(tmp_path / "synth", n=8, seed=9)
    archive = tmp_path / "archive"
    shutil.copytree(tmp_path / "synth" / "images", archive)
    model = _untrained_checkpoint(tmp_path / "best.pt", 64)
    cluster.start_workers(2, "a")
    job_id = _train(cluster, big_dataset, seeds=2)
    _until(lambda: all(m["state"] == "running" and m["epoch"] >= 1 and m["step"] >= 2
                       for m in cluster.status(job_id)["members"]), what="both members mid-epoch")
    submitted = time.monotonic()
    urgent = cluster.medq("submit", "infer", "--archive", str(archive), "--model", str(model), "--chunk", "4",
                          "--batch-size", "2", "--loader-workers", "0", "--priority", "high", "--project", "hospital")
    assert urgent.returncode == 0, urgent.stderr
    infer_id = urgent.stdout.splitlines()[0]
    _until(lambda: cluster.status(infer_id)["studies"]["done"] >= 1, poll=0.2, what="the first urgent study")
    first_study = time.monotonic() - submitted

    view = cluster.wait(job_id, ended, timeout=300)
    assert view["state"] == "succeeded", cluster.logs()
    assert view["project"] == "labA" and view["priority"] == "normal"
    yielded = {m["seed"]: m["preemptions"] for m in view["members"]}
    assert sum(yielded.values()) >= 1, f"no member yielded: {yielded}\n{cluster.logs()}"
    assert "yielded its worker" in cluster.full_logs()
    table = cluster.medq("status", job_id).stdout
    assert "yielded" in table and "project labA, normal priority" in table, table
    assert cluster.wait(infer_id, ended)["state"] == "succeeded"
    results = _results(cluster, job_id)
    _epochs_once_each(results)
    epoch_s = max(e["wall_s"] for m in results["members"] for e in m["history"])
    assert first_study < epoch_s + 10, f"first urgent study after {first_study:.1f} s; an epoch takes {epoch_s:.1f} s"
    assert len({m["seed"] for m in results["members"] if m["metrics"]}) == 2

    reference = _results(cluster, cluster.wait(_train(cluster, big_dataset, seeds=2), ended, timeout=300)["job_id"])
    for cut, straight in zip(results["members"], reference["members"]):
        assert cut["seed"] == straight["seed"]
        for name in ("mean_error_px", "median_error_px"):
            assert cut["metrics"][name] == pytest.approx(straight["metrics"][name], rel=1e-6, abs=1e-9), name


def test_a_member_sigkilled_while_it_yields_resumes_from_its_last_checkpoint(sharing_cluster, big_dataset):
    cluster = sharing_cluster
    launcher = cluster.start_workers(1, "a")
    job_id = _train(cluster, big_dataset, seeds=1)
    store = Store(cluster.database_url)
    _until(lambda: (m := cluster.status(job_id)["members"][0])["state"] == "running" and m["epoch"] >= 1
           and m["step"] >= 1, what="the member in its second epoch")
    member_id = _member_id(store, job_id)
    assert preemption.request_preemption(store, member_id, "the test asks")
    # read in-process, in milliseconds: `medq status` (a second) may come after the yield itself
    assert find_job(store, job_id)["members"][0]["yielding"]
    time.sleep(0.6)  # the heartbeat has seen it (every 0.5 s here): the member is stopping, saving or yielding
    os.kill(pool_process(launcher.pid), signal.SIGKILL)
    view = cluster.wait(job_id, ended, timeout=300)
    killed = cluster.attempts(job_id, 0)[0]
    store.dispose()
    assert view["state"] == "succeeded", cluster.logs()
    _epochs_once_each(_results(cluster, job_id))
    # Either the kill came before the yield was recorded (the attempt is lost, the lease lapsed,
    # nothing counted as a preemption) or just after it (preempted, counted once): both resume.
    assert (killed.state, view["members"][0]["preemptions"]) in {("lost", 0), ("preempted", 1)}, killed.state


def _member_id(store: Store, job_id: str) -> int:
    from sqlalchemy import select

    from medq.common.store import Member

    with store.session() as s:
        return s.scalar(select(Member.id).where(Member.job_id == job_id))


def test_project_b_after_a_s_ten_members_runs_next_and_a_borrowed_worker_is_given_back(sharing_cluster, big_dataset):
    """Quotas labA=1, labB=1 on two workers: A's ten members borrow the idle second worker;
    B submits one member; A's borrowed member yields at its next step and B's starts on that
    worker within one epoch, before any of A's eight waiting members. A's own share of the
    quota is never exceeded by a member that is not borrowed."""
    cluster = sharing_cluster
    cluster.env.update({"MEDQ_QUOTAS": "labA=1,labB=1", "MEDQ_ADMIT_INTERVAL": "0.3"})
    cluster.start_workers(2, "a")
    a_job = _train(cluster, big_dataset, seeds=10)
    _until(lambda: sum(m["state"] == "running" and m["step"] >= 1 for m in cluster.status(a_job)["members"]) == 2,
           what="two of A's members training")
    first_two = {m["seed"] for m in cluster.status(a_job)["members"] if m["state"] == "running"}
    assert sum(m["borrowed"] for m in cluster.status(a_job)["members"]) == 1  # B idle: A borrows it
    submitted = time.monotonic()
    done = cluster.medq("submit", "ensemble", "--data", str(big_dataset), "--seeds", "1", *EPOCHS, *TINY,
                        "--project", "labB")
    assert done.returncode == 0, done.stderr
    b_job = done.stdout.splitlines()[0]
    own_over_quota = []
    while (b := cluster.status(b_job)["members"][0])["state"] == "queued":
        a_members = cluster.status(a_job)["members"]
        own = [m["seed"] for m in a_members if m["state"] == "running" and not m["borrowed"]]
        if len(own) > 1:
            own_over_quota.append(own)
        assert time.monotonic() - submitted < 120, cluster.logs()
        time.sleep(0.1)
    b_started = time.monotonic() - submitted
    assert own_over_quota == []
    a_view = cluster.status(a_job)
    assert sum(m["preemptions"] for m in a_view["members"]) == 1, cluster.logs()
    later = [m for m in a_view["members"] if m["seed"] not in first_two]
    assert all(m["started_at"] is None or m["started_at"] > b["started_at"] for m in later), later
    cluster.medq("cancel", a_job)
    assert cluster.wait(b_job, ended, timeout=300)["state"] == "succeeded", cluster.logs()
    epoch_s = max(e["wall_s"] for e in _results(cluster, b_job)["members"][0]["history"])
    assert b_started < epoch_s + 5, f"B started {b_started:.1f} s after its submit; an epoch takes {epoch_s:.1f} s"
    queue = json.loads(cluster.medq("queue", "--json").stdout)
    assert queue["quotas"] == {"labA": 1, "labB": 1} and queue["workers"] == 2


def test_a_launcher_told_to_stop_hands_its_member_over_at_the_next_step(cluster, big_dataset):
    """SIGTERM (systemd, a Kubernetes pod's termination): the running member yields at its next
    step with its exact checkpoint, before its worker stops; another launcher resumes it and no
    epoch is trained twice. A hand-over is not a preemption."""
    first = cluster.start_workers(1, "first")
    job_id = _train(cluster, big_dataset, seeds=1)
    _until(lambda: (m := cluster.status(job_id)["members"][0])["state"] == "running" and m["epoch"] >= 1
           and m["step"] >= 1, what="the member in its second epoch")
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)
    assert "every member handed over" in (cluster.home / "logs-first" / "launcher.log").read_text()
    handed = cluster.attempts(job_id, 0)[0]
    assert handed.state == "preempted", handed.state
    cluster.start_workers(1, "second")
    view = cluster.wait(job_id, ended, timeout=300)
    assert view["state"] == "succeeded", cluster.logs()
    assert view["members"][0]["preemptions"] == 0
    _epochs_once_each(_results(cluster, job_id))
