"""Admission: training members wait in the store, and a dispatcher in every launcher gives each
free worker the member the sharing policy (common/sharing/policy.py) picks, then sends it to
that worker's own queue. The broker only carries the decision.

One round (``admit``) runs under one database-wide lock (a PostgreSQL advisory lock; SQLite's
``BEGIN IMMEDIATE`` already admits one writer), so two launchers never admit the same member
or give one worker two. Each admission gets a number (``Member.admission``) that travels in
its message: a message whose number is not the member's latest is stale and its claim is
refused, so a lost, late or duplicated message can never run a member twice or bypass the
policy. An admission nobody claims within ``MEDQ_RESEND_AFTER`` (its worker died, or the broker
lost the message) lapses, and the member is admitted again.

A worker is free when its launcher said it was alive within ``MEDQ_WORKER_TTL`` and it holds no
member, no admitted member and no inference chunk. Queued high-priority inference (a worker
takes ``infer.high`` before its own queue) has first call on free workers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from typing import Iterable

from sqlalchemy import delete, func, select, text, update

from medq.common.sharing.policy import Sharing, Waiting, plan
from medq.common.store.preemption import OwnedRun, running_chunks
from medq.common.store.db import Store
from medq.common.store.models import Chunk, Job, Member, State, Worker, utcnow
from medq.common.store.counters import bump
from medq.common.windows import window_open

LOCK_KEY = 0x6D656471  # "medq": the advisory lock of an admission round on PostgreSQL


@dataclass(frozen=True)
class Admitted:
    member_id: int
    queue: str  # the chosen worker's own queue
    admission: int  # the number its message carries
    borrowed: bool = False
    job_id: str = ""
    seed: int = 0
    kind: str = ""  # the job's kind, for people reading Celery and Flower


@dataclass(frozen=True)
class Round:
    admitted: tuple[Admitted, ...] = ()
    preempted: tuple[tuple[int, str], ...] = ()  # (member id, why) asked to yield to waiting training


# --- the workers registry: launchers say which workers they run, and that they are alive ---

def register_workers(store: Store, launcher: str, workers: Iterable[tuple[str, str, str]],
                     ttl: float | None = None) -> list[str]:
    """``workers``: (Celery node name, its own queue, "gpu" or "cpu") of the launcher's live
    worker processes. Rows of this launcher not listed (a worker that died) are removed. With
    ``ttl``, a name another launcher said it runs within ``ttl`` seconds stays that launcher's
    (node names are stable, so two launchers on one host could otherwise share one): the names
    not taken for that reason are returned."""
    now = utcnow()
    rows = {name: (queue, device) for name, queue, device in workers}
    held: list[str] = []
    with store.session() as s:
        known = {w.name: w for w in s.scalars(select(Worker).where(Worker.launcher == launcher))}
        for name, worker in known.items():
            if name not in rows:
                s.delete(worker)
        for name, (queue, device) in rows.items():
            worker = known.get(name) or s.get(Worker, name)
            if worker is None:
                s.add(Worker(name=name, queue=queue, launcher=launcher, device=device, seen_at=now))
            elif ttl is not None and worker.launcher != launcher and worker.seen_at > now - timedelta(seconds=ttl):
                held.append(name)
            else:
                worker.queue, worker.launcher, worker.device, worker.seen_at = queue, launcher, device, now
    return held


def names_in_use(store: Store, launcher: str, names: Iterable[str], ttl: float) -> dict[str, tuple[str, float]]:
    """Of ``names``, those another launcher said it runs within ``ttl`` seconds: name ->
    (that launcher, seconds since it said so)."""
    now = utcnow()
    with store.session() as s:
        rows = s.execute(select(Worker.name, Worker.launcher, Worker.seen_at)
                         .where(Worker.name.in_(list(names)), Worker.launcher != launcher,
                                Worker.seen_at > now - timedelta(seconds=ttl))).all()
    return {name: (other, (now - seen).total_seconds()) for name, other, seen in rows}


def forget_launcher(store: Store, launcher: str) -> None:
    """A launcher that stops takes its workers out of the registry at once."""
    with store.session() as s:
        s.execute(delete(Worker).where(Worker.launcher == launcher))


def live_workers(s, now: datetime, ttl: float) -> list[Worker]:
    return list(s.scalars(select(Worker).where(Worker.seen_at > now - timedelta(seconds=ttl)).order_by(Worker.name)))


# --- one admission round ---

def admit(store: Store, sharing: Sharing, now_local: time, ttl: float = 15.0) -> Round:
    """Admit waiting members onto free live workers by the policy, and ask preemptible members
    to yield to waiting training of a higher priority (or to a project reclaiming its quota).
    The caller sends each admitted member to its queue after this returns (committed first)."""
    with store.session() as s:  # nothing waits (the usual case): no lock taken
        if s.scalar(select(Member.id).where(Member.state == State.QUEUED.value, Member.admitted_at.is_(None))
                    .limit(1)) is None:
            return Round()
    with store.session() as s:
        _lock_round(s)
        now = utcnow()  # after the lock: a round that waited for another sees that one's admissions as made
        rows: dict[str, tuple[int, str, int, int, str]] = {}
        waiting = _waiting_members(s, rows)
        if not waiting:
            return Round()
        runs, yielding = _runs(s, now, sharing.min_run)
        free = _free_workers(s, now, ttl, now_local)
        # min_run is already in each run's ``preemptible``
        decided = plan(waiting, list(runs.values()), len(free), replace(sharing, min_run=0), now.timestamp(),
                       yielding=yielding, explain=False)
        admitted = []
        for chosen, worker in zip(decided.admit, free):
            member_id, job_id, seed, number, kind = rows[chosen.key]
            if _take(s, member_id, number, worker.queue, chosen.borrowed, now):
                admitted.append(Admitted(member_id, worker.queue, number + 1, chosen.borrowed, job_id, seed, kind))
        preempted = _preempt(s, decided.preempt, runs, {item.key: item for item in waiting}, now)
    return Round(tuple(admitted), tuple(preempted))


def _lock_round(s) -> None:
    """PostgreSQL: an advisory lock held to the commit. SQLite: every transaction here begins
    IMMEDIATE (common/store/db.py), which holds the one write lock; a first statement begins it
    now (the session begins lazily), before the round reads the clock."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    else:
        s.execute(text("SELECT 1"))


