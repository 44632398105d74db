"""Preemption of training members in the store: who is asked to yield, the member's own check,
and its yield (back to the queue, its checkpoint kept, nothing counted against its attempts).

The decision is the pure policy's (``common/sharing/policy.py``); ``preempt_for_waiting``
builds its inputs from the rows: high-priority inference chunks queued for more than ``grace``
(no free worker took their message) as the waiting work, running members and chunks as the runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from typing import Any, Iterable

from sqlalchemy import func, select, update

from medq.common.sharing.policy import Running, Sharing, Waiting, plan
from medq.common.specs import INFER_KIND
from medq.common.store import history
from medq.common.store.db import Store
from medq.common.store.locking import row_and_locked_job
from medq.common.store.models import Attempt, Chunk, Job, Member, State, utcnow
from medq.common.store.counters import bump
from medq.common.windows import window_open


YIELD_TAKEN_WITHIN = timedelta(seconds=30)  # a worker freed by a yield takes the waiting chunk well within this


def preempt_requested(store: Store, member_id: int, owner: str) -> bool:
    """The member's heartbeat asks: is this attempt to yield its worker?"""
    with store.session() as s:
        return s.scalar(select(Member.id).where(Member.id == member_id, Member.lease_owner == owner,
                                                Member.preempt_requested_at.is_not(None))) is not None


def request_preemption(store: Store, member_id: int, reason: str, owner: str | None = None) -> datetime | None:
    """Ask a running member (its attempt ``owner``, when given) to yield. Returns the request's
    time; None if it is not running (or another attempt runs now) or has been asked already."""
    now = utcnow()
    with store.session() as s:
        member, job = row_and_locked_job(s, Member, member_id)
        if member is None or member.state != State.RUNNING.value or member.preempt_requested_at is not None \
                or job.cancel_requested or (owner is not None and member.lease_owner != owner):
            return None
        member.preempt_requested_at, member.preempt_reason, member.updated_at = now, reason, now
        member.preempt_for = "inference"
        return now


def yield_for_shutdown(store: Store, workers: list[str]) -> list[int]:
    """The members running on ``workers`` (node names), whose launcher is stopping: asked to
    yield at their next step, with the exact checkpoint a preemption writes, so that another
    worker resumes them without repeating a step. Not counted as preemptions."""
    now = utcnow()
    with store.session() as s:
        return list(s.scalars(update(Member).where(Member.state == State.RUNNING.value, Member.worker.in_(workers),
                                                   Member.preempt_requested_at.is_(None))
                              .values(preempt_requested_at=now, preempt_reason="its worker is shutting down",
                                      preempt_for="shutdown", updated_at=now)
                              .returning(Member.id).execution_options(synchronize_session=False)).all())


def running_on(store: Store, workers: list[str]) -> list[int]:
    with store.session() as s:
        return list(s.scalars(select(Member.id).where(Member.state == State.RUNNING.value,
                                                      Member.worker.in_(workers))))


@dataclass(frozen=True)
class Yielded:
    queued: bool  # back in the queue: the caller sends it
    dispatch_evaluation: bool = False  # the job was cancelled meanwhile and this was its last member


def yield_member(store: Store, member_id: int, owner: str, epochs: Iterable[dict[str, Any]] = (),
                 **progress: Any) -> Yielded | None:
    """The preempted attempt gives its member back: queued again, its attempt ``preempted``, one
    more preemption, and the attempt not counted against the cap of ``max_attempts`` (a yield is
    not a failure). The request stays set until the next claim, so launchers count the member
    as on its way to the work it yields to. A job cancelled meanwhile ends the member instead.
    None: the lease was not ours."""
    from medq.common.store.jobs import cancel_reason, close_members_phase, end_member

    now = utcnow()
    with store.session() as s:
        member, job = row_and_locked_job(s, Member, member_id)
        if member is None or member.lease_owner != owner:
            return None
        history.write_epochs(s, member.id, member.job_id, epochs)
        for name, value in progress.items():
            setattr(member, name, value)
        if job.cancel_requested:
            end_member(member, State.CANCELLED, cancel_reason(member), now)
            return Yielded(False, close_members_phase(s, job, now))
        reason = f"preempted: {member.preempt_reason or 'asked to yield'}"
        member.state, member.updated_at, member.error = State.QUEUED.value, now, reason
        member.lease_owner = member.lease_expires_at = member.admitted_to = member.admitted_at = None
        if member.preempt_for != "shutdown":  # a worker that stops is not more urgent work
            member.preemptions += 1
            bump(s, "preemptions", "member")
        member.attempts = max(0, member.attempts - 1)
        for attempt in member.attempt_rows:
            if attempt.state == "running":
                attempt.state, attempt.ended_at, attempt.error = "preempted", now, reason
        return Yielded(True)


