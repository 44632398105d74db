"""Preemption of training members in the store: who is asked to yield, the member's own check,
and its yield (back to the queue, its checkpoint kept, nothing counted against its attempts).

The decision is the pure policy's (``common/sharing/policy.py``); ``preempt_for_waiting``
builds its inputs from the rows: inference chunks queued for more than ``grace`` (no free
worker took their message) as the waiting work, running members and chunks as the runs.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Iterable

from sqlalchemy import func, select

from medq.common.sharing.policy import Running, Sharing, Waiting, plan
from medq.common.specs import INFER_KIND
from medq.common.store import history
from medq.common.store.db import Store
from medq.common.store.locking import row_and_locked_job
from medq.common.store.models import Attempt, Chunk, Job, Member, State, utcnow


def preempt_requested(store: Store, member_id: int, owner: str) -> bool:
    """The member's heartbeat asks: is this attempt to yield its worker?"""
    with store.session() as s:
        return s.scalar(select(Member.id).where(Member.id == member_id, Member.lease_owner == owner,
                                                Member.preempt_requested_at.is_not(None))) is not None


def request_preemption(store: Store, member_id: int, reason: str) -> bool:
    """Ask a running member to yield; False if it is not running or has been asked already."""
    now = utcnow()
    with store.session() as s:
        member, job = row_and_locked_job(s, Member, member_id)
        if member is None or member.state != State.RUNNING.value or member.preempt_requested_at is not None \
                or job.cancel_requested:
            return False
        member.preempt_requested_at, member.preempt_reason, member.updated_at = now, reason, now
        return True


def yield_member(store: Store, member_id: int, owner: str, epochs: Iterable[dict[str, Any]] = (),
                 **progress: Any) -> bool:
    """The preempted attempt gives its member back: queued again (the caller sends it), its
    attempt ``preempted``, one more preemption, and the attempt not counted against the cap
    of ``max_attempts`` (a yield is not a failure). False: the lease was not ours."""
    now = utcnow()
    with store.session() as s:
        member, job = row_and_locked_job(s, Member, member_id)
        if member is None or member.lease_owner != owner:
            return False
        history.write_epochs(s, member.id, member.job_id, epochs)
        for name, value in progress.items():
            setattr(member, name, value)
        reason = f"preempted: {member.preempt_reason or 'asked to yield'}"
        member.state, member.updated_at, member.error = State.QUEUED.value, now, reason
        member.lease_owner = member.lease_expires_at = None
        member.preemptions += 1
        member.attempts = max(0, member.attempts - 1)
        member.preempt_requested_at = member.preempt_reason = None
        for attempt in member.attempt_rows:
            if attempt.state == "running":
                attempt.state, attempt.ended_at, attempt.error = "preempted", now, reason
        return True


def preempt_for_waiting(store: Store, sharing: Sharing, grace: timedelta) -> list[tuple[int, str]]:
    """Ask training members to yield to inference chunks that have waited past ``grace`` with no
    worker taking them. Returns (member id, reason) for each member asked."""
    now = utcnow()
    with store.session() as s:
        waiting = _waiting_chunks(s, now - grace)
        if not waiting:
            return []
        runs, asked = _runs(s, now)
    waiting = waiting[asked:]  # members already yielding are on their way to the first of them
    decided = plan(waiting, runs, free=0, sharing=sharing, now=now.timestamp()).preempt
    by_key = {item.key: item for item in waiting}
    done = []
    for victim, waiter in decided:
        member_id = int(victim.split()[1])
        chunk = by_key[waiter]
        reason = f"{chunk.priority}-priority inference job {chunk.key.split()[1]} ({chunk.project}) waiting"
        if request_preemption(store, member_id, reason):
            done.append((member_id, reason))
    return done


def _waiting_chunks(s, queued_before: datetime, cap: int = 256) -> list[Waiting]:
    """Chunks queued before ``queued_before``, per job (at most ``cap`` each: no more members
    than that could ever yield to one job in one round)."""
    counts = s.execute(select(Chunk.job_id, func.count(), func.min(Chunk.updated_at))
                       .where(Chunk.state == "queued", Chunk.updated_at < queued_before)
                       .group_by(Chunk.job_id)).all()
    if not counts:
        return []
    jobs = {job.id: job for job in s.scalars(select(Job).where(
        Job.id.in_([job_id for job_id, _, _ in counts]), Job.kind == INFER_KIND, Job.cancel_requested.is_(False)))}
    waiting = []
    for job_id, n, oldest in counts:
        job = jobs.get(job_id)
        if job is None:
            continue
        preempts = bool((job.spec or {}).get("preempt"))
        waiting += [Waiting(f"job {job_id} chunk {i}", job.project or "default", job.priority or "normal",
                            oldest.timestamp(), preempts=preempts) for i in range(min(n, cap))]
    return sorted(waiting, key=lambda item: (item.submitted_at, item.key))


def _runs(s, now: datetime) -> tuple[list[Running], int]:
    """The running work with a live lease, and how many members have been asked to yield."""
    members = s.execute(select(Member.id, Member.preemptions, Member.preempt_requested_at, Job.priority,
                               Job.project, Attempt.started_at)
                        .join(Job, Job.id == Member.job_id)
                        .outerjoin(Attempt, (Attempt.member_id == Member.id) & (Attempt.state == "running"))
                        .where(Member.state == State.RUNNING.value, Member.lease_expires_at > now)).all()
    runs, asked = [], 0
    for member_id, preemptions, requested, priority, project, started in members:
        if requested is not None:
            asked += 1
            continue
        # MEDQ_PREEMPT_MIN_RUN counts from the start after a preemption: a member is never
        # preempted twice within it; its first preemption may come at any time.
        since = started.timestamp() if (preemptions and started) else float("-inf")
        runs.append(Running(f"member {member_id}", project or "default", priority or "normal", since,
                            preemptible=True))
    chunks = s.execute(select(Chunk.id, Job.priority, Job.project).join(Job, Job.id == Chunk.job_id)
                       .where(Chunk.state == "running", Chunk.lease_expires_at > now)).all()
    runs += [Running(f"chunk {chunk_id}", project or "default", priority or "normal", float("-inf"),
                     preemptible=False) for chunk_id, priority, project in chunks]
    return runs, asked
