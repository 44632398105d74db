"""The one lock that makes "this job is complete" a decision taken exactly once.

Every transaction that may end a member, a chunk or the job itself locks the job's row first
(``SELECT ... FOR NO KEY UPDATE`` on PostgreSQL, which leaves the key-share locks of rows that
reference the job, such as new study or result rows, free to go; SQLite's ``BEGIN IMMEDIATE`` already lets one writer in
at a time). Under READ COMMITTED two finishers that each updated their own row would otherwise
both read the other's row as still running, and nobody would close the job. With the lock the
second waits, and its next statement sees the first one's commit.

Lock order everywhere: the job, then its members or chunks; never the other way round.
"""

from __future__ import annotations

from typing import Callable, Iterable, TypeVar

from sqlalchemy import select

from medq.common.store.db import Store
from medq.common.store.models import Job

T = TypeVar("T")


def locked_job(s, job_id: str) -> Job | None:
    """The job row, locked until the transaction ends, with its columns read after the lock."""
    return s.scalars(select(Job).where(Job.id == job_id).with_for_update(key_share=True)  # FOR NO KEY UPDATE
                     .execution_options(populate_existing=True)).one_or_none()


def row_and_locked_job(s, model, row_id: int):
    """(row, its job) with the job locked first and the row read after the lock; (None, None)
    when there is no such row. ``model`` is Member or Chunk (anything with a ``job_id``)."""
    job_id = s.scalar(select(model.job_id).where(model.id == row_id))
    if job_id is None:
        return None, None
    job = locked_job(s, job_id)
    return s.get(model, row_id, populate_existing=True), job


def each_job_locked(store: Store, job_ids: Iterable[str], work: Callable[[object, Job], list[T]]) -> list[T]:
    """``work(session, job)`` for each job in id order, each in a transaction of its own that holds
    the job's row lock, so the reaper's repairs take the locks in the same order as everyone else
    (the job, then its rows) and two reapers take jobs in the same order. Vanished jobs are skipped."""
    done: list[T] = []
    for job_id in sorted(set(job_ids)):
        with store.session() as s:
            job = locked_job(s, job_id)
            if job is not None:
                done.extend(work(s, job))
    return done
