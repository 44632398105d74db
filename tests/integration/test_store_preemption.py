"""Preemption in the store's contract, on SQLite and a real PostgreSQL: who is asked to yield,
what a yield records, and that a yield is not a failed attempt."""

from __future__ import annotations

from datetime import time, timedelta

from sqlalchemy import select, update

from medq.common.sharing.policy import Sharing
from medq.common.store import inference as ops
from medq.common.store import jobs, preemption
from medq.common.store.models import Attempt, Chunk, Member, utcnow

GRACE = timedelta(seconds=5)
NOON, NIGHT = time(12, 0), time(23, 0)


def _training(store, priority="normal", seeds=(0, 1), project="labA"):
    job_id, members = jobs.create_job(store, "ensemble", {}, {"split": {}}, list(seeds), 4, project=project,
                                      priority=priority)
    for i, member in enumerate(members):
        assert jobs.claim_member(store, member, f"owner-{member}", f"w{i}", "cpu", 60, 3).run
    return job_id, members


def _urgent(store, job_id="urgent000001", priority="high", chunks=1, age=timedelta(seconds=30), preempt=False,
            window=None):
    ops.create_infer_job(store, job_id, {"archive": "/a", "checkpoints": ["/m"], "preempt": preempt}, {}, priority,
                         window, project="hospital")
    ops.add_studies(store, job_id, (ops.PlannedStudy(f"/a/{i}.png") for i in range(chunks)), 1, None)
    with store.session() as s:
        s.execute(update(Chunk).where(Chunk.job_id == job_id).values(state="queued", updated_at=utcnow() - age))


def test_high_priority_chunks_waiting_past_the_grace_make_training_yield(store):
    _, (low_member,) = _training(store, "low", seeds=(0,))
    _training(store, "normal", seeds=(0,))
    _urgent(store, chunks=1)
    asked = preemption.preempt_for_waiting(store, Sharing(min_run=600), GRACE, NOON)
    assert [member for member, _ in asked] == [low_member]  # the low-priority member yields first
    assert "high-priority inference job urgent000001 (hospital) waiting" in asked[0][1]
    assert preemption.preempt_requested(store, low_member, f"owner-{low_member}")
    assert not preemption.preempt_requested(store, low_member, "another-owner")
    # asked once: the next round counts it as on its way and asks nobody else for that chunk
    assert preemption.preempt_for_waiting(store, Sharing(min_run=600), GRACE, NOON) == []


def test_nobody_yields_to_fresh_normal_closed_window_or_cancelled_inference(store):
    _training(store, "low")
    _urgent(store, "fresh0000001", age=timedelta(seconds=1))
    _urgent(store, "normal000001", priority="normal")  # infer.normal comes after gpu: a freed worker would not take it
    _urgent(store, "window000001", window="22:00-06:00")
    _urgent(store, "cancel000001")
    jobs.request_cancel(store, "cancel000001")
    sharing = Sharing(min_run=0)
    assert preemption.preempt_for_waiting(store, sharing, GRACE, NOON) == []
    assert len(preemption.preempt_for_waiting(store, sharing, GRACE, NIGHT)) == 1  # the window is open at 23:00


def test_a_preempting_window_takes_every_training_worker(store):
    _training(store, "high")  # even high-priority training yields to a --preempt job (its chunks go to infer.high)
    _urgent(store, "window000001", priority="high", chunks=3, preempt=True)
    assert len(preemption.preempt_for_waiting(store, Sharing(min_run=0), GRACE, NOON)) == 2


def test_a_yield_queues_the_member_again_without_spending_an_attempt(store):
    job_id, (member, _) = _training(store)
    owner = f"owner-{member}"
    assert preemption.request_preemption(store, member, "urgent work")
    assert not preemption.request_preemption(store, member, "asked twice")
    epoch = {"epoch": 2, "phase": "finetune", "train_loss": 0.5, "val_loss": 0.4, "metrics": {}, "lrs": {},
             "images_per_s": 10.0, "wall_s": 3.0, "attempt": 1}
    assert preemption.yield_member(store, member, owner, epochs=[epoch], epoch=2, step=1).queued
    assert preemption.yield_member(store, member, owner) is None  # replayed: the lease is gone
    with store.session() as s:
        row = s.get(Member, member)
        assert (row.state, row.preemptions, row.attempts, row.epoch, row.step) == ("queued", 1, 0, 2, 1)
        assert row.error == "preempted: urgent work"
        assert [a.state for a in s.scalars(select(Attempt).where(Attempt.member_id == member))] == ["preempted"]
    # on its way until claimed: no other member is asked for the same chunk meanwhile
    _urgent(store, chunks=1)
    assert preemption.preempt_for_waiting(store, Sharing(min_run=0), GRACE, NOON) == []
    claim = jobs.claim_member(store, member, "owner-next", "w9", "cpu", 60, 3)
    assert claim.run and claim.attempt == 2
    assert not preemption.preempt_requested(store, member, "owner-next")
    with store.session() as s:
        assert s.get(Member, member).preempt_requested_at is None  # the request was for the attempt before


def test_a_cancel_that_lands_while_a_member_yields_ends_it(store):
    job_id, (member,) = _training(store, seeds=(0,))
    assert preemption.request_preemption(store, member, "urgent work", owner=f"owner-{member}")
    jobs.request_cancel(store, job_id)
    yielded = preemption.yield_member(store, member, f"owner-{member}")
    assert not yielded.queued
    with store.session() as s:
        assert s.get(Member, member).state == "cancelled"


def test_a_request_names_the_attempt_it_is_for(store):
    _, (member,) = _training(store, seeds=(0,))
    assert preemption.request_preemption(store, member, "stale", owner="an-attempt-before") is None
    assert preemption.request_preemption(store, member, "now", owner=f"owner-{member}") is not None


def test_min_run_protects_a_member_after_its_preemption(store):
    _, (member,) = _training(store, "normal", seeds=(0,))
    with store.session() as s:
        s.get(Member, member).preemptions = 1  # it yielded once and has just started again
    _urgent(store)
    assert preemption.preempt_for_waiting(store, Sharing(min_run=600), GRACE, NOON) == []
    with store.session() as s:
        for attempt in s.scalars(select(Attempt).where(Attempt.member_id == member)):
            attempt.started_at = utcnow() - timedelta(seconds=601)
    assert [m for m, _ in preemption.preempt_for_waiting(store, Sharing(min_run=600), GRACE, NOON)] == [member]


def test_a_member_that_yielded_to_training_does_not_hold_back_urgent_inference(store):
    """A yield for waiting training is not on its way to an inference chunk: the chunk still gets a
    member of its own."""
    _, (yielded,) = _training(store, "low", seeds=(0,), project="labB")
    _, (other,) = _training(store, "normal", seeds=(1,))
    with store.session() as s:
        s.execute(update(Member).where(Member.id == yielded).values(
            preempt_requested_at=utcnow(), preempt_reason="training waiting", preempt_for="training"))
    assert preemption.yield_member(store, yielded, f"owner-{yielded}").queued  # waits in the store now
    _urgent(store, chunks=1)
    asked = preemption.preempt_for_waiting(store, Sharing(min_run=600), GRACE, NOON)
    assert [member for member, _ in asked] == [other]
