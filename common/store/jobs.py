"""Job and member operations on the store: every write the queue makes goes through here.

Each function is one short transaction and safe to replay: a redelivered message, a second
worker, or a reaper in another launcher sees the row as it is and does the right thing. A
transaction that may end a member first locks its job's row (``common/store/locking.py``), so
the decision "every member has ended" is taken exactly once under any interleaving.
Evaluations live in ``evaluation.py``; the reaper's repairs in ``recovery.py``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable

from sqlalchemy import func, select, update

from medq.common.specs import INFER_KIND, REPORT_KIND
from medq.common.store import history
from medq.common.store.db import Store
from medq.common.store.locking import locked_job, row_and_locked_job
from medq.common.store.models import Artifact, Attempt, EvalState, Job, Member, State, utcnow
from medq.common.store.counters import bump

# An evaluation dispatched but not taken within this long is sent again even while the training
# queue is busy (its message may have been lost with the worker that sent it); an empty queue
# gets it sent again sooner (recovery.py). Duplicates are harmless: one claim wins.
EVAL_DISPATCH_GRACE = timedelta(minutes=30)


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def create_job(store: Store, kind: str, spec: dict[str, Any], plan: dict[str, Any], seeds: Iterable[int],
               total_epochs: int = 0, project: str | None = None, priority: str | None = None) -> tuple[str, list[int]]:
    """A job row and one queued member per seed; returns the job id and member ids."""
    job_id, now = new_job_id(), utcnow()
    with store.session() as s:
        job = Job(id=job_id, kind=kind, spec=spec, plan=plan, created_at=now, project=project, priority=priority)
        # updated_at is when the member was last sent: the resend sweep waits from here
        job.members = [Member(seed=seed, total_epochs=total_epochs, updated_at=now) for seed in seeds]
        s.add(job)
        s.flush()
        return job_id, [m.id for m in job.members]


def fail_job(store: Store, job_id: str, reason: str) -> None:
    """Used when a job could not be enqueued at all: its members and chunks end with it."""
    from medq.common.store.inference import fail_open_chunks

    with store.session() as s:
        job = locked_job(s, job_id)
        now = utcnow()
        job.state, job.error, job.finished_at, job.eval_state = State.FAILED.value, reason, now, EvalState.SKIPPED.value
        for m in job.members:
            if not State(m.state).ended:
                end_member(m, State.FAILED, reason, now)
        fail_open_chunks(s, job_id, reason, now)


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
                 lease_seconds: int, max_attempts: int, admission: int | None = None) -> Claim:
    """Take the lease on a member, or say why not (ended, cancelled, live elsewhere, cap, or a
    stale ``admission``: the message's admission number, common/store/admission.py; None: a
    message from before admission, taken as it comes)."""
    now = utcnow()
    with store.session() as s:
        member, job = row_and_locked_job(s, Member, member_id)
        if member is None:
            return Claim(False, f"member {member_id} does not exist")
        if State(member.state).ended:
            return Claim(False, f"member already {member.state}")
        if job.cancel_requested:
            end_member(member, State.CANCELLED, cancel_reason(member), now)
            return Claim(False, "job cancelled", job_id=job.id, dispatch_evaluation=close_members_phase(s, job, now))
        if member.state == State.RUNNING.value and member.lease_owner == owner:  # a retry of a claim that
            number = s.scalar(select(func.max(Attempt.number)).where(Attempt.member_id == member_id))  # committed
            return Claim(True, attempt=number or member.attempts, job_id=job.id, seed=member.seed, spec=job.spec,
                         plan=job.plan, kind=job.kind)
        live = member.state == State.RUNNING.value and member.lease_expires_at and member.lease_expires_at > now
        if live:
            return Claim(False, f"running on {member.worker} with a live lease")
        if admission is not None and (member.admission != admission or (
                member.state == State.QUEUED.value and member.admitted_at is None)):
            return Claim(False, f"stale message (admission {admission}; the member's is {member.admission}"
                                + (", and it waits to be admitted again)" if member.admitted_at is None else ")"))
        if member.attempts >= max_attempts:
            reason = f"gave up after {member.attempts} attempts" + (f" (last: {member.error})" if member.error else "")
            end_member(member, State.FAILED, reason, now)
            return Claim(False, reason, job_id=job.id, gave_up=True,
                         dispatch_evaluation=close_members_phase(s, job, now))
        taken = s.execute(
            update(Member)
            .where(Member.id == member_id, Member.attempts == member.attempts)
            .values(state=State.RUNNING.value, attempts=member.attempts + 1, lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_seconds), worker=worker, device=device,
                    started_at=member.started_at or now, updated_at=now, preempt_requested_at=None,
                    preempt_reason=None, preempt_for=None,  # a request to yield was for the attempt before
                    # the worker's queue stays for a retry of this message (release_member)
                    admitted_to=member.admitted_to if admission is not None else None, admitted_at=None)
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken != 1:
            return Claim(False, "another worker took it first")
        last = s.scalar(select(Attempt.state).where(Attempt.member_id == member_id)
                        .order_by(Attempt.number.desc()).limit(1))
        if last in ("running", "lost"):  # its worker died, or its message came again (not a retry: "retried")
            bump(s, "redeliveries", "member")
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


def renew_lease(store: Store, member_id: int, owner: str, lease_seconds: int,
                epochs: Iterable[dict[str, Any]] = (), **progress: Any) -> bool:
    """Heartbeat, optionally with progress fields and the epochs finished since the last beat
    (written to the history in the same transaction). False: the lease is no longer ours, and
    nothing was written."""
    now = utcnow()
    with store.session() as s:
        ours = s.execute(
            update(Member)
            .where(Member.id == member_id, Member.lease_owner == owner, Member.state == State.RUNNING.value)
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now, **progress)
            .execution_options(synchronize_session=False)
        ).rowcount == 1
        epochs = list(epochs)
        if ours and epochs:
            job_id = s.scalar(select(Member.job_id).where(Member.id == member_id))
            history.write_epochs(s, member_id, job_id, epochs)
        return ours


def record_epochs(store: Store, member_id: int, epochs: Iterable[dict[str, Any]]) -> int:
    """Epochs a member attempt finished (their checkpoints written) that its heartbeat or end did
    not get into the store: written whoever holds the lease now, since the attempt that resumes
    from those checkpoints will not run them again. An upsert: written twice, stored once."""
    epochs = list(epochs)
    if not epochs:
        return 0
    with store.session() as s:
        job_id = s.scalar(select(Member.job_id).where(Member.id == member_id))
        return history.write_epochs(s, member_id, job_id, epochs) if job_id else 0


def cancel_requested(store: Store, job_id: str) -> bool:
    with store.session() as s:
        return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def finish_member(store: Store, member_id: int, owner: str, state: State, *, error: str | None = None,
                  artifacts: dict[str, str] | None = None, resumed_from_epoch: int | None = None,
                  epochs: Iterable[dict[str, Any]] = (), **fields: Any) -> bool:
    """Record a member's end and its artifacts in one transaction.

    Returns True when this call ended the job's last running member and so must dispatch
    the evaluation (exactly one caller gets True, under any interleaving: the job row is locked).
    """
    now = utcnow()
    with store.session() as s:
        member, job = row_and_locked_job(s, Member, member_id)
        if member is None or member.lease_owner != owner or State(member.state).ended:
            return False
        for key, value in fields.items():
            setattr(member, key, value)
        history.write_epochs(s, member.id, member.job_id, epochs)
        if resumed_from_epoch:
            for attempt in member.attempt_rows:
                if attempt.state == "running":
                    attempt.start_epoch = resumed_from_epoch
        end_member(member, state, error, now)
        for name, path in (artifacts or {}).items():
            _put_artifact(s, member.job_id, member.id, name, path)
        return close_members_phase(s, job, now)


def release_member(store: Store, member_id: int, owner: str, reason: str,
                   epochs: Iterable[dict[str, Any]] = (), retry_in: float = 0.0) -> bool:
    """Give a member back to the queue (a transient error; the task retries it), with the
    epochs it finished since its last heartbeat."""
    now = utcnow()
    with store.session() as s:
        member = s.get(Member, member_id)
        if member is None or member.lease_owner != owner:
            return False
        history.write_epochs(s, member.id, member.job_id, epochs)
        member.state, member.error, member.updated_at = State.QUEUED.value, reason, now
        member.lease_owner = member.lease_expires_at = None
        # the task's retry message (same admission) waits on its worker for ``retry_in`` seconds:
        # the member stays admitted to that worker until then (the worker counts as busy), and
        # the lapse of admissions counts from that moment. A message from before admission has
        # no worker of its own: the member waits for admission again.
        member.admitted_at = now + timedelta(seconds=retry_in) if member.admitted_to else None
        bump(s, "transient_retries", "member")
        for attempt in member.attempt_rows:
            if attempt.state == "running":  # its task retries: a transient fault, not a lost worker
                attempt.state, attempt.ended_at, attempt.error = "retried", now, reason
        return True


def cancel_reason(member: Member) -> str:
    """Why a member that was not running ended cancelled, in words true to what it had done."""
    if member.attempts == 0 and not member.epoch:
        return "cancelled before it started"
    return (f"cancelled while queued to go on (after {member.epoch} epoch(s) on {member.attempts} attempt(s); "
            f"`medq resume` continues from its checkpoint)")


def end_member(member: Member, state: State, error: str | None, now: datetime) -> None:
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


def close_members_phase(s, job: Job, now: datetime) -> bool:
    """When every member has ended, decide the evaluation: dispatch it (True), or end the job.

    The caller holds the job's row lock; the members' states are read from the database after
    it, never from objects loaded before (which may predate another finisher's commit)."""
    s.flush()
    if job.eval_state != EvalState.PENDING.value:
        return False
    states = list(s.scalars(select(Member.state).where(Member.job_id == job.id)))
    if not states or not all(State(state).ended for state in states):
        return False
    if job.cancel_requested or State.SUCCEEDED.value not in states:
        job.eval_state = EvalState.SKIPPED.value
        job.state = State.CANCELLED.value if job.cancel_requested else State.FAILED.value
        job.error = job.error or members_error(s, job.id)
        job.finished_at = now
        return False
    job.eval_state, job.eval_lease_expires_at = EvalState.DISPATCHED.value, now + EVAL_DISPATCH_GRACE
    job.eval_lease_owner = None
    return True


def members_error(s, job_id: str) -> str | None:
    failed = s.execute(select(Member.seed, Member.error).where(Member.job_id == job_id,
                                                               Member.state == State.FAILED.value)
                       .order_by(Member.seed)).all()
    return ("member(s) failed: " + "; ".join(f"seed {seed}: {error}" for seed, error in failed)) if failed else None


def request_cancel(store: Store, job_id: str) -> Job | None:
    """Cancellation lives in the store, so it survives worker restarts; running members stop
    cooperatively at their next check, queued ones end now."""
    now = utcnow()
    with store.session() as s:
        job = locked_job(s, job_id)
        if job is None or State(job.state).ended:
            return job
        job.cancel_requested = True
        if job.kind == REPORT_KIND:  # no members: it ends now; a render under way finds its lease gone
            job.state, job.finished_at, job.error = State.CANCELLED.value, now, "cancelled"
            job.eval_state, job.eval_lease_owner, job.eval_lease_expires_at = EvalState.SKIPPED.value, None, None
            return job
        if job.kind == INFER_KIND:
            from medq.common.store.inference import cancel_chunks

            cancel_chunks(s, job, now)
            return job
        for m in job.members:
            if m.state == State.QUEUED.value:
                end_member(m, State.CANCELLED, cancel_reason(m), now)
        close_members_phase(s, job, now)
        return job


def resume_training_job(store: Store, job_id: str) -> list[int]:
    """Give a training job's failed and cancelled members another go: back to queued with a
    fresh attempt budget, the job reopened and its evaluation pending again. Each member resumes
    from its last checkpoint (its work folder is kept). Returns the members to enqueue; none
    when every member succeeded or the job is still running."""
    now = utcnow()
    with store.session() as s:
        job = locked_job(s, job_id)
        if job is None or not State(job.state).ended:
            return []
        again = [m for m in job.members if m.state in (State.FAILED.value, State.CANCELLED.value)]
        for m in again:
            m.state, m.attempts, m.error, m.finished_at = State.QUEUED.value, 0, None, None
            m.lease_owner = m.lease_expires_at = m.admitted_to = m.admitted_at = None
            m.updated_at = now
        if again:
            job.state, job.error, job.finished_at, job.cancel_requested = State.QUEUED.value, None, None, False
            job.eval_state, job.eval_lease_expires_at, job.eval_lease_owner = EvalState.PENDING.value, None, None
        return [m.id for m in again]
