"""Races on the store, run many rounds each on SQLite and a real PostgreSQL: the decisions
"this job is complete" and "this row is mine" are taken exactly once under any interleaving.

Each round starts its contenders on a barrier, so they hit the database within microseconds of
each other (as two workers whose members were cancelled at once did: 17 µs apart)."""

from __future__ import annotations

import os
import threading
from datetime import time, timedelta

import pytest
from sqlalchemy import select, update

from medq.common.store import Job, Member, jobs, recovery
from medq.common.store import inference as ops
from medq.common.store.models import Chunk, EvalState, utcnow

pytestmark = pytest.mark.faults
ROUNDS = int(os.environ.get("MEDQ_RACE_ROUNDS", "40"))  # `MEDQ_RACE_ROUNDS=1000 pytest tests/faults -k races`
OPEN = time(12, 0)


def at_once(*calls):
    """Run the calls in threads released together; their results in order (an exception re-raised)."""
    barrier, results = threading.Barrier(len(calls)), [None] * len(calls)

    def run(i, call):
        barrier.wait()
        try:
            results[i] = call()
        except BaseException as exc:  # noqa: BLE001  (handed back to the test)
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def _running_job(store, seeds=2):
    job_id, members = jobs.create_job(store, "ensemble", {}, {"split": {}}, range(seeds), 2)
    for m in members:
        assert jobs.claim_member(store, m, f"o{m}", "w", "cpu", 60, 3).run
    return job_id, members


def _job(store, job_id):
    with store.session() as s:
        return s.get(Job, job_id)


def test_the_last_two_members_ending_at_once_dispatch_the_evaluation_exactly_once(store, fault_log):
    fault_log.trying(f"two last members ending at once, {ROUNDS} rounds on {store.engine.dialect.name}")
    for _ in range(ROUNDS):
        job_id, members = _running_job(store)
        ended = at_once(*(lambda m=m: jobs.finish_member(store, m, f"o{m}", jobs.State.SUCCEEDED) for m in members))
        assert sorted(ended) == [False, True]
        assert _job(store, job_id).eval_state == EvalState.DISPATCHED.value
    fault_log.survived()


def test_members_cancelled_at_once_on_two_workers_end_the_job(store, fault_log):
    fault_log.trying(f"two members cancelled at once, {ROUNDS} rounds on {store.engine.dialect.name}")
    for _ in range(ROUNDS):
        job_id, members = _running_job(store)
        jobs.request_cancel(store, job_id)
        at_once(*(lambda m=m: jobs.finish_member(store, m, f"o{m}", jobs.State.CANCELLED) for m in members))
        job = _job(store, job_id)
        assert (job.state, job.eval_state) == ("cancelled", EvalState.SKIPPED.value)
    fault_log.survived()


def test_a_cancel_racing_the_last_members_never_leaves_the_job_open(store):
    for i in range(ROUNDS):
        job_id, members = _running_job(store, seeds=3)
        jobs.finish_member(store, members[0], f"o{members[0]}", jobs.State.SUCCEEDED)
        state = jobs.State.SUCCEEDED if i % 2 else jobs.State.CANCELLED
        at_once(lambda: jobs.request_cancel(store, job_id),
                *(lambda m=m: jobs.finish_member(store, m, f"o{m}", state) for m in members[1:]))
        job = _job(store, job_id)
        assert job.eval_state in (EvalState.DISPATCHED.value, EvalState.SKIPPED.value)
        assert job.state == "cancelled" or job.eval_state == EvalState.DISPATCHED.value


