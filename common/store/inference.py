"""Store operations of bulk inference jobs: planning rows, chunk leases, study records.

Study rows are written in batches (constant memory for any archive size). Every write is
guarded so that a redelivered chunk, a resumed job or a second reaper never does a study twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, Callable, Iterable, Iterator

from sqlalchemy import func, insert, select, update

from medq.common.inference.study_paths import StudyPaths
from medq.common.specs import INFER_KIND
from medq.common.store.db import Store
from medq.common.store.locking import each_job_locked, locked_job, row_and_locked_job
from medq.common.store.models import Chunk, Job, Send, State, Study, utcnow
from medq.common.store.sends import add_sends, failed_sends, retry_failed
from medq.common.store.counters import bump
from medq.common.windows import window_open

BATCH = 1000
CHUNK_ENDED = ("succeeded", "failed", "cancelled")


class ChunkRef(int):
    """The chunk id a chunk sender gets (``send(chunk_id, priority)``), naming the chunk as well
    (its job and index) so that its message can say which chunk it is in Celery and Flower. It
    is the row's id everywhere else: a sender, or a caller of the functions returning these,
    that needs only the id uses it as an int."""

    def __new__(cls, chunk_id: int, job_id: str, index: int) -> "ChunkRef":
        ref = super().__new__(cls, chunk_id)
        ref.job_id, ref.index = job_id, index
        return ref


def create_infer_job(store: Store, job_id: str, spec: dict[str, Any], plan: dict[str, Any], priority: str,
                     window: str | None, project: str | None = None) -> None:
    with store.session() as s:
        s.add(Job(id=job_id, kind=INFER_KIND, spec=spec, plan=plan, priority=priority, window=window,
                  project=project))


@dataclass(frozen=True)
class PlannedStudy:
    path: str
    state: str = "pending"  # or failed / skipped, decided at enumeration
    reason: str | None = None


def add_studies(store: Store, job_id: str, studies: Iterable[PlannedStudy], chunk_size: int,
                done_elsewhere: Callable[[list[str]], dict[str, str]] | None = None,
                paths: StudyPaths = StudyPaths()) -> tuple[int, int]:
    """Insert the studies in batches, numbering chunks as they come; returns (studies, chunks).

    ``done_elsewhere(hashes)`` maps the hashes already done by an earlier job to its id
    (--skip-done); those studies are recorded as skipped and take no chunk slot. ``paths``
    (MEDQ_STUDY_PATHS) says what of each path is kept, and how studies are keyed.
    """
    total, pending, batch = 0, 0, []
    key, shown, seal = paths.hasher(), paths.shower(), paths.sealer()

    def flush() -> None:
        if not batch:
            return
        seen = done_elsewhere([row["path_hash"] for row in batch]) if done_elsewhere else {}
        nonlocal pending
        _distinct_keys(store, job_id, batch, key)
        now = utcnow()
        for row in batch:
            if row["path_hash"] in seen and row["state"] == "pending":
                row["state"], row["reason"] = "skipped", f"already done by job {seen[row['path_hash']]}"
            if row["state"] == "pending":
                row["chunk_index"] = pending // chunk_size
                pending += 1
            else:
                row["chunk_index"] = -1  # nothing to run
            row["updated_at"] = now
            path = row["path"]
            row["path"], row["sealed_path"] = shown(path), seal(path)
        with store.session() as s:
            s.execute(insert(Study), batch)
        batch.clear()

    for study in studies:
        batch.append({"job_id": job_id, "path": study.path, "path_hash": key(study.path),
                      "state": study.state, "reason": study.reason, "row": total})
        total += 1
        if len(batch) >= BATCH:
            flush()
    flush()
    n_chunks = -(-pending // chunk_size)
    with store.session() as s:
        job = locked_job(s, job_id)
        sizes = dict(s.execute(select(Study.chunk_index, func.count()).where(Study.job_id == job_id,
                                                                            Study.chunk_index >= 0)
                               .group_by(Study.chunk_index)).all())
        if n_chunks:
            s.execute(insert(Chunk), [{"job_id": job_id, "index": i, "n_studies": sizes.get(i, 0),
                                       "state": "waiting"} for i in range(n_chunks)])
            if job.cancel_requested:  # cancelled while it was being planned
                cancel_chunks(s, job, utcnow())
        else:  # nothing to run: every file was refused at enumeration or done before
            job.state = State.CANCELLED.value if job.cancel_requested else State.SUCCEEDED.value
            job.finished_at = utcnow()
    return total, n_chunks


DUPLICATE = "duplicate name in archive: the first file of this name is the study"


def _distinct_keys(store: Store, job_id: str, batch: list[dict[str, Any]], key: Callable[[str], str]) -> None:
    """A name seen before in this job (two members of one name in a tar or zip) keeps its row
    apart under a key of its own, skipped with the reason; the first of the name is the study
    (``read`` returns the first, too). One query per batch: memory stays flat."""
    hashes = [row["path_hash"] for row in batch]
    with store.session() as s:
        taken = set(s.scalars(select(Study.path_hash).where(Study.job_id == job_id, Study.path_hash.in_(hashes))))
    for row in batch:
        number = row.pop("row")
        if row["path_hash"] in taken:
            row["path_hash"] = key(f"{row['path']}\0duplicate {number}")
            if row["state"] == "pending":
                row["state"], row["reason"] = "skipped", DUPLICATE
        taken.add(row["path_hash"])


def done_by_earlier_jobs(store: Store, archive: str, checkpoints: list[str], job_id: str):
    """For --skip-done: a lookup of hashes done by earlier jobs on the same archive and model."""
    with store.session() as s:
        earlier = [j.id for j in s.scalars(select(Job).where(Job.kind == INFER_KIND, Job.id != job_id))
                   if j.spec.get("archive") == archive and list(j.spec.get("checkpoints", [])) == checkpoints]

    def lookup(hashes: list[str]) -> dict[str, str]:
        if not earlier:
            return {}
        with store.session() as s:
            rows = s.execute(select(Study.path_hash, Study.job_id).where(
                Study.job_id.in_(earlier), Study.path_hash.in_(hashes), Study.state == "done")).all()
        return {h: j for h, j in rows}

    return lookup


def dispatch_chunks(store: Store, now_local: time, send: Callable[[int, str], None],
                    job_id: str | None = None) -> int:
    """Queue the waiting chunks of every inference job whose window is open (or lifted).

    ``send(chunk_id, priority)`` (a ``ChunkRef``) is called after the commit (outbox order): a worker that
    receives a chunk finds it queued. A send that fails leaves its chunk queued without a
    message, and the resend sweep sends it once its queue is empty."""
    now = utcnow()
    query = select(Job.id).where(Job.kind == INFER_KIND, Job.state.in_(["queued", "running"]),
                                 Job.cancel_requested.is_(False))
    with store.session() as s:
        job_ids = list(s.scalars(query.where(Job.id == job_id) if job_id else query))

    def queue(s, job) -> list[tuple[int, str]]:
        if State(job.state).ended or job.cancel_requested or not (job.window_lifted or
                                                                 window_open(job.window, now_local)):
            return []
        queued = s.execute(update(Chunk).where(Chunk.job_id == job.id, Chunk.state == "waiting")
                           .values(state="queued", updated_at=now).returning(Chunk.id, Chunk.index)
                           .execution_options(synchronize_session=False)).all()
        return [(ChunkRef(chunk_id, job.id, index), job.priority or "normal") for chunk_id, index in sorted(queued)]

    todo = each_job_locked(store, job_ids, queue)
    for chunk_id, priority in todo:
        send(chunk_id, priority)
    return len(todo)


@dataclass(frozen=True)
class ChunkClaim:
    run: bool
    reason: str = ""
    job_id: str = ""
    index: int = 0
    spec: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None


def claim_chunk(store: Store, chunk_id: int, owner: str, worker: str, device: str, lease_seconds: int,
                max_attempts: int, now_local: time) -> ChunkClaim:
    now = utcnow()
    with store.session() as s:
        chunk, job = row_and_locked_job(s, Chunk, chunk_id)
        if chunk is None:
            return ChunkClaim(False, f"chunk {chunk_id} does not exist")
        if chunk.state in CHUNK_ENDED:
            return ChunkClaim(False, f"chunk already {chunk.state}")
        if job.cancel_requested:
            chunk.state, chunk.finished_at = State.CANCELLED.value, now
            close_job(s, job, now)
            return ChunkClaim(False, "job cancelled")
        if chunk.state == "running" and chunk.lease_owner == owner:
            # a claim retried after its commit, or the retry of a task that held its chunk (hold_chunk)
            chunk.lease_expires_at, chunk.updated_at = now + timedelta(seconds=lease_seconds), now
            return ChunkClaim(True, job_id=job.id, index=chunk.index, spec=job.spec, plan=job.plan)
        if chunk.state == "running" and chunk.lease_expires_at and chunk.lease_expires_at > now:
            return ChunkClaim(False, f"running on {chunk.worker} with a live lease")
        if not (job.window_lifted or window_open(job.window, now_local)):
            chunk.state, chunk.updated_at = "waiting", now  # the window closed: wait for the next one
            return ChunkClaim(False, "outside the job's window; waiting for it to open")
        if chunk.attempts >= max_attempts:
            chunk.state, chunk.finished_at = State.FAILED.value, now
            chunk.error = f"gave up after {chunk.attempts} attempts" + (f" (last: {chunk.error})" if chunk.error else "")
            close_job(s, job, now)
            return ChunkClaim(False, chunk.error)
        taken = s.execute(update(Chunk).where(Chunk.id == chunk_id, Chunk.attempts == chunk.attempts).values(
            state="running", attempts=chunk.attempts + 1, lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds), worker=worker, device=device,
            started_at=chunk.started_at or now, updated_at=now).execution_options(synchronize_session=False)).rowcount
        if taken != 1:
            return ChunkClaim(False, "another worker took it first")
        if chunk.attempts:  # an earlier attempt ended unfinished
            bump(s, "redeliveries", "chunk")
        if job.state == State.QUEUED.value or job.started_at is None:
            job.state, job.started_at = State.RUNNING.value, job.started_at or now
        return ChunkClaim(True, job_id=job.id, index=chunk.index, spec=job.spec, plan=job.plan)


def renew_chunk_lease(store: Store, chunk_id: int, owner: str, lease_seconds: int) -> bool:
    now = utcnow()
    with store.session() as s:
        return s.execute(update(Chunk).where(Chunk.id == chunk_id, Chunk.lease_owner == owner,
                                             Chunk.state == "running")
                         .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
                         .execution_options(synchronize_session=False)).rowcount == 1


def hold_chunk(store: Store, chunk_id: int, owner: str, seconds: float, note: str) -> bool:
    """A chunk whose task met a transient fault, kept for that task's retry: its lease runs for
    ``seconds`` more (the retry's countdown and a lease; no heartbeat meanwhile), so neither the
    reaper nor another worker takes it before the retry, which claims it back as the same owner
    without counting an attempt. Its studies not yet recorded stay pending. Should the retry
    never come (its message lost with its worker), the lease lapses and the reaper queues the
    chunk again. ``note`` (why, and when it runs again) shows as the chunk's error meanwhile.
    False: the chunk is not ours any more."""
    now = utcnow()
    with store.session() as s:
        held = s.execute(update(Chunk).where(Chunk.id == chunk_id, Chunk.lease_owner == owner,
                                             Chunk.state == "running")
                         .values(lease_expires_at=now + timedelta(seconds=seconds), error=note, updated_at=now)
                         .execution_options(synchronize_session=False)).rowcount == 1
        if held:
            bump(s, "transient_retries", "chunk")
        return held


def pending_studies(store: Store, job_id: str, chunk_index: int) -> list[tuple[int, str, str | None, str]]:
    """The chunk's studies not yet done, as (id, path, sealed path, key): a redelivered or resumed
    chunk does only these. ``StudyPaths.opener()`` turns path and sealed path into the file's."""
    with store.session() as s:
        return list(s.execute(select(Study.id, Study.path, Study.sealed_path, Study.path_hash).where(
            Study.job_id == job_id, Study.chunk_index == chunk_index, Study.state == "pending")
            .order_by(Study.id)).all())


def record_studies(store: Store, records: list[dict[str, Any]], send_job: str | None = None) -> int:
    """One transaction for a batch of outcomes; only studies still pending are written. With
    ``send_job`` (a job with --send-to), each DICOM output of a done study gets its pending
    send row in the same transaction (``sends.py``)."""
    now = utcnow()
    written = 0
    with store.session() as s:
        for r in records:
            wrote = s.execute(update(Study).where(Study.id == r["study_id"], Study.state == "pending").values(
                state=r["state"], reason=r.get("reason"), study_uid=r.get("study_uid"),
                series_uid=r.get("series_uid"), sop_uid=r.get("sop_uid"), source_format=r.get("source_format"),
                width=r.get("width"), height=r.get("height"), result=r.get("result"), qc_flag=r.get("qc_flag"),
                updated_at=now).execution_options(synchronize_session=False)).rowcount
            if wrote and send_job and r["state"] == "done":
                add_sends(s, send_job, r["study_id"], r.get("result"))
            written += wrote
    return written


def finish_chunk(store: Store, chunk_id: int, owner: str, state: str, error: str | None = None) -> bool:
    """Record a chunk's end (and its job's, when it was the last); False: the chunk is not ours."""
    now = utcnow()
    with store.session() as s:
        chunk, job = row_and_locked_job(s, Chunk, chunk_id)
        if chunk is None or chunk.lease_owner != owner:
            return False
        chunk.state, chunk.error, chunk.updated_at = state, error, now
        chunk.lease_owner = chunk.lease_expires_at = None
        if state in CHUNK_ENDED:
            chunk.finished_at = now
        close_job(s, job, now)
        return True


def close_job(s, job: Job, now: datetime) -> None:
    """An inference job ends when every chunk has ended (the caller holds the job's row lock)."""
    s.flush()
    states = [c for (c,) in s.execute(select(Chunk.state).where(Chunk.job_id == job.id)).all()]
    if not states or any(state not in CHUNK_ENDED for state in states) or State(job.state).ended:
        return
    unsent, answer = failed_sends(s, job.id)
    if job.cancel_requested:
        job.state = State.CANCELLED.value
    elif "failed" in states:
        job.state = State.FAILED.value
        job.error = f"{states.count('failed')} chunk(s) failed; `medq resume {job.id}` retries their studies"
    elif unsent:
        job.state = State.FAILED.value
        job.error = (f"{unsent} DICOM output(s) not accepted by the PACS (first: {answer}); they are kept under "
                     f"--out, and `medq resume {job.id}` sends them again")
    else:
        job.state = State.SUCCEEDED.value
    job.finished_at = now


def fail_open_chunks(s, job_id: str, reason: str, now: datetime) -> None:
    """Every chunk of the job not yet ended fails with ``reason`` (its job could not be enqueued)."""
    s.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.state.not_in(CHUNK_ENDED))
              .values(state="failed", error=reason, finished_at=now, updated_at=now, lease_owner=None,
                      lease_expires_at=None).execution_options(synchronize_session=False))


