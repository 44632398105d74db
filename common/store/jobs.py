"""Job and member operations on the store: every write the queue makes goes through here.

Each function is one short transaction and safe to replay: a redelivered message, a second
worker, or a reaper in another launcher sees the row as it is and does the right thing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from sqlalchemy import func, or_, select, update

from common.store.db import Store
from common.store.models import Artifact, Attempt, EvalState, Job, Member, Result, State, utcnow


# An evaluation dispatched but not taken within this long is sent again (the message may
# have been lost with the worker that sent it); duplicates are harmless, one claim wins.
EVAL_DISPATCH_GRACE = timedelta(minutes=30)


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def create_job(store: Store, kind: str, spec: dict[str, Any], plan: dict[str, Any], seeds: Iterable[int],
               total_epochs: int = 0) -> tuple[str, list[int]]:
    """A job row and one queued member per seed; returns the job id and member ids."""
    job_id = new_job_id()
    with store.session() as s:
        job = Job(id=job_id, kind=kind, spec=spec, plan=plan)
        job.members = [Member(seed=seed, total_epochs=total_epochs) for seed in seeds]
        s.add(job)
        s.flush()
        return job_id, [m.id for m in job.members]


def fail_job(store: Store, job_id: str, reason: str) -> None:
    """Used when a job could not be enqueued at all."""
    with store.session() as s:
        job = s.get(Job, job_id)
        now = utcnow()
        job.state, job.error, job.finished_at, job.eval_state = State.FAILED.value, reason, now, EvalState.SKIPPED.value
        for m in job.members:
            if m.state == State.QUEUED.value:
                m.state, m.error, m.finished_at = State.FAILED.value, reason, now


@dataclass(frozen=True)
class Claim:
    """What a worker may do with a member message it received."""

    run: bool
    reason: str = ""
    attempt: int = 0
    job_id: str = ""
    seed: int = 0
    spec: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    gave_up: bool = False  # the redelivery cap was reached: the member is now failed
    dispatch_evaluation: bool = False  # this claim ended the job's last member
    kind: str = ""  # the job's kind: which engine runs the member


def claim_member(store: Store, member_id: int, owner: str, worker: str, device: str,
                 lease_seconds: int, max_attempts: int) -> Claim:
    """Take the lease on a member, or say why not (ended, cancelled, live elsewhere, cap)."""
    now = utcnow()
    with store.session() as s:
        member = s.get(Member, member_id)
        if member is None:
            return Claim(False, f"member {member_id} does not exist")
        job = member.job
        if State(member.state).ended:
            return Claim(False, f"member already {member.state}")
        if job.cancel_requested:
            _end_member(member, State.CANCELLED, "cancelled before it started", now)
            s.flush()
            return Claim(False, "job cancelled", job_id=job.id, dispatch_evaluation=_close_members_phase(s, job, now))
        live = member.state == State.RUNNING.value and member.lease_expires_at and member.lease_expires_at > now
        if live and member.lease_owner != owner:
            return Claim(False, f"running on {member.worker} with a live lease")
        if member.attempts >= max_attempts:
            reason = f"gave up after {member.attempts} attempts" + (f" (last: {member.error})" if member.error else "")
            _end_member(member, State.FAILED, reason, now)
            s.flush()
            return Claim(False, reason, job_id=job.id, gave_up=True,
                         dispatch_evaluation=_close_members_phase(s, job, now))
        taken = s.execute(
            update(Member)
            .where(Member.id == member_id, Member.attempts == member.attempts)
            .values(state=State.RUNNING.value, attempts=member.attempts + 1, lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_seconds), worker=worker, device=device,
                    started_at=member.started_at or now, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken != 1:
            return Claim(False, "another worker took it first")
        for old in s.scalars(select(Attempt).where(Attempt.member_id == member_id, Attempt.state == "running")):
            old.state, old.ended_at = "lost", now
        # Attempt rows number on across a resume, which gives the member a fresh budget.
        number = (s.scalar(select(func.max(Attempt.number)).where(Attempt.member_id == member_id)) or 0) + 1
        s.add(Attempt(member_id=member_id, number=number, state="running", worker=worker, device=device,
                      started_at=now))
        if job.state == State.QUEUED.value:
            job.state, job.started_at = State.RUNNING.value, now
        return Claim(True, attempt=number, job_id=job.id, seed=member.seed, spec=job.spec, plan=job.plan,
                     kind=job.kind)


def renew_lease(store: Store, member_id: int, owner: str, lease_seconds: int, **progress: Any) -> bool:
    """Heartbeat, optionally with progress fields. False: the lease is no longer ours."""
    now = utcnow()
    with store.session() as s:
        return s.execute(
            update(Member)
            .where(Member.id == member_id, Member.lease_owner == owner, Member.state == State.RUNNING.value)
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now, **progress)
            .execution_options(synchronize_session=False)
        ).rowcount == 1


def cancel_requested(store: Store, job_id: str) -> bool:
    with store.session() as s:
        return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def finish_member(store: Store, member_id: int, owner: str, state: State, *, error: str | None = None,
                  artifacts: dict[str, str] | None = None, resumed_from_epoch: int | None = None,
                  **fields: Any) -> bool:
    """Record a member's end and its artifacts in one transaction.

    Returns True when this call ended the job's last running member and so must dispatch
    the evaluation (exactly one caller gets True).
    """
    now = utcnow()
    with store.session() as s:
        member = s.get(Member, member_id)
        if member is None or member.lease_owner != owner or State(member.state).ended:
            return False
        for key, value in fields.items():
            setattr(member, key, value)
        if resumed_from_epoch:
            for attempt in member.attempt_rows:
                if attempt.state == "running":
                    attempt.start_epoch = resumed_from_epoch
        _end_member(member, state, error, now)
        for name, path in (artifacts or {}).items():
            _put_artifact(s, member.job_id, member.id, name, path)
        s.flush()
        return _close_members_phase(s, member.job, now)


def release_member(store: Store, member_id: int, owner: str, reason: str) -> bool:
    """Give a member back to the queue (a transient error; the task retries it)."""
    now = utcnow()
    with store.session() as s:
        member = s.get(Member, member_id)
        if member is None or member.lease_owner != owner:
            return False
        member.state, member.error, member.updated_at = State.QUEUED.value, reason, now
        member.lease_owner = member.lease_expires_at = None
        for attempt in member.attempt_rows:
            if attempt.state == "running":
                attempt.state, attempt.ended_at, attempt.error = "lost", now, reason
        return True


def _end_member(member: Member, state: State, error: str | None, now: datetime) -> None:
    member.state, member.error, member.finished_at, member.updated_at = state.value, error, now, now
    member.lease_owner = member.lease_expires_at = None
    for attempt in member.attempt_rows:
        if attempt.state == "running":
            attempt.state, attempt.ended_at, attempt.error = state.value, now, error


def _put_artifact(s, job_id: str, member_id: int | None, name: str, path: str) -> None:
    row = s.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
    if row is None:
        s.add(Artifact(job_id=job_id, member_id=member_id, name=name, path=path))
    else:
        row.path = path


def _close_members_phase(s, job: Job, now: datetime) -> bool:
    """When every member has ended, decide the evaluation: dispatch it, or end the job."""
    s.refresh(job)
    if job.eval_state != EvalState.PENDING.value or not all(State(m.state).ended for m in job.members):
        return False
    succeeded = [m for m in job.members if m.state == State.SUCCEEDED.value]
    if job.cancel_requested or not succeeded:
        job.eval_state = EvalState.SKIPPED.value
        job.state = State.CANCELLED.value if job.cancel_requested else State.FAILED.value
        job.error = job.error or _members_error(job)
        job.finished_at = now
        return False
    flipped = s.execute(
        update(Job).where(Job.id == job.id, Job.eval_state == EvalState.PENDING.value)
        .values(eval_state=EvalState.DISPATCHED.value, eval_lease_expires_at=now + EVAL_DISPATCH_GRACE)
        .execution_options(synchronize_session=False)
    ).rowcount
    return flipped == 1


def _members_error(job: Job) -> str | None:
    failed = [f"seed {m.seed}: {m.error}" for m in job.members if m.state == State.FAILED.value]
    return ("member(s) failed: " + "; ".join(failed)) if failed else None


@dataclass(frozen=True)
class EvaluationClaim:
    job_id: str
    spec: dict[str, Any]
    plan: dict[str, Any]
    members: list[tuple[int, int, float | None, str]]  # (member id, seed, best val loss, best checkpoint)
    kind: str = ""


def claim_evaluation(store: Store, job_id: str, lease_seconds: int) -> EvaluationClaim | None:
    """Take the job's evaluation (dispatched, or running with a lapsed lease); None: not ours."""
    now = utcnow()
    with store.session() as s:
        taken = s.execute(
            update(Job).where(Job.id == job_id)
            .where((Job.eval_state == EvalState.DISPATCHED.value)
                   | ((Job.eval_state == EvalState.RUNNING.value) & (Job.eval_lease_expires_at < now)))
            .values(eval_state=EvalState.RUNNING.value, eval_lease_expires_at=now + timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken != 1:
            return None
        job = s.get(Job, job_id)
        paths = {a.name: a.path for a in s.scalars(select(Artifact).where(Artifact.job_id == job_id))}
        members = [(m.id, m.seed, m.val_loss, paths.get(f"seed-{m.seed}/best", ""))
                   for m in job.members if m.state == State.SUCCEEDED.value]
        return EvaluationClaim(job.id, job.spec, job.plan, members, job.kind)


def record_results(store: Store, job_id: str, results: dict[str, dict[str, Any]],
                   member_ids: dict[str, int] | None = None) -> None:
    """Write every result row and end the job, in one transaction (replay-safe: upserts)."""
    now = utcnow()
    with store.session() as s:
        job = s.get(Job, job_id)
        for subject, metrics in results.items():
            row = s.scalar(select(Result).where(Result.job_id == job_id, Result.subject == subject))
            if row is None:
                s.add(Result(job_id=job_id, subject=subject, metrics=metrics,
                             member_id=(member_ids or {}).get(subject)))
            else:
                row.metrics = metrics
        job.eval_state, job.eval_lease_expires_at = EvalState.DONE.value, None
        job.error = _members_error(job)
        job.state = State.FAILED.value if job.error else State.SUCCEEDED.value
        job.finished_at = now


def fail_evaluation(store: Store, job_id: str, reason: str) -> None:
    with store.session() as s:
        job = s.get(Job, job_id)
        job.eval_state, job.eval_lease_expires_at = EvalState.DONE.value, None
        job.state, job.finished_at = State.FAILED.value, utcnow()
        job.error = "; ".join(filter(None, [_members_error(job), f"evaluation failed: {reason}"]))


def request_cancel(store: Store, job_id: str) -> Job | None:
    """Cancellation lives in the store, so it survives worker restarts; running members stop
    cooperatively at their next check, queued ones end now."""
    now = utcnow()
    with store.session() as s:
        job = s.get(Job, job_id)
        if job is None or State(job.state).ended:
            return job
        job.cancel_requested = True
        if job.kind == "infer":
            from common.store.inference import cancel_chunks

            cancel_chunks(s, job, now)
            return job
        for m in job.members:
            if m.state == State.QUEUED.value:
                _end_member(m, State.CANCELLED, "cancelled before it started", now)
        s.flush()
        _close_members_phase(s, job, now)
        return job


def resume_training_job(store: Store, job_id: str) -> list[int]:
    """Give a training job's failed and cancelled members another go: back to queued with a
    fresh attempt budget, the job reopened and its evaluation pending again. Each member resumes
    from its last checkpoint (its work folder is kept). Returns the members to enqueue; none
    when every member succeeded or the job is still running."""
    now = utcnow()
    with store.session() as s:
        job = s.get(Job, job_id)
        if job is None or not State(job.state).ended:
            return []
        again = [m for m in job.members if m.state in (State.FAILED.value, State.CANCELLED.value)]
        for m in again:
            m.state, m.attempts, m.error, m.finished_at = State.QUEUED.value, 0, None, None
            m.lease_owner = m.lease_expires_at = None
            m.updated_at = now
        if again:
            job.state, job.error, job.finished_at, job.cancel_requested = State.QUEUED.value, None, None, False
            job.eval_state, job.eval_lease_expires_at = EvalState.PENDING.value, None
        return [m.id for m in again]


@dataclass(frozen=True)
class Lapsed:
    member_id: int
    job_id: str
    seed: int
    worker: str | None


def reap_lapsed_members(store: Store, send: Callable[[int], None]) -> list[Lapsed]:
    """Members whose lease lapsed (their worker died): back to queued, and ``send`` re-enqueues.

    Each row is taken with a guarded UPDATE, so two reapers never both re-enqueue it; ``send``
    runs inside the transaction, so a broker error leaves the row for the next round.
    """
    now = utcnow()
    reaped: list[Lapsed] = []
    with store.session() as s:
        rows = s.execute(
            select(Member.id, Member.job_id, Member.seed, Member.worker)
            .where(Member.state == State.RUNNING.value, Member.lease_expires_at < now)
        ).all()
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
                send(member_id)
                reaped.append(Lapsed(member_id, job_id, seed, worker))
    return reaped


def resend_queued_members(store: Store, older_than: datetime, send: Callable[[int], None]) -> list[int]:
    """Members queued since before ``older_than`` are sent again (the caller has seen their queue
    empty, so the broker lost their messages, e.g. a Redis restart without persistence). A
    duplicate message is harmless: the claim lets only one run. ``send`` runs in the transaction."""
    now = utcnow()
    with store.session() as s:
        ids = list(s.scalars(select(Member.id).join(Job, Job.id == Member.job_id).where(
            Member.state == State.QUEUED.value, Job.cancel_requested.is_(False),
            or_(Member.updated_at.is_(None), Member.updated_at < older_than))))
        for member_id in ids:
            s.execute(update(Member).where(Member.id == member_id).values(updated_at=now)
                      .execution_options(synchronize_session=False))
            send(member_id)
        return ids


def redispatch_evaluations(store: Store, send: Callable[[str], None]) -> list[str]:
    """Evaluations dispatched but never taken, or taken by a worker that died: send again.

    ``send`` runs inside the transaction: if it fails, nothing changes and the next round retries.
    """
    now = utcnow()
    with store.session() as s:
        ids = list(s.scalars(select(Job.id).where(
            Job.eval_state.in_([EvalState.DISPATCHED.value, EvalState.RUNNING.value]),
            Job.eval_lease_expires_at < now)))
        for job_id in ids:
            s.execute(update(Job).where(Job.id == job_id)
                      .values(eval_state=EvalState.DISPATCHED.value, eval_lease_expires_at=now + EVAL_DISPATCH_GRACE)
                      .execution_options(synchronize_session=False))
            send(job_id)
        return ids
