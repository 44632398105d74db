"""What `medq submit report` checks before it creates anything (torch-free, store only): every
job exists, has something to show, is of one family (or is one inference job), and jobs put
side by side share their test split. SpecError names the job; the CLI exits 2."""

from __future__ import annotations

from sqlalchemy import func, select

from medq.common.errors import SpecError
from medq.common.families.registry import family
from medq.common.specs import INFER_KIND, REPORT_KIND
from medq.common.store.db import Store
from medq.common.store.models import EpochRecord, Job, Result, Study


def check_report(store: Store, job_ids: list[str]) -> tuple[list[str], str]:
    """The full ids of the jobs to report on, and their kind."""
    from medq.common.report.data import resolve_job_id

    if not job_ids:
        raise SpecError("give at least one job id")
    resolved = []
    for given in job_ids:
        job_id = resolve_job_id(store, given)
        if job_id is None:
            raise SpecError(f"job {given}: no such job (or the prefix matches several; `medq status` lists them)")
        if job_id in resolved:
            raise SpecError(f"job {job_id} is given twice")
        resolved.append(job_id)
    with store.session() as s:
        jobs = [s.get(Job, job_id) for job_id in resolved]
        kinds = {job.kind for job in jobs}
        if REPORT_KIND in kinds:
            raise SpecError(f"job {next(j.id for j in jobs if j.kind == REPORT_KIND)} is itself a report")
        if len(kinds) > 1:
            listed = ", ".join(f"{j.id} is {_title(j.kind)}" for j in jobs)
            raise SpecError(f"a report puts jobs of one family side by side; these are of several: {listed}")
        (kind,) = kinds
        if kind == INFER_KIND and len(jobs) > 1:
            raise SpecError("an inference job's report covers one job: give one inference job id")
        for job in jobs:
            _has_something(s, job)
        if len(jobs) > 1:
            _same_test_split(jobs)
    return resolved, kind


def _title(kind: str) -> str:
    try:
        return f"{kind} ({family(kind).title})"
    except Exception:
        return kind


def _has_something(s, job: Job) -> None:
    if job.kind == INFER_KIND:
        ended = s.scalar(select(func.count()).where(Study.job_id == job.id, Study.state != "pending"))
        if not ended:
            raise SpecError(f"job {job.id} has nothing to show yet: no study done, failed or skipped")
        return
    epochs = s.scalar(select(func.count()).where(EpochRecord.job_id == job.id))
    results = s.scalar(select(func.count()).where(Result.job_id == job.id))
    if not epochs and not results:
        raise SpecError(f"job {job.id} has nothing to show yet: no epoch finished and no results "
                        f"(state {job.state}); try again once its first epoch has ended")


def _test_split(job: Job) -> tuple:
    """What names a job's test images: its test keys (stems, slice indexes) in its data folder,
    and any extra test folders the plan lists, by their full paths."""
    plan = job.plan or {}
    return (tuple(sorted((plan.get("split") or {}).get("test", []))), plan.get("data_dir"),
            tuple(sorted(plan.get("test_dirs", []))))


def _same_test_split(jobs: list[Job]) -> None:
    first = _test_split(jobs[0])
    for job in jobs[1:]:
        other = _test_split(job)
        if other != first:
            only_a, only_b = set(first[0]) - set(other[0]), set(other[0]) - set(first[0])
            raise SpecError(
                f"jobs {jobs[0].id} and {job.id} have different test splits ({len(first[0])} and {len(other[0])} "
                f"images, {len(only_a)} only in the first, {len(only_b)} only in the second"
                + (f", data folders {first[1]} and {other[1]}" if first[1] != other[1] else "")
                + (", different extra test sets" if first[2] != other[2] else "")
                + "): a side-by-side comparison needs the same test images (the same data and split seed)")
