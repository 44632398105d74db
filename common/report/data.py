"""What a report reads about a job from the store (torch-free): its view, its results as
`medq results --json` gives them (with the training history), and its members' attempts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from medq.common.store import views
from medq.common.store.db import Store
from medq.common.store.models import Attempt, Job, Member, State


@dataclass(frozen=True)
class JobData:
    job: dict[str, Any]  # views.job_view, with members
    results: dict[str, Any]  # views.job_results: what `medq results JOB --json` prints
    attempts: dict[int, list[dict[str, Any]]]  # seed -> its attempts (worker, device, start epoch, times)

    @property
    def id(self) -> str:
        return self.job["job_id"]

    @property
    def kind(self) -> str:
        return self.job["kind"]

    @property
    def running(self) -> bool:
        return not State(self.job["state"]).ended

    @property
    def plan(self) -> dict[str, Any]:
        return self.job.get("plan") or {}


def find_set(results: dict[str, Any], name: str) -> tuple[int, dict[str, Any]] | None:
    """(index, entry) of the evaluation set ``name`` in `medq results --json`'s ``sets``."""
    return next(((i, e) for i, e in enumerate(results.get("sets") or []) if e["name"] == name), None)


def resolve_job_id(store: Store, job_id: str) -> str | None:
    """A job id, or a unique prefix of one, to the full id (None when none or several match)."""
    found = views.find_job(store, job_id)
    return found["job_id"] if found else None


def load_job(store: Store, job_id: str) -> JobData:
    job = views.find_job(store, job_id)
    if job is None:
        raise KeyError(job_id)
    with store.session() as s:
        row = s.get(Job, job["job_id"])
        job["plan"] = row.plan
        attempts: dict[int, list[dict[str, Any]]] = {}
        for seed, attempt in s.execute(select(Member.seed, Attempt).join(Attempt, Attempt.member_id == Member.id)
                                       .where(Member.job_id == row.id).order_by(Member.seed, Attempt.number)):
            attempts.setdefault(seed, []).append({
                "number": attempt.number, "state": attempt.state, "worker": attempt.worker,
                "device": attempt.device, "start_epoch": attempt.start_epoch, "error": attempt.error,
                "started_at": attempt.started_at, "ended_at": attempt.ended_at})
    from medq.common.specs import INFER_KIND

    results = views.infer_view if job["kind"] == INFER_KIND else views.job_results  # as `medq results --json`
    return JobData(job, results(store, job["job_id"]) or {}, attempts)
