"""What operations watch, read from the store in one short transaction: jobs by kind and state,
what runs on which worker, what waits on which queue and since when, inference studies by
outcome, live workers, and the event counters. The metrics endpoint (workers/metrics.py)
turns a snapshot into Prometheus series; nothing here names a patient or a file.

Bounded: running members are at most one per worker; studies are read for open inference
jobs and those that ended in the last hour, at most ``MAX_INFER_JOBS``, through the
(job_id, state) index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select

from medq.common.specs import INFER_KIND, REPORT_KIND
from medq.common.store.admission import live_workers
from medq.common.store.counters import read_counters
from medq.common.store.db import Store
from medq.common.store.jobs import EVAL_DISPATCH_GRACE
from medq.common.store.models import Chunk, EvalState, Job, Member, State, Study, utcnow

ADMISSION_QUEUE = "admission"  # members waiting in the store for a worker (not on the broker)
RECENT = timedelta(hours=1)  # ended inference jobs keep their study series this long
MAX_INFER_JOBS = 50
STUDY_OUTCOMES = ("done", "failed", "skipped")


@dataclass(frozen=True)
class RunningMember:
    worker: str
    device: str  # "gpu" or "cpu"
    job: str
    seed: int
    progress: float  # 0..1 of its epochs, the current one's steps included


@dataclass(frozen=True)
class InferJob:
    job: str
    started_at: datetime | None
    studies: dict[str, int]  # by outcome, and "pending"


@dataclass
class Snapshot:
    taken_at: datetime
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, state) -> count
    running: list[RunningMember] = field(default_factory=list)
    waiting: dict[str, tuple[int, datetime | None]] = field(default_factory=dict)  # queue -> (count, oldest)
    infer_jobs: list[InferJob] = field(default_factory=list)
    workers_online: dict[str, int] = field(default_factory=dict)  # device -> count
    worker_queues: list[str] = field(default_factory=list)  # live workers' own queues
    live: list[tuple[str, str]] = field(default_factory=list)  # live workers: (node name, "gpu"/"cpu")
    chunks_running: dict[tuple[str, str], int] = field(default_factory=dict)  # (worker, device) -> inference chunks
    counters: dict[tuple[str, str], int] = field(default_factory=dict)


def device_class(device: str | None) -> str:
    return "gpu" if device and (device.startswith("cuda") or device == "gpu") else "cpu"


def snapshot(store: Store, worker_ttl: float) -> Snapshot:
    now = utcnow()
    snap = Snapshot(taken_at=now)
    with store.read_session() as s:
        for kind, state, count in s.execute(select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)):
            snap.jobs[(kind, state)] = count
        for row in s.execute(select(Member.worker, Member.device, Member.job_id, Member.seed, Member.epoch,
                                    Member.total_epochs, Member.step, Member.steps_per_epoch)
                             .where(Member.state == State.RUNNING.value)):
            snap.running.append(RunningMember(row.worker or "?", device_class(row.device), row.job_id, row.seed,
                                              _progress(row)))
        _waiting(s, snap)
        workers = live_workers(s, now, worker_ttl)
        for worker in workers:
            snap.workers_online[worker.device] = snap.workers_online.get(worker.device, 0) + 1
        snap.worker_queues = [w.queue for w in workers]
        snap.live = [(w.name, w.device) for w in workers]
        for worker, device, count in s.execute(select(Chunk.worker, Chunk.device, func.count())
                                               .where(Chunk.state == "running").group_by(Chunk.worker, Chunk.device)):
            key = (worker or "?", device_class(device))
            snap.chunks_running[key] = snap.chunks_running.get(key, 0) + count
        snap.infer_jobs = _infer_jobs(s, now)
        snap.counters = read_counters(s)
    return snap


def _progress(row) -> float:
    if not row.total_epochs:
        return 0.0
    within = row.step / row.steps_per_epoch if row.steps_per_epoch else 0.0
    # ``epoch`` is 1-based, the epoch in progress (or just finished, with every step done)
    return max(0.0, min(1.0, (max(0, row.epoch - 1) + min(within, 1.0)) / row.total_epochs))


def _waiting(s, snap: Snapshot) -> None:
    def add(queue: str, count: int, oldest: datetime | None) -> None:
        had, had_oldest = snap.waiting.get(queue, (0, None))
        if oldest is not None and had_oldest is not None:
            oldest = min(oldest, had_oldest)
        snap.waiting[queue] = (had + count, oldest or had_oldest)

    queued = Member.state == State.QUEUED.value
    for queue, count, oldest in s.execute(
            select(Member.admitted_to, func.count(), func.min(func.coalesce(Member.admitted_at, Member.updated_at,
                                                                          Job.created_at)))
            .join(Job, Job.id == Member.job_id).where(queued).group_by(Member.admitted_to)):
        add(queue or ADMISSION_QUEUE, count, oldest)
    for priority, count, oldest in s.execute(
            select(Job.priority, func.count(), func.min(func.coalesce(Chunk.updated_at, Job.created_at)))
            .join(Job, Job.id == Chunk.job_id).where(Chunk.state == "queued").group_by(Job.priority)):
        add(f"infer.{priority or 'normal'}", count, oldest)
    for kind, count, due in s.execute(
            select(Job.kind, func.count(), func.min(Job.eval_lease_expires_at))
            .where(Job.eval_state == EvalState.DISPATCHED.value).group_by(Job.kind)):
        add("report" if kind == REPORT_KIND else "gpu", count, due - EVAL_DISPATCH_GRACE if due else None)


def _infer_jobs(s, now: datetime) -> list[InferJob]:
    recent = or_(Job.state.in_((State.QUEUED.value, State.RUNNING.value)),
                 and_(Job.finished_at.is_not(None), Job.finished_at > now - RECENT))
    jobs = s.execute(select(Job.id, Job.started_at).where(Job.kind == INFER_KIND, recent)  # open ones first
                     .order_by(Job.finished_at.is_(None).desc(), Job.created_at.desc()).limit(MAX_INFER_JOBS)).all()
    if not jobs:
        return []
    counts: dict[str, dict[str, int]] = {job_id: {k: 0 for k in (*STUDY_OUTCOMES, "pending")} for job_id, _ in jobs}
    for job_id, state, count in s.execute(select(Study.job_id, Study.state, func.count())
                                          .where(Study.job_id.in_(list(counts))).group_by(Study.job_id, Study.state)):
        counts[job_id][state] = count
    return [InferJob(job_id, started_at, counts[job_id]) for job_id, started_at in jobs]
