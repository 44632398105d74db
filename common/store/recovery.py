"""The reaper's repairs: work whose worker died, messages the broker lost, jobs left open.

Outbox order everywhere: a row is changed and committed first, and only then is its message
sent, so a worker that receives it always finds the row as the message says (a message sent
inside the transaction could be claimed before the commit, and the late commit would then
overwrite the claim). A send that fails after the commit leaves the row queued with no message
on the broker; the resend sweep (``resend_queued_members``, ``inference.resend_queued_chunks``)
finds it once its queue is empty. Duplicates are harmless: a claim lets only one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from sqlalchemy import and_, exists, or_, select, update

from common.store.db import Store
from common.store.jobs import EVAL_DISPATCH_GRACE, close_members_phase
from common.store.locking import locked_job
from common.store.models import Attempt, EvalState, Job, Member, State, utcnow

OPEN_JOB = (State.QUEUED.value, State.RUNNING.value)


@dataclass(frozen=True)
class Lapsed:
    member_id: int
    job_id: str
    seed: int
    worker: str | None


def reap_lapsed_members(store: Store, send: Callable[[int], None]) -> list[Lapsed]:
    """Members whose lease lapsed (their worker died): back to queued, then ``send`` re-enqueues
    each. Each row is taken with a guarded UPDATE, so two reapers never both re-enqueue it."""
    now = utcnow()
    reaped: list[Lapsed] = []
    with store.session() as s:
        rows = s.execute(select(Member.id, Member.job_id, Member.seed, Member.worker)
                         .where(Member.state == State.RUNNING.value, Member.lease_expires_at < now)).all()
        for member_id, job_id, seed, worker in rows:
            taken = s.execute(
                update(Member).where(Member.id == member_id, Member.state == State.RUNNING.value,
                                     Member.lease_expires_at < now)
                .values(state=State.QUEUED.value, lease_owner=None, lease_expires_at=None,
                        error=f"lease lapsed on {worker}", updated_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            if taken:
                s.execute(update(Attempt).where(Attempt.member_id == member_id, Attempt.state == "running")
                          .values(state="lost", ended_at=now, error=f"lease lapsed on {worker}")
                          .execution_options(synchronize_session=False))
                reaped.append(Lapsed(member_id, job_id, seed, worker))
    for item in reaped:
        send(item.member_id)
    return reaped


def resend_queued_members(store: Store, older_than: datetime, send: Callable[[int], None]) -> list[int]:
    """Members of open jobs queued (sent) since before ``older_than`` are sent again: the caller
    has seen their queue empty, so the broker lost their messages (a Redis restart without
    persistence, a send that failed after its commit)."""
    now = utcnow()
    with store.session() as s:
        sent_before = or_(Member.updated_at < older_than,
                          and_(Member.updated_at.is_(None), Job.created_at < older_than))  # rows of older versions
        ids = list(s.scalars(select(Member.id).join(Job, Job.id == Member.job_id).where(
            Member.state == State.QUEUED.value, Job.state.in_(OPEN_JOB), Job.cancel_requested.is_(False),
            sent_before)))
        if ids:
            s.execute(update(Member).where(Member.id.in_(ids)).values(updated_at=now)
                      .execution_options(synchronize_session=False))
    for member_id in ids:
        send(member_id)
    return ids


def redispatch_evaluations(store: Store, send: Callable[[str], None],
                           queue_empty_since: datetime | None = None) -> list[str]:
    """Evaluations taken by a worker that died (lease lapsed), or dispatched and never taken: sent
    again. "Never taken" means longer than the dispatch grace, or, when the caller has seen the
    training queue empty (``queue_empty_since``: dispatched before this), since before then."""
    now = utcnow()
    dispatched_before = now - EVAL_DISPATCH_GRACE if queue_empty_since is None else queue_empty_since
    with store.session() as s:
        ids = list(s.scalars(select(Job.id).where(or_(
            and_(Job.eval_state == EvalState.RUNNING.value, Job.eval_lease_expires_at < now),
            and_(Job.eval_state == EvalState.DISPATCHED.value,
                 Job.eval_lease_expires_at < dispatched_before + EVAL_DISPATCH_GRACE)))))
        if ids:
            s.execute(update(Job).where(Job.id.in_(ids))
                      .values(eval_state=EvalState.DISPATCHED.value, eval_lease_owner=None,
                              eval_lease_expires_at=now + EVAL_DISPATCH_GRACE)
                      .execution_options(synchronize_session=False))
    for job_id in ids:
        send(job_id)
    return ids


def close_stalled_jobs(store: Store, send_evaluation: Callable[[str], None]) -> list[str]:
    """Belt and braces: a training job whose members have all ended but which is still open and
    unevaluated (a finisher died between its commit and its message, or a store written by an
    older version) is closed now: its evaluation dispatched, or the job ended. Returns its ids."""
    now = utcnow()
    unfinished = exists().where(Member.job_id == Job.id, Member.state.in_(OPEN_JOB))
    with store.session() as s:
        ids = list(s.scalars(select(Job.id).where(Job.kind != "infer", Job.state.in_(OPEN_JOB),
                                                  Job.eval_state == EvalState.PENDING.value, ~unfinished)))
    repaired, dispatch = [], []
    for job_id in ids:
        with store.session() as s:
            job = locked_job(s, job_id)
            if job is None or job.eval_state != EvalState.PENDING.value:
                continue
            if close_members_phase(s, job, now):
                dispatch.append(job_id)
            repaired.append(job_id)
    for job_id in dispatch:
        send_evaluation(job_id)
    return repaired