def test_one_member_claimed_by_four_workers_at_once_runs_once(store):
    for _ in range(ROUNDS // 4):
        _, (m0,) = jobs.create_job(store, "ensemble", {}, {"split": {}}, [0], 2)
        claims = at_once(*(lambda k=k: jobs.claim_member(store, m0, f"w{k}", f"w{k}", "cpu", 60, 3)
                           for k in range(4)))
        assert sum(c.run for c in claims) == 1


def _infer_job(store, job_id, chunks=2):
    ops.create_infer_job(store, job_id, {"archive": "/a", "checkpoints": ["/m"]}, {}, "normal", None)
    ops.add_studies(store, job_id, iter([ops.PlannedStudy(f"s{i}.png") for i in range(chunks)]), 1)
    with store.session() as s:
        return list(s.scalars(select(Chunk.id).where(Chunk.job_id == job_id).order_by(Chunk.index)))


def test_the_last_two_chunks_ending_at_once_end_the_inference_job(store, fault_log):
    fault_log.trying(f"two last chunks ending at once, {ROUNDS} rounds on {store.engine.dialect.name}")
    for i in range(ROUNDS):
        job_id = f"inf{i:09d}"
        chunk_ids = _infer_job(store, job_id)
        ops.dispatch_chunks(store, OPEN, lambda c, p: None, job_id=job_id)
        for c in chunk_ids:
            assert ops.claim_chunk(store, c, f"o{c}", "w", "cpu", 60, 3, OPEN).run
        at_once(*(lambda c=c: ops.finish_chunk(store, c, f"o{c}", "succeeded") for c in chunk_ids))
        assert _job(store, job_id).state == "succeeded"
    fault_log.survived()


def test_two_launchers_dispatching_at_once_send_each_chunk_once(store):
    for i in range(ROUNDS // 4):
        job_id = f"dsp{i:09d}"
        chunk_ids = _infer_job(store, job_id, chunks=6)
        sent: list[int] = []
        lock = threading.Lock()

        def send(chunk_id, _priority):
            with lock:
                sent.append(chunk_id)

        at_once(lambda: ops.dispatch_chunks(store, OPEN, send, job_id=job_id),
                lambda: ops.dispatch_chunks(store, OPEN, send, job_id=job_id))
        assert sorted(sent) == chunk_ids


def test_the_reaper_closes_a_job_whose_members_all_ended_but_which_was_left_open(store):
    """A store left so by an earlier version (or a finisher that died between commit and send)."""
    job_id, members = _running_job(store)
    with store.session() as s:
        s.execute(update(Member).where(Member.job_id == job_id).values(state="succeeded", lease_owner=None))
    assert _job(store, job_id).state == "running"
    sent: list[str] = []
    assert recovery.close_stalled_jobs(store, sent.append) == [job_id]
    assert sent == [job_id] and _job(store, job_id).eval_state == EvalState.DISPATCHED.value
    assert recovery.close_stalled_jobs(store, sent.append) == []  # once


def test_the_reaper_closes_an_inference_job_whose_chunks_all_ended(store):
    chunk_ids = _infer_job(store, "stalled00001")
    with store.session() as s:
        s.execute(update(Chunk).where(Chunk.id.in_(chunk_ids)).values(state="succeeded"))
        s.execute(update(Job).where(Job.id == "stalled00001").values(state="running"))
    assert recovery.close_stalled_infer_jobs(store) == ["stalled00001"]
    assert _job(store, "stalled00001").state == "succeeded"


def test_an_evaluation_whose_worker_died_is_sent_again_after_its_lease_not_ten(store):
    from medq.common.store import evaluation

    job_id, members = _running_job(store, seeds=1)
    assert jobs.finish_member(store, members[0], f"o{members[0]}", jobs.State.SUCCEEDED)
    assert evaluation.claim_evaluation(store, job_id, "dead", lease_seconds=-1) is not None
    sent: list[str] = []
    assert recovery.redispatch_evaluations(store, lambda job_id, kind: sent.append(job_id)) == [job_id]
    assert evaluation.claim_evaluation(store, job_id, "alive", 60) is not None
    assert not evaluation.renew_evaluation_lease(store, job_id, "dead", 60)  # the dead one's lease is gone
    assert evaluation.record_results(store, job_id, "alive", {"seed-0": {"mean_error_px": 1.0}})


def test_a_dispatched_evaluation_missing_from_an_empty_queue_is_sent_again(store):
    job_id, members = _running_job(store, seeds=1)
    jobs.finish_member(store, members[0], f"o{members[0]}", jobs.State.SUCCEEDED)
    sent: list[str] = []
    assert recovery.redispatch_evaluations(store, lambda job_id, kind: sent.append(job_id)) == []  # within the grace: it may be on its way
    assert recovery.redispatch_evaluations(store, lambda job_id, kind: sent.append(job_id), queue_empty_since=utcnow() + timedelta(seconds=1)) \
        == [job_id]


def test_a_member_whose_worker_died_after_the_cancel_ends_cancelled_not_requeued(store):
    """Running, cancelled, then its worker SIGKILLed: re-queuing it would leave the job open for
    good if that message were lost (a cancelled job's queued rows are never sent again)."""
    job_id, (m0,) = jobs.create_job(store, "ensemble", {}, {"split": {}}, [0], 2)
    assert jobs.claim_member(store, m0, "dead", "w", "cpu", lease_seconds=-1, max_attempts=3).run
    jobs.request_cancel(store, job_id)
    reaped = recovery.reap_lapsed_members(store)
    assert [r.cancelled for r in reaped] == [True]
    job = _job(store, job_id)
    assert (job.state, job.eval_state) == ("cancelled", EvalState.SKIPPED.value)


def test_a_cancelled_job_left_with_a_queued_member_is_closed_by_the_reaper(store):
    job_id, (m0, m1) = jobs.create_job(store, "ensemble", {}, {"split": {}}, [0, 1], 2)
    with store.session() as s:  # as an older version left it: cancel requested, one member still queued
        s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True, state="running"))
        s.execute(update(Member).where(Member.id == m0).values(state="cancelled"))
    assert recovery.close_stalled_jobs(store, lambda _: None) == [job_id]
    assert _job(store, job_id).state == "cancelled"


def test_an_inference_job_cancelled_while_it_was_planned_or_left_with_queued_chunks_is_closed(store):
    ops.create_infer_job(store, "plan00000001", {"archive": "/a", "checkpoints": ["/m"]}, {}, "normal", None)
    jobs.request_cancel(store, "plan00000001")  # before its chunks exist
    ops.add_studies(store, "plan00000001", iter([ops.PlannedStudy("a.png"), ops.PlannedStudy("b.png")]), 1)
    assert _job(store, "plan00000001").state == "cancelled"
    chunk_ids = _infer_job(store, "lost00000001")
    ops.dispatch_chunks(store, OPEN, lambda c, p: None, job_id="lost00000001")
    with store.session() as s:
        s.execute(update(Job).where(Job.id == "lost00000001").values(cancel_requested=True))
    assert recovery.close_stalled_infer_jobs(store) == ["lost00000001"]
    assert _job(store, "lost00000001").state == "cancelled"
    with store.session() as s:
        assert set(s.scalars(select(Chunk.state).where(Chunk.id.in_(chunk_ids)))) == {"cancelled"}