def resume_job(store: Store, job_id: str) -> int:
    """Lift the window and give every unfinished chunk with pending studies another go."""
    with store.session() as s:
        job = locked_job(s, job_id)
        job.window_lifted = True
        pending = {i for (i,) in s.execute(select(Study.chunk_index).where(
            Study.job_id == job_id, Study.state == "pending").distinct()).all()}
        unsent = retry_failed(s, job_id)  # outputs the PACS did not accept: sent again
        reopened = 0
        for chunk in s.scalars(select(Chunk).where(Chunk.job_id == job_id)):
            if (chunk.index in pending and chunk.state in ("failed", "cancelled", "waiting")) or \
                    (chunk.index in unsent and chunk.state in CHUNK_ENDED):
                chunk.state, chunk.attempts, chunk.error, chunk.finished_at = "waiting", 0, None, None
                reopened += 1
        if reopened:
            job.started_at = None  # throughput and time left count from the restart
            if State(job.state).ended:
                job.state, job.finished_at, job.error = State.QUEUED.value, None, None
                job.cancel_requested = False
        return reopened


def study_counts(store: Store, job_id: str) -> dict[str, int]:
    with store.session() as s:
        return dict(s.execute(select(Study.state, func.count()).where(Study.job_id == job_id)
                              .group_by(Study.state)).all())


