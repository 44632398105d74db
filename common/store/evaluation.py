"""A training job's evaluation in the store: claimed under a lease that a heartbeat renews, its
results and the job's end written in one transaction by the claim's owner only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from medq.common import subjects
from medq.common.store.db import Store
from medq.common.store.jobs import members_error
from medq.common.store.locking import locked_job
from medq.common.store.models import Artifact, EvalState, Job, Result, State, utcnow


@dataclass(frozen=True)
class EvaluationClaim:
    job_id: str
    spec: dict[str, Any]
    plan: dict[str, Any]
    members: list[tuple[int, int, float | None, str]]  # (member id, seed, best val loss, best checkpoint)
    kind: str = ""


def claim_evaluation(store: Store, job_id: str, owner: str, lease_seconds: int) -> EvaluationClaim | None:
    """Take the job's evaluation (dispatched, or running with a lapsed lease); None: not ours."""
    now = utcnow()
    with store.session() as s:
        taken = s.execute(
            update(Job).where(Job.id == job_id)
            .where((Job.eval_state == EvalState.DISPATCHED.value)
                   | ((Job.eval_state == EvalState.RUNNING.value)
                      & ((Job.eval_lease_expires_at < now) | (Job.eval_lease_owner == owner))))  # or our own retry
            .values(eval_state=EvalState.RUNNING.value, eval_lease_owner=owner,
                    eval_lease_expires_at=now + timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken != 1:
            return None
        job = s.get(Job, job_id)
        paths = {a.name: a.path for a in s.scalars(select(Artifact).where(Artifact.job_id == job_id))}
        members = [(m.id, m.seed, m.val_loss, paths.get(subjects.artifact(m.seed, "best"), ""))
                   for m in job.members if m.state == State.SUCCEEDED.value]
        return EvaluationClaim(job.id, job.spec, job.plan, members, job.kind)


def renew_evaluation_lease(store: Store, job_id: str, owner: str, lease_seconds: int) -> bool:
    """The evaluation's heartbeat. False: the lease is no longer ours (it lapsed and was retaken)."""
    with store.session() as s:
        return s.execute(
            update(Job).where(Job.id == job_id, Job.eval_state == EvalState.RUNNING.value,
                              Job.eval_lease_owner == owner)
            .values(eval_lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False)
        ).rowcount == 1


def record_results(store: Store, job_id: str, owner: str, results: dict[str, dict[str, Any]],
                   member_ids: dict[str, int] | None = None) -> bool:
    """Write every result row and end the job, in one transaction (replay-safe: upserts).
    False, and nothing written, when the evaluation is no longer this owner's."""
    now = utcnow()
    with store.session() as s:
        job = locked_job(s, job_id)
        if job is None or job.eval_state != EvalState.RUNNING.value or job.eval_lease_owner != owner:
            return False
        for subject, metrics in results.items():
            row = s.scalar(select(Result).where(Result.job_id == job_id, Result.subject == subject))
            if row is None:
                s.add(Result(job_id=job_id, subject=subject, metrics=metrics,
                             member_id=(member_ids or {}).get(subject)))
            else:
                row.metrics = metrics
        _end_job(s, job, None, now)
        return True


def fail_evaluation(store: Store, job_id: str, owner: str, reason: str, what: str = "evaluation") -> bool:
    with store.session() as s:
        job = locked_job(s, job_id)
        if job is None or job.eval_state != EvalState.RUNNING.value or job.eval_lease_owner != owner:
            return False
        _end_job(s, job, f"{what} failed: {reason}", utcnow())
        return True


def create_report_job(store: Store, spec: dict[str, Any], plan: dict[str, Any], job_id: str | None = None,
                      project: str | None = None) -> str:
    """A report job: no members; its one task is leased like an evaluation, dispatched now (the
    reaper sends it again if its worker dies or its message is lost)."""
    from medq.common.specs import REPORT_KIND
    from medq.common.store.jobs import EVAL_DISPATCH_GRACE, new_job_id

    job_id, now = job_id or new_job_id(), utcnow()
    with store.session() as s:
        s.add(Job(id=job_id, kind=REPORT_KIND, spec=spec, plan=plan, created_at=now, project=project,
                  eval_state=EvalState.DISPATCHED.value, eval_lease_expires_at=now + EVAL_DISPATCH_GRACE))
    return job_id


def start_report(store: Store, job_id: str) -> None:
    """The report job is running from the moment its task holds the lease."""
    with store.session() as s:
        job = s.get(Job, job_id)
        if job is not None and job.state == State.QUEUED.value:
            job.state, job.started_at = State.RUNNING.value, utcnow()


def _end_job(s, job: Job, evaluation_error: str | None, now) -> None:
    job.eval_state, job.eval_lease_expires_at, job.eval_lease_owner = EvalState.DONE.value, None, None
    job.error = "; ".join(filter(None, [members_error(s, job.id), evaluation_error])) or None
    job.state = State.FAILED.value if job.error else State.SUCCEEDED.value
    job.finished_at = now
