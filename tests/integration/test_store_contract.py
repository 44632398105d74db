"""One contract, run against the real SQLite store and a real PostgreSQL server."""

from __future__ import annotations

import multiprocessing
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from medq.common.store import Attempt, Job, Member, Result, Store
from medq.common.store import evaluation, jobs, recovery
from medq.common.store.models import utcnow
from medq.common.store.migrate import HEAD, script_head
from medq.common.store.models import Base


def _job(store, seeds=(0, 1)):
    return jobs.create_job(store, "ensemble", {"loss": "mse"}, {"data_dir": "/d", "split": {}}, seeds, total_epochs=4)


def test_migrations_match_models(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    assert script_head() == HEAD == store.schema_version()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_a_live_lease_keeps_a_duplicate_message_away(store):
    job_id, (m0, _) = _job(store)
    first = jobs.claim_member(store, m0, "owner-a", "w1", "cpu", lease_seconds=60, max_attempts=3)
    assert first.run and first.attempt == 1 and first.job_id == job_id
    duplicate = jobs.claim_member(store, m0, "owner-b", "w2", "cpu", lease_seconds=60, max_attempts=3)
    assert not duplicate.run and "live lease" in duplicate.reason
    with store.session() as s:
        assert s.get(Job, job_id).state == "running"
        assert s.get(Member, m0).worker == "w1"


def test_evaluation_is_dispatched_exactly_once_when_the_last_member_ends(store):
    job_id, (m0, m1) = _job(store)
    for m, owner in ((m0, "a"), (m1, "b")):
        assert jobs.claim_member(store, m, owner, "w", "cpu", 60, 3).run
    assert jobs.finish_member(store, m0, "a", jobs.State.SUCCEEDED, val_loss=0.5) is False
    assert jobs.finish_member(store, m1, "b", jobs.State.FAILED, error="NaN loss at epoch 2") is True
    assert jobs.finish_member(store, m1, "b", jobs.State.FAILED, error="again") is False  # replay
    claim = evaluation.claim_evaluation(store, job_id, "e1", 60)
    assert [seed for _, seed, _, _ in claim.members] == [0]  # only the member that succeeded
    assert evaluation.claim_evaluation(store, job_id, "e2", 60) is None
    results = {"seed-0": {"mean_error_px": 3.0}, "ensemble-mean": {"mean_error_px": 2.0}}
    assert not evaluation.record_results(store, job_id, "e2", results)  # not the owner: nothing written
    assert evaluation.record_results(store, job_id, "e1", results)
    assert not evaluation.record_results(store, job_id, "e1", results)  # a replay after the end
    with store.session() as s:
        job = s.get(Job, job_id)
        assert job.state == "failed" and "seed 1: NaN loss at epoch 2" in job.error
        assert s.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id)) == 2


def test_a_lapsed_lease_is_reaped_once_and_the_member_resumes(store):
    job_id, (m0, _) = _job(store)
    assert jobs.claim_member(store, m0, "dead", "w1", "cpu", lease_seconds=-1, max_attempts=3).run
    jobs.renew_lease(store, m0, "dead", -1, epoch=2)  # progress it made before dying
    assert [x.member_id for x in recovery.reap_lapsed_members(store)] == [m0]
    assert recovery.reap_lapsed_members(store) == []  # a second reaper finds nothing
    with store.session() as s:  # waiting for the dispatcher to admit it again
        assert (s.get(Member, m0).state, s.get(Member, m0).admitted_at) == ("queued", None)
    again = jobs.claim_member(store, m0, "alive", "w2", "cpu", 60, 3)
    assert again.run and again.attempt == 2
    jobs.finish_member(store, m0, "alive", jobs.State.SUCCEEDED, resumed_from_epoch=2)
    with store.session() as s:
        attempts = s.scalars(select(Attempt).where(Attempt.member_id == m0).order_by(Attempt.number)).all()
        assert [(a.state, a.worker, a.start_epoch) for a in attempts] == [("lost", "w1", 0), ("succeeded", "w2", 2)]


def test_the_redelivery_cap_fails_a_poison_member(store):
    job_id, (m0,) = _job(store, seeds=(0,))
    for _ in range(2):
        assert jobs.claim_member(store, m0, "x", "w", "cpu", lease_seconds=-1, max_attempts=2).run
        recovery.reap_lapsed_members(store)
    last = jobs.claim_member(store, m0, "x", "w", "cpu", 60, max_attempts=2)
    assert not last.run and last.gave_up and "gave up after 2 attempts" in last.reason
    with store.session() as s:
        assert s.get(Member, m0).state == "failed"
        assert s.get(Job, job_id).state == "failed"


def test_cancel_ends_queued_members_now_and_is_seen_by_running_ones(store):
    job_id, (m0, m1) = _job(store)
    assert jobs.claim_member(store, m0, "a", "w", "cpu", 60, 3).run
    jobs.request_cancel(store, job_id)
    assert jobs.cancel_requested(store, job_id)
    with store.session() as s:
        assert s.get(Member, m1).state == "cancelled"
        assert s.get(Job, job_id).state == "running"
    # A redelivered message for the cancelled member does nothing.
    assert not jobs.claim_member(store, m1, "b", "w", "cpu", 60, 3).run
    assert jobs.finish_member(store, m0, "a", jobs.State.CANCELLED) is False
    with store.session() as s:
        assert s.get(Job, job_id).state == "cancelled"


def _hammer(url: str, member_id: int, owner: str, n: int, out) -> None:
    store = Store(url)
    errors = 0
    for i in range(n):
        try:
            jobs.renew_lease(store, member_id, owner, 60, step=i, train_loss=float(i))
            jobs.cancel_requested(store, "nope")
        except Exception as exc:  # the failure this test is about
            errors += 1
            out.put(repr(exc))
    out.put(errors)


def test_several_processes_write_to_sqlite_at_once_without_database_is_locked(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    store = Store(url)
    store.ensure_schema()
    _, members = _job(store, seeds=range(4))
    for i, m in enumerate(members):
        assert jobs.claim_member(store, m, f"o{i}", "w", "cpu", 60, 3).run
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(url, m, f"o{i}", 150, out)) for i, m in enumerate(members)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    reported = [out.get(timeout=5) for _ in procs]
    assert reported == [0, 0, 0, 0], reported
    with store.session() as s:
        assert {m.step for m in s.scalars(select(Member))} == {149}


def test_a_claim_retried_after_its_commit_is_the_same_claim(store):
    """The connection died during the commit, so the task tried again: no second attempt is burnt."""
    job_id, (m0,) = _job(store, seeds=(0,))
    first = jobs.claim_member(store, m0, "o", "w", "cpu", 60, 3)
    again = jobs.claim_member(store, m0, "o", "w", "cpu", 60, 3)
    assert first.run and again.run and again.attempt == first.attempt == 1
    assert jobs.finish_member(store, m0, "o", jobs.State.SUCCEEDED)
    assert evaluation.claim_evaluation(store, job_id, "e", 60) is not None
    assert evaluation.claim_evaluation(store, job_id, "e", 60) is not None  # the same owner again
    assert evaluation.claim_evaluation(store, job_id, "other", 60) is None
    with store.session() as s:
        assert s.get(Member, m0).attempts == 1
        assert s.scalar(select(func.count()).select_from(Attempt).where(Attempt.member_id == m0)) == 1
