"""Read-only views of the store in the shapes `medq status` and `medq results` print.

The JSON shapes are an output contract: scripts read them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from medq.common import subjects
from medq.common.store import history
from medq.common.store.db import Store
from medq.common.store.models import ENDED, Artifact, Job

ENDED_STATES = {state.value for state in ENDED}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def member_view(m) -> dict[str, Any]:
    return {
        "seed": m.seed, "state": m.state, "epoch": m.epoch, "total_epochs": m.total_epochs,
        "phase": m.phase, "step": m.step, "steps_per_epoch": m.steps_per_epoch,
        "attempt": m.attempts, "preemptions": m.preemptions,
        # asked to yield its worker: it stops at its next step
        "yielding": m.preempt_requested_at is not None and m.state == "running",
        # admitted beyond its project's quota (MEDQ_QUOTAS) onto an idle worker: the first to yield
        "borrowed": bool(m.borrowed) and m.state == "running",
        "admitted_to": m.admitted_to if m.state == "queued" else None,
        "worker": m.worker, "device": m.device,
        "train_loss": m.train_loss, "val_loss": m.val_loss, "val_error_px": m.val_error_px,
        "val_score": m.val_score,
        "images_per_s": m.images_per_s, "error": m.error,
        "started_at": _iso(m.started_at), "finished_at": _iso(m.finished_at), "updated_at": _iso(m.updated_at),
    }


def job_view(job: Job, with_members: bool = True) -> dict[str, Any]:
    view = {
        "job_id": job.id, "kind": job.kind, "state": job.state, "error": job.error,
        "cancel_requested": job.cancel_requested, "evaluation": job.eval_state,
        "created_at": _iso(job.created_at), "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at),
        "spec": job.spec, "data": job.plan.get("data_dir"), "project": job.project, "priority": job.priority,
    }
    if with_members:
        view["members"] = [member_view(m) for m in job.members]
    return view


def find_job(store: Store, job_id: str) -> dict[str, Any] | None:
    """A job by id or unique id prefix."""
    with store.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            matches = list(s.scalars(select(Job).where(Job.id.like(f"{job_id}%")).limit(2)))
            job = matches[0] if len(matches) == 1 else None
        return job_view(job) if job else None


def find_jobs_by_prefix(store: Store, prefix: str, limit: int = 100) -> list[dict[str, Any]]:
    """The newest jobs whose id starts with ``prefix`` (shell completion): id, kind, state."""
    with store.read_session() as s:
        rows = s.execute(select(Job.id, Job.kind, Job.state).where(Job.id.like(f"{prefix}%"))
                         .order_by(Job.created_at.desc()).limit(limit))
        return [{"job_id": i, "kind": k, "state": st} for i, k, st in rows]


def list_jobs(store: Store, limit: int = 20) -> list[dict[str, Any]]:
    with store.session() as s:
        jobs = s.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit))
        return [job_view(j) for j in jobs]


def job_results(store: Store, job_id: str) -> dict[str, Any] | None:
    """job_id, state, members (seed, state, metrics), ensemble (aggregation -> metrics)."""
    with store.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            return None
        by_subject = {r.subject: r.metrics for r in job.results}
        artifacts = {a.name: a.path for a in s.scalars(select(Artifact).where(Artifact.job_id == job_id))}
        epochs = history.job_history(s, job_id)
        outputs = by_subject.get(subjects.REPORT, {})  # a report job: html, pdf, as_of, jobs
        return {
            "job_id": job.id, "kind": job.kind, "state": job.state, "error": job.error,
            "evaluation": job.eval_state, **outputs,
            "members": [
                {"seed": m.seed, "state": m.state, "error": m.error, "attempts": m.attempts,
                 "preemptions": m.preemptions,
                 "checkpoint": artifacts.get(subjects.artifact(m.seed, "best")),
                 "metrics": by_subject.get(subjects.member(m.seed)),
                 "history": epochs.get(m.id, [])}  # every finished epoch, in order (the history table)
                for m in job.members
            ],
            "ensemble": [  # combinations of members (an ensemble's mean, median, weighted)
                {"aggregation": subject.removeprefix(subjects.COMBINED), "metrics": metrics}
                for subject, metrics in sorted(by_subject.items()) if subject.startswith(subjects.COMBINED)
            ],
            "sets": [  # evaluation sets of a single-model job (the test split first, then ISBI Test1 / Test2)
                {"name": subject.removeprefix(subjects.EVALUATION_SET), "metrics": metrics}
                for subject, metrics in sorted(by_subject.items(),
                                               key=lambda kv: (not kv[0].startswith(subjects.evaluation_set("test")),
                                                               kv[0]))
                if subject.startswith(subjects.EVALUATION_SET)
            ],
        }


FAILED_CHUNKS_SHOWN = 20


def infer_view(store: Store, job_id: str) -> dict[str, Any] | None:
    """An inference job: done / failed / skipped / remaining, chunks, throughput, time left."""
    from sqlalchemy import func

    from medq.common.store.models import Chunk, Send, Study, utcnow

    with store.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            return None
        studies = dict(s.execute(select(Study.state, func.count()).where(Study.job_id == job_id)
                                 .group_by(Study.state)).all())
        chunks = dict(s.execute(select(Chunk.state, func.count()).where(Chunk.job_id == job_id)
                                .group_by(Chunk.state)).all())
        since = job.started_at or job.created_at  # a resumed job counts from its restart
        ran = s.execute(select(func.count(), func.min(Study.updated_at), func.max(Study.updated_at)).where(
            Study.job_id == job_id, Study.chunk_index >= 0, Study.state != "pending",
            Study.updated_at >= since)).one()
        flagged = s.scalar(select(func.count()).where(Study.job_id == job_id, Study.qc_flag.is_(True)))
        failed_chunks = [{"chunk": index, "studies": n, "error": error} for index, n, error in s.execute(
            select(Chunk.index, Chunk.n_studies, Chunk.error).where(Chunk.job_id == job_id, Chunk.state == "failed")
            .order_by(Chunk.index).limit(FAILED_CHUNKS_SHOWN))]
        view = job_view(job, with_members=False)
        sends = dict(s.execute(select(Send.state, func.count()).where(Send.job_id == job_id)
                               .group_by(Send.state)).all())
    remaining = studies.get("pending", 0)
    throughput = None
    if ran[0] and job.started_at:
        end = ran[2] if remaining == 0 or job.state in ENDED_STATES else utcnow()  # an ended job's rate stops at its end
        seconds = max((end - job.started_at).total_seconds(), 1e-3)
        throughput = ran[0] / seconds
    view.update({
        "priority": job.priority, "window": job.window, "window_lifted": job.window_lifted,
        "studies": {"total": sum(studies.values()), "done": studies.get("done", 0),
                    "failed": studies.get("failed", 0), "skipped": studies.get("skipped", 0),
                    "remaining": remaining, "review": flagged},
        "chunks": chunks,
        "sends": sends,  # DICOM outputs stored on the PACS (--send-to), by state
        "send_to": (job.spec or {}).get("send_to"),
        "failed_chunks": failed_chunks,  # the first few, with why (their studies stay pending)
        "studies_per_s": throughput,
        "eta_s": remaining / throughput if throughput and remaining and job.state == "running" else None,
    })
    return view