def _waiting_members(s, rows_out: dict | None = None) -> list[Waiting]:
    """The members waiting for admission, oldest job first and by seed within a job;
    ``rows_out`` gets key -> (member id, job id, seed, admission number, job kind)."""
    rows = s.execute(select(Member.id, Member.job_id, Member.seed, Member.admission, Job.project, Job.priority,
                            Job.created_at, Job.kind)
                     .join(Job, Job.id == Member.job_id)
                     .where(Member.state == State.QUEUED.value, Member.admitted_at.is_(None),
                            Job.cancel_requested.is_(False))
                     .order_by(Job.created_at, Member.job_id, Member.seed)).all()
    waiting = []
    for member_id, job_id, seed, number, project, priority, created, kind in rows:
        key = f"member {member_id}"
        waiting.append(Waiting(key, project or "default", priority or "normal", created.timestamp()))
        if rows_out is not None:
            rows_out[key] = (member_id, job_id, seed, number or 0, kind)
    return waiting


def _runs(s, now: datetime, min_run: float) -> tuple[dict[str, OwnedRun], int]:
    """What holds a worker now, by key, for the policy: running members (those asked to yield
    not preemptible again, and those asked for training counted as ``yielding``), admitted
    members on their way to a worker, and running inference chunks."""
    from medq.common.store.models import Attempt

    runs: dict[str, OwnedRun] = {}
    yielding = 0
    members = s.execute(select(Member.id, Member.state, Member.lease_owner, Member.preemptions, Member.borrowed,
                               Member.preempt_requested_at, Member.preempt_for, Job.priority, Job.project,
                               Attempt.started_at)
                        .join(Job, Job.id == Member.job_id)
                        .outerjoin(Attempt, (Attempt.member_id == Member.id) & (Attempt.state == "running"))
                        .where(((Member.state == State.RUNNING.value) & (Member.lease_expires_at > now))
                               | ((Member.state == State.QUEUED.value) & Member.admitted_at.is_not(None)))).all()
    for member_id, state, owner, preemptions, borrowed, asked, asked_for, priority, project, started in members:
        key = f"member {member_id}"
        stopping = state == State.RUNNING.value and asked is not None
        if stopping and asked_for == "training":
            yielding += 1  # on its way to waiting training: counted for its project until it has yielded
        since = started.timestamp() if started else now.timestamp()
        # MEDQ_PREEMPT_MIN_RUN: a member that has yielded runs this long before it yields again
        protected = stopping or state != State.RUNNING.value or (
            bool(preemptions) and now.timestamp() - since < min_run)
        runs[key] = OwnedRun(key, project or "default", priority or "normal", since, preemptible=not protected,
                             borrowed=bool(borrowed), owner=owner)
    runs.update(running_chunks(s, now))
    return runs, yielding


