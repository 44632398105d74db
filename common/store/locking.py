"""The one lock that makes "this job is complete" a decision taken exactly once.

Every transaction that may end a member, a chunk or the job itself locks the job's row first
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already lets one writer in
at a time). Under READ COMMITTED two finishers that each updated their own row would otherwise
both read the other's row as still running, and nobody would close the job. With the lock the
second waits, and its next statement sees the first one's commit.

Lock order everywhere: the job, then its members or chunks; never the other way round.
"""

from __future__ import annotations

from sqlalchemy import select

from common.store.models import Job


def locked_job(s, job_id: str) -> Job | None:
    """The job row, locked until the transaction ends, with its columns read after the lock."""
    return s.scalars(select(Job).where(Job.id == job_id).with_for_update()
                     .execution_options(populate_existing=True)).one_or_none()
