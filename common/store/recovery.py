"""The reaper's repairs: work whose worker died, messages the broker lost, jobs left open.

Outbox order everywhere: a row is changed and committed first, and only then is its message
sent, so a worker that receives it always finds the row as the message says (a message sent
inside the transaction could be claimed before the commit, and the late commit would then
overwrite the claim). A send that fails after the commit leaves the row queued with no message
on the broker; the resend sweep (``resend_queued_chunks``; members: the lapse of their
admission, common/store/admission.py) finds it. Duplicates are harmless: a claim lets only one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from sqlalchemy import and_, exists, or_, select, update

from medq.common.specs import INFER_KIND, REPORT_KIND
from medq.common.store.db import Store
from medq.common.store.jobs import EVAL_DISPATCH_GRACE, cancel_reason, close_members_phase, end_member
from medq.common.store.locking import each_job_locked
from medq.common.store.inference import CHUNK_ENDED, ChunkRef, cancel_chunks, close_job
from medq.common.store.models import Attempt, Chunk, EvalState, Job, Member, State, utcnow
from medq.common.store.counters import bump

OPEN_JOB = (State.QUEUED.value, State.RUNNING.value)


@dataclass(frozen=True)
class Lapsed:
    member_id: int
    job_id: str
    seed: int
    worker: str | None
    cancelled: bool = False  # its job was being cancelled: ended, not sent again


def reap_lapsed_members(store: Store) -> list[Lapsed]:
    """Members whose lease lapsed (their worker died): back to queued, waiting for the admission
    dispatcher (common/store/admission.py) to give them a worker again. Each row is taken with
    a guarded UPDATE under its job's lock, so two reapers never both reap it and a late
    heartbeat keeps its member."""
    now = utcnow()
    lapsed = (Member.state == State.RUNNING.value) & (Member.lease_expires_at < now)
    with store.session() as s:
        job_ids = list(s.scalars(select(Member.job_id).where(lapsed).distinct()))

    def reap(s, job) -> list[Lapsed]:
        reaped = []
        # a job being cancelled: its member ends now instead of going back to a queue
        state = State.CANCELLED if job.cancel_requested else State.QUEUED
        for member_id, seed, worker in s.execute(select(Member.id, Member.seed, Member.worker)
                                                 .where(Member.job_id == job.id, lapsed)).all():
            reason = f"lease lapsed on {worker}" + (" while it was being cancelled" if job.cancel_requested else "")
            ended = dict(finished_at=now) if job.cancel_requested else {}
            if s.execute(update(Member).where(Member.id == member_id, lapsed)
                         .values(state=state.value, lease_owner=None, lease_expires_at=None, error=reason,
                                 updated_at=now, admitted_to=None, admitted_at=None, **ended).execution_options(synchronize_session=False)).rowcount:
                s.execute(update(Attempt).where(Attempt.member_id == member_id, Attempt.state == "running")
                          .values(state="lost", ended_at=now, error=reason)
                          .execution_options(synchronize_session=False))
                reaped.append(Lapsed(member_id, job.id, seed, worker, cancelled=job.cancel_requested))
                bump(s, "lease_reaps", "member")
        if job.cancel_requested:
            close_members_phase(s, job, now)
        return reaped

    return each_job_locked(store, job_ids, reap)


def redispatch_evaluations(store: Store, send: Callable[[str, str], None],
                           queue_empty_since: datetime | None = None, reports: bool | None = None) -> list[str]:
    """Evaluations (and reports: a report job's one task is leased the same way) taken by a
    worker that died (lease lapsed), or dispatched and never taken: sent again, as
    ``send(job_id, kind)``. ``reports``: True for report jobs only, False for training jobs only
    (each has its own queue to look at), None for both. "Never taken" means longer than the dispatch grace, or, when the caller has seen the
    training queue empty (``queue_empty_since``: dispatched before this), since before then."""
    now = utcnow()
    dispatched_before = now - EVAL_DISPATCH_GRACE if queue_empty_since is None else queue_empty_since
    lost = or_(and_(Job.eval_state == EvalState.RUNNING.value, Job.eval_lease_expires_at < now),
               and_(Job.eval_state == EvalState.DISPATCHED.value,
                    Job.eval_lease_expires_at < dispatched_before + EVAL_DISPATCH_GRACE))
    if reports is not None:
        lost = and_(lost, (Job.kind == REPORT_KIND) if reports else (Job.kind != REPORT_KIND))
    with store.session() as s:
        job_ids = list(s.scalars(select(Job.id).where(lost)))

    def mark(s, job) -> list[str]:
        if not s.scalar(select(Job.id).where(Job.id == job.id, lost)):  # taken meanwhile
            return []
        job.eval_state, job.eval_lease_owner = EvalState.DISPATCHED.value, None
        job.eval_lease_expires_at = now + EVAL_DISPATCH_GRACE
        bump(s, "resends", "evaluation")
        return [(job.id, job.kind)]

    marked = each_job_locked(store, job_ids, mark)
    for job_id, kind in marked:
        send(job_id, kind)
    return [job_id for job_id, _ in marked]


def close_stalled_jobs(store: Store, send_evaluation: Callable[[str], None]) -> list[str]:
    """Belt and braces: a training job left open with nothing running that could close it is
    closed now. Either every member has ended (a finisher died between its commit and its
    message, or a store written by an older version), or the job is being cancelled and its
    queued members' messages were lost (a broker restart): those end cancelled. Its evaluation is
    dispatched, or the job ends. Returns the ids repaired."""
    now = utcnow()
    running = exists().where(Member.job_id == Job.id, Member.state == State.RUNNING.value)
    queued = exists().where(Member.job_id == Job.id, Member.state == State.QUEUED.value)
    with store.session() as s:
        ids = list(s.scalars(select(Job.id).where(Job.kind != INFER_KIND, Job.state.in_(OPEN_JOB),
                                                  Job.eval_state == EvalState.PENDING.value, ~running,
                                                  or_(~queued, Job.cancel_requested.is_(True)))))

    def close(s, job) -> list[tuple[str, bool]]:
        if job.eval_state != EvalState.PENDING.value or State(job.state).ended:
            return []
        members = list(s.scalars(select(Member).where(Member.job_id == job.id)))
        if any(m.state == State.RUNNING.value for m in members) or (
                not job.cancel_requested and any(m.state == State.QUEUED.value for m in members)):
            return []  # something started meanwhile
        for m in members:
            if m.state == State.QUEUED.value:
                end_member(m, State.CANCELLED, cancel_reason(m), now)
        return [(job.id, close_members_phase(s, job, now))]

    closed = each_job_locked(store, ids, close)
    for job_id, dispatch in closed:
        if dispatch:
            send_evaluation(job_id)
    return [job_id for job_id, _ in closed]


# --- inference chunks ---------------------------------------------------------------------


def reap_lapsed_chunks(store: Store, send: Callable[[int, str], None]) -> list[int]:
    """Chunks whose lease lapsed (their worker died): queued again under their job's lock, sent
    after the commit."""
    now = utcnow()
    lapsed = (Chunk.state == "running") & (Chunk.lease_expires_at < now)
    with store.session() as s:
        job_ids = list(s.scalars(select(Chunk.job_id).where(lapsed).distinct()))

    def reap(s, job) -> list[tuple[int, str]]:
        if job.cancel_requested:  # a job being cancelled: its lapsed chunks end instead
            bump(s, "lease_reaps", "chunk", s.execute(
                update(Chunk).where(Chunk.job_id == job.id, lapsed)
                .values(state=State.CANCELLED.value, lease_owner=None, lease_expires_at=None, finished_at=now,
                        updated_at=now).execution_options(synchronize_session=False)).rowcount)
            close_job(s, job, now)
            return []
        reaped = []
        for chunk_id, index, worker in s.execute(select(Chunk.id, Chunk.index, Chunk.worker)
                                                 .where(Chunk.job_id == job.id, lapsed)).all():
            if s.execute(update(Chunk).where(Chunk.id == chunk_id, lapsed)
                         .values(state="queued", lease_owner=None, lease_expires_at=None,
                                 error=f"lease lapsed on {worker}", updated_at=now)
                         .execution_options(synchronize_session=False)).rowcount:
                reaped.append((ChunkRef(chunk_id, job.id, index), job.priority or "normal"))
                bump(s, "lease_reaps", "chunk")
        return reaped

    reaped = each_job_locked(store, job_ids, reap)
    for chunk_id, priority in reaped:
        send(chunk_id, priority)
    return [chunk_id for chunk_id, _ in reaped]


def resend_queued_chunks(store: Store, priority: str, older_than: datetime,
                         send: Callable[[int, str], None]) -> list[int]:
    """Chunks of open jobs of ``priority`` queued since before ``older_than`` are sent again (the
    caller has seen their queue empty: the broker lost the messages). A duplicate is harmless.
    A queued chunk with no time of sending (a row an older medq wrote) is not "long ago": it is
    stamped now, and waits its resend time from here like one just sent."""
    now = utcnow()
    waiting = (Chunk.state == "queued") & Chunk.updated_at.is_not(None) & (Chunk.updated_at < older_than)
    with store.session() as s:
        s.execute(update(Chunk).where(Chunk.state == "queued", Chunk.updated_at.is_(None)).values(updated_at=now)
                  .execution_options(synchronize_session=False))
    with store.session() as s:
        job_ids = list(s.scalars(select(Chunk.job_id).join(Job, Job.id == Chunk.job_id).where(
            waiting, Job.priority == priority, Job.state.in_(OPEN_JOB),
            Job.cancel_requested.is_(False)).distinct()))

    def mark(s, job) -> list[int]:
        if State(job.state).ended or job.cancel_requested:
            return []
        ids = [ChunkRef(chunk_id, job.id, index) for chunk_id, index in s.execute(
            update(Chunk).where(Chunk.job_id == job.id, waiting).values(updated_at=now)
            .returning(Chunk.id, Chunk.index).execution_options(synchronize_session=False)).all()]
        bump(s, "resends", "chunk", len(ids))
        return ids

    ids = each_job_locked(store, job_ids, mark)
    for chunk_id in ids:
        send(chunk_id, priority)
    return ids


def close_stalled_infer_jobs(store: Store) -> list[str]:
    """Belt and braces: an inference job left open with nothing running that could close it (its
    chunks have all ended, or it is being cancelled and its queued chunks' messages were lost) is
    closed now, as its last chunk would have closed it. Returns the ids repaired."""
    now = utcnow()
    unfinished = exists().where(Chunk.job_id == Job.id, Chunk.state.not_in(CHUNK_ENDED))
    running = exists().where(Chunk.job_id == Job.id, Chunk.state == "running")
    any_chunk = exists().where(Chunk.job_id == Job.id)
    with store.session() as s:
        ids = list(s.scalars(select(Job.id).where(Job.kind == INFER_KIND, Job.state.in_(OPEN_JOB), any_chunk,
                                                  or_(~unfinished, and_(Job.cancel_requested.is_(True), ~running)))))

    def close(s, job) -> list[str]:
        if State(job.state).ended:
            return []
        if job.cancel_requested:
            cancel_chunks(s, job, now)  # waiting and queued ones end; running ones stop at their next batch
        else:
            close_job(s, job, now)
        return [job.id] if State(job.state).ended else []

    return each_job_locked(store, ids, close)
