"""Read-only views of the store in the shapes `medq status` and `medq results` print.

The JSON shapes are an output contract: scripts read them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from common.store.db import Store
from common.store.models import Artifact, Job


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def member_view(m) -> dict[str, Any]:
    return {
        "seed": m.seed, "state": m.state, "epoch": m.epoch, "total_epochs": m.total_epochs,
        "phase": m.phase, "step": m.step, "steps_per_epoch": m.steps_per_epoch,
        "attempt": m.attempts, "worker": m.worker, "device": m.device,
        "train_loss": m.train_loss, "val_loss": m.val_loss, "val_error_px": m.val_error_px,
        "images_per_s": m.images_per_s, "error": m.error,
        "started_at": _iso(m.started_at), "finished_at": _iso(m.finished_at), "updated_at": _iso(m.updated_at),
    }


def job_view(job: Job, with_members: bool = True) -> dict[str, Any]:
    view = {
        "job_id": job.id, "kind": job.kind, "state": job.state, "error": job.error,
        "cancel_requested": job.cancel_requested, "evaluation": job.eval_state,
        "created_at": _iso(job.created_at), "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at),
        "spec": job.spec, "data": job.plan.get("data_dir"),
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
        return {
            "job_id": job.id, "kind": job.kind, "state": job.state, "error": job.error,
            "evaluation": job.eval_state,
            "members": [
                {"seed": m.seed, "state": m.state, "error": m.error, "attempts": m.attempts,
                 "checkpoint": artifacts.get(f"seed-{m.seed}/best"),
                 "metrics": by_subject.get(f"seed-{m.seed}")}
                for m in job.members
            ],
            "ensemble": [
                {"aggregation": subject.removeprefix("ensemble-"), "metrics": metrics}
                for subject, metrics in sorted(by_subject.items()) if subject.startswith("ensemble-")
            ],
        }