def _free_workers(s, now: datetime, ttl: float, now_local: time) -> list[Worker]:
    """Live workers that hold nothing, less those queued high-priority inference will take."""
    # admitted first: a claim moves a member from admitted to running, so (under READ COMMITTED,
    # each statement seeing the latest commits) one that lands between the two reads is in the second
    busy_queues = set(s.scalars(select(Member.admitted_to).where(Member.state == State.QUEUED.value,
                                                                 Member.admitted_at.is_not(None))))
    busy_names = set(s.scalars(select(Member.worker).where(Member.state == State.RUNNING.value,
                                                           Member.lease_expires_at > now)))
    busy_names |= set(s.scalars(select(Chunk.worker).where(Chunk.state == "running", Chunk.lease_expires_at > now)))
    free = [w for w in live_workers(s, now, ttl) if w.name not in busy_names and w.queue not in busy_queues]
    return free[_urgent_chunks(s, now_local):]


def _urgent_chunks(s, now_local: time) -> int:
    from medq.common.specs import INFER_KIND

    count = 0
    for window, lifted, n in s.execute(select(Job.window, Job.window_lifted, func.count())
                                       .join(Chunk, Chunk.job_id == Job.id)
                                       .where(Job.kind == INFER_KIND, Job.priority == "high", Chunk.state == "queued",
                                              Job.cancel_requested.is_(False))
                                       .group_by(Job.id, Job.window, Job.window_lifted)).all():
        if lifted or window_open(window, now_local):
            count += n
    return count


def _take(s, member_id: int, number: int, queue: str, borrowed: bool, now: datetime) -> bool:
    """The guarded write of one admission (number ``number + 1``); False if the member moved meanwhile."""
    return s.execute(update(Member)
                     .where(Member.id == member_id, Member.state == State.QUEUED.value,
                            Member.admitted_at.is_(None), Member.admission == number)
                     .values(admission=number + 1, admitted_to=queue, admitted_at=now, borrowed=borrowed,
                             updated_at=now)
                     .execution_options(synchronize_session=False)).rowcount == 1


def _preempt(s, victims, runs: dict[str, OwnedRun], waiting: dict[str, Waiting], now: datetime) -> list[tuple[int, str]]:
    """Ask each member the policy chose to yield (its attempt, if it has not been asked yet)."""
    asked = []
    for victim, waiter in victims:
        if not victim.startswith("member "):
            continue
        run, item = runs[victim], waiting[waiter]
        why = (f"project {item.project} reclaims a worker {run.project} borrowed beyond its quota"
               if run.borrowed and run.priority == item.priority
               else f"{item.priority}-priority training of project {item.project} waiting")
        member_id = int(victim.split()[1])
        if s.execute(update(Member).where(Member.id == member_id, Member.state == State.RUNNING.value,
                                          Member.lease_owner == run.owner, Member.preempt_requested_at.is_(None))
                     .values(preempt_requested_at=now, preempt_reason=why, preempt_for="training", updated_at=now)
                     .execution_options(synchronize_session=False)).rowcount:
            asked.append((member_id, why))
    return asked


# --- repairs ---

def lapse_admissions(store: Store, older_than: datetime, ttl: float | None = None) -> list[int]:
    """Members admitted before ``older_than`` and still not claimed (the broker lost the
    message, or a send failed), and, with ``ttl``, members admitted to a worker that is no
    longer live (its launcher died or stopped): back to waiting, to be admitted again. Their
    old message, if it ever arrives, carries a stale number and is refused."""
    now = utcnow()
    with store.session() as s:
        admitted = s.execute(select(Member.id, Member.admitted_to, Member.admitted_at, Member.admission)
                             .where(Member.state == State.QUEUED.value, Member.admitted_at.is_not(None),
                                    Member.admitted_at <= now)).all()
        if not admitted:
            return []
        live = {w.queue for w in live_workers(s, now, ttl)} if ttl is not None else None
        ids = []
        for member_id, queue, at, number in admitted:
            if (at < older_than or (live is not None and queue not in live)) and unadmit(s, member_id, number):
                ids.append(member_id)
        bump(s, "resends", "member", len(ids))
    return ids


def unadmit(s, member_id: int, number: int) -> bool:
    """Admission ``number`` of a member not yet claimed goes back to waiting (guarded: a newer
    admission, or a claim, made meanwhile stays)."""
    return s.execute(update(Member).where(Member.id == member_id, Member.state == State.QUEUED.value,
                                          Member.admission == number, Member.admitted_at.is_not(None))
                     .values(admitted_to=None, admitted_at=None).execution_options(synchronize_session=False)
                     ).rowcount == 1


def withdraw(store: Store, member_id: int, number: int) -> bool:
    """An admission whose message could not be sent: the member waits again at once."""
    with store.session() as s:
        return unadmit(s, member_id, number)