def job_spec_and_plan(store: Store, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """An inference job's spec and plan (the plan names the model's family, ``plan["family"]``)."""
    with store.session() as s:
        job = s.get(Job, job_id)
        return dict(job.spec or {}), dict(job.plan or {})


def iter_studies(store: Store, job_id: str, states: tuple[str, ...] | None = None) -> Iterator[Study]:
    """Every study of a job in order, streamed in batches (for CSV export)."""
    last = 0
    while True:
        with store.session() as s:
            query = select(Study).where(Study.job_id == job_id, Study.id > last)
            if states:
                query = query.where(Study.state.in_(states))
            rows = list(s.scalars(query.order_by(Study.id).limit(BATCH)))
        if not rows:
            return
        yield from rows
        last = rows[-1].id


def iter_unsuccessful(store: Store, job_id: str) -> Iterator[Study]:
    """Each failed or skipped study with its reason, then each study left pending by a chunk that
    failed as a whole, with the chunk's reason (``medq resume`` runs them again), then each done
    study with an output the PACS did not accept (``medq resume`` sends it again)."""
    yield from iter_studies(store, job_id, ("failed", "skipped"))
    with store.session() as s:
        failed = dict(s.execute(select(Chunk.index, Chunk.error).where(Chunk.job_id == job_id,
                                                                      Chunk.state == "failed")).all())
    for study in (iter_studies(store, job_id, ("pending",)) if failed else ()):
        if study.chunk_index in failed:
            study.reason = f"not run: its chunk {study.chunk_index} failed ({failed[study.chunk_index]})"
            yield study  # a detached row: the changed reason is for the output only
    with store.session() as s:  # done, but an output the PACS did not accept (its `sent` column says why)
        unsent = list(s.scalars(select(Study).where(Study.id.in_(
            select(Send.study_id).where(Send.job_id == job_id, Send.state == "failed"))).order_by(Study.id)))
    yield from unsent


def cancel_chunks(s, job: Job, now: datetime) -> None:
    """Waiting and queued chunks end now; running ones stop at their next batch."""
    for chunk in s.scalars(select(Chunk).where(Chunk.job_id == job.id, Chunk.state.in_(["waiting", "queued"]))):
        chunk.state, chunk.finished_at = State.CANCELLED.value, now
    close_job(s, job, now)