def preempt_for_waiting(store: Store, sharing: Sharing, grace: timedelta, now_local: time) -> list[tuple[int, str]]:
    """Ask training members to yield to high-priority (or --preempt) inference chunks that have
    waited past ``grace`` with no worker taking them, in jobs whose window is open. Only those:
    a worker takes ``infer.high`` before ``gpu``, so the worker a member frees goes to them.
    Returns (member id, reason) for each member asked."""
    now = utcnow()
    with store.session() as s:
        waiting = _waiting_chunks(s, now - grace, now_local)
        if not waiting:
            return []
        runs, asked = _runs(s, now, sharing.min_run)
    waiting = waiting[asked:]  # members already yielding are on their way to the first of them
    decided = plan(waiting, list(runs.values()), free=0, sharing=replace(sharing, min_run=0), now=now.timestamp())
    by_key = {item.key: item for item in waiting}
    done = []
    for victim, waiter in decided.preempt:
        if not victim.startswith("member "):
            continue
        member_id, chunk = int(victim.split()[1]), by_key[waiter]
        reason = f"{chunk.priority}-priority inference job {chunk.key.split()[1]} ({chunk.project}) waiting"
        if request_preemption(store, member_id, reason, owner=runs[victim].owner):
            done.append((member_id, reason))
    return done


def _waiting_chunks(s, queued_before: datetime, now_local: time, cap: int = 256) -> list[Waiting]:
    """High-priority chunks queued before ``queued_before``, per job (at most ``cap`` each: no
    more members than that could ever yield to one job in one round)."""
    counts = s.execute(select(Chunk.job_id, func.count(), func.min(Chunk.updated_at))
                       .join(Job, Job.id == Chunk.job_id)
                       .where(Chunk.state == "queued", Chunk.updated_at < queued_before, Job.priority == "high")
                       .group_by(Chunk.job_id)).all()
    if not counts:
        return []
    jobs = {job.id: job for job in s.scalars(select(Job).where(
        Job.id.in_([job_id for job_id, _, _ in counts]), Job.kind == INFER_KIND, Job.cancel_requested.is_(False)))}
    waiting = []
    for job_id, n, oldest in counts:
        job = jobs.get(job_id)
        if job is None or not (job.window_lifted or window_open(job.window, now_local)):
            continue  # a closed window: its chunks go back to waiting when a worker claims them
        preempts = bool((job.spec or {}).get("preempt"))
        waiting += [Waiting(f"job {job_id} chunk {i}", job.project or "default", "high",
                            oldest.timestamp(), preempts=preempts) for i in range(min(n, cap))]
    return sorted(waiting, key=lambda item: (item.submitted_at, item.key))


@dataclass(frozen=True)
class OwnedRun(Running):
    owner: str | None = None  # the attempt's lease owner: a request to yield names it


def running_chunks(s, now: datetime) -> dict[str, OwnedRun]:
    """Inference chunks with a live lease, as runs (never preemptible: a chunk is short)."""
    return {f"chunk {chunk_id}": OwnedRun(f"chunk {chunk_id}", project or "default", priority or "normal",
                                          float("-inf"), preemptible=False)
            for chunk_id, priority, project in s.execute(
                select(Chunk.id, Job.priority, Job.project).join(Job, Job.id == Chunk.job_id)
                .where(Chunk.state == "running", Chunk.lease_expires_at > now)).all()}


def _runs(s, now: datetime, min_run: float) -> tuple[dict[str, OwnedRun], int]:
    """The running work with a live lease, by key, and how many members are on their way to
    yield (asked and still running, or yielded and not yet claimed again)."""
    # yields for inference only (admission counts those for training); a yielded member counts
    # for a moment after its yield, until the worker it freed has taken the chunk
    for_inference = Member.preempt_requested_at.is_not(None) & (
        Member.preempt_for.is_(None) | (Member.preempt_for == "inference"))
    asked = s.scalar(select(func.count()).where(for_inference, (Member.state == State.RUNNING.value) | (
        (Member.state == State.QUEUED.value) & (Member.updated_at > now - YIELD_TAKEN_WITHIN))))
    members = s.execute(select(Member.id, Member.lease_owner, Member.preemptions, Job.priority, Job.project,
                               Attempt.started_at)
                        .join(Job, Job.id == Member.job_id)
                        .outerjoin(Attempt, (Attempt.member_id == Member.id) & (Attempt.state == "running"))
                        .where(Member.state == State.RUNNING.value, Member.lease_expires_at > now,
                               Member.preempt_requested_at.is_(None))).all()
    runs = {}
    for member_id, owner, preemptions, priority, project, started in members:
        since = started.timestamp() if started else float("-inf")
        # MEDQ_PREEMPT_MIN_RUN: a member that has yielded runs this long before it yields again;
        # its first preemption may come at any time.
        protected = bool(preemptions) and now.timestamp() - since < min_run
        runs[f"member {member_id}"] = OwnedRun(f"member {member_id}", project or "default", priority or "normal",
                                               since, preemptible=not protected, owner=owner)
    runs.update(running_chunks(s, now))
    return runs, asked or 0
