"""What the metrics endpoint reads, in the store's contract on SQLite and a real PostgreSQL: the
event counters move with the events themselves (and only when they commit), and one snapshot
says what runs, what waits where and since when, and how inference studies ended."""

from __future__ import annotations

import threading
from datetime import time, timedelta

from sqlalchemy import update

from medq.common.sharing.policy import Sharing
from medq.common.store import admission, counters, jobs, recovery
from medq.common.store import inference as ops
from medq.common.store.models import Member, utcnow
from medq.common.store.ops_view import ADMISSION_QUEUE, snapshot

NOON = time(12, 0)


def _workers(store, n, launcher="L1"):
    names = [f"cpu{i}-1@{launcher}" for i in range(n)]
    admission.register_workers(store, launcher, [(name, f"w.{name}", "cpu") for name in names])
    return names


def test_a_reaped_lease_a_redelivery_and_a_retry_are_counted_once_each(store):
    _, (member,) = jobs.create_job(store, "ensemble", {}, {"split": {}}, [0], 4, project="labA")
    (worker,) = _workers(store, 1)
    (item,) = admission.admit(store, Sharing(min_run=0), NOON, ttl=15).admitted
    assert jobs.claim_member(store, member, "o1", worker, "cpu", 60, 3, admission=item.admission).run
    with store.session() as s:  # its worker died: the lease lapsed
        s.execute(update(Member).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert len(recovery.reap_lapsed_members(store)) == 1
    assert recovery.reap_lapsed_members(store) == []  # a second reaper finds nothing: counted once
    (item,) = admission.admit(store, Sharing(min_run=0), NOON, ttl=15).admitted
    assert jobs.claim_member(store, member, "o2", worker, "cpu", 60, 3, admission=item.admission).run
    assert jobs.release_member(store, member, "o2", "store away", retry_in=5)
    values = counters.read_counters(store)
    assert values[("lease_reaps", "member")] == 1
    assert values[("redeliveries", "member")] == 1  # the second attempt
    assert values[("transient_retries", "member")] == 1
    assert values[("lease_reaps", "chunk")] == 0 and values[("preemptions", "member")] == 0


def test_counters_bumped_at_once_from_many_threads_lose_nothing(store):
    def bump_many():
        for _ in range(25):
            with store.session() as s:
                counters.bump(s, "resends", "chunk")

    threads = [threading.Thread(target=bump_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counters.read_counters(store)[("resends", "chunk")] == 100


def test_a_rolled_back_event_is_not_counted(store):
    try:
        with store.session() as s:
            counters.bump(s, "lease_reaps", "chunk")
            raise RuntimeError("the event's transaction failed")
    except RuntimeError:
        pass
    assert counters.read_counters(store)[("lease_reaps", "chunk")] == 0


def test_a_snapshot_says_what_runs_what_waits_where_and_how_studies_ended(store):
    _, (running, waiting_a, waiting_b) = jobs.create_job(store, "ensemble", {}, {"split": {}}, [0, 1, 2], 4,
                                                         project="labA")
    (worker,) = _workers(store, 1)
    (item,) = admission.admit(store, Sharing(min_run=0), NOON, ttl=15).admitted
    assert jobs.claim_member(store, running, "o1", worker, "cpu", 60, 3, admission=item.admission).run
    jobs.renew_lease(store, running, "o1", 60, epoch=1, total_epochs=4, step=5, steps_per_epoch=10)
    ops.create_infer_job(store, "inferjob0001", {"archive": "/a", "checkpoints": ["/m"]}, {}, "high", None)
    ops.add_studies(store, "inferjob0001", iter([ops.PlannedStudy(f"p{i}.png") for i in range(6)]
                                                + [ops.PlannedStudy("bad.png", "failed", "empty file")]), 3)
    assert ops.dispatch_chunks(store, NOON, lambda cid, prio: None) == 2

    snap = snapshot(store, worker_ttl=15)
    assert snap.jobs == {("ensemble", "running"): 1, ("infer", "queued"): 1}
    (member,) = snap.running
    assert (member.worker, member.device, member.seed) == (worker, "cpu", 0)
    assert member.progress == (0 + 0.5) / 4  # half of its first epoch
    assert snap.waiting[ADMISSION_QUEUE][0] == 2, "two members wait in the store for a worker"
    count, oldest = snap.waiting["infer.high"]
    assert count == 2 and utcnow() - timedelta(seconds=60) < oldest.replace(tzinfo=utcnow().tzinfo) <= utcnow()
    assert snap.workers_online == {"cpu": 1} and snap.worker_queues == [f"w.{worker}"]
    (job,) = snap.infer_jobs
    assert job.job == "inferjob0001"
    assert job.studies == {"done": 0, "failed": 1, "skipped": 0, "pending": 6}
