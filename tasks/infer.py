"""The thin task of bulk inference: one chunk of an archive through its family's predictor.

Ids in; the chunk claimed; its pending studies through the one chunk loop
(``medq.common.inference.chunk``) with the predictor of the model's family, kept between
chunks (one model set per worker process); each batch's outcomes recorded; errors mapped:

- a JobError (a bad spec, an unreadable checkpoint, an archive gone): the chunk fails at once
  with its message;
- a transient fault (the database, the broker, I/O: ``errors.is_transient``): the chunk is held
  for this task's retry after 10, 60 and 300 s (``store.inference.hold_chunk``; its studies not
  yet recorded stay pending and the retry starts at the first of them); at the fourth fault the
  chunk fails with "gave up after 4 transient faults: <reason>";
- anything else: the chunk fails with the error's type and message, and the traceback is logged.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

from medq.common.errors import JobError, describe, is_transient, transient_reason
from medq.common.store import open_store
from medq.common.store import inference as store_ops
from medq.common.store.jobs import cancel_requested
from medq.tasks import names
from medq.tasks.app import app
from medq.tasks.runtime import Heartbeat, ProgressEvents, interrupted
from medq.tasks.store_retry import StoreUnavailable, recorded, retry_later, retrying

log = logging.getLogger("medq.worker")
BACKOFF_S = (10, 60, 300)  # seconds before each retry after a transient fault; then the chunk fails
_PREDICTOR: dict[tuple, object] = {}  # one model set per worker process, kept between chunks
NOT_THE_MODELS = ("archive", "chunk", "window", "priority", "skip_done", "loader_workers", "query", "send_to")


@app.task(name=names.INFER_CHUNK, bind=True)
def infer_chunk(self, chunk_id: int, owner: str | None = None, faults: int = 0, job: str = "", kind: str = "",
                chunk: int | None = None, **_readable) -> str:
    """``owner`` and ``faults`` come with a retry after a transient fault (``_retry``); ``job``,
    ``kind`` and ``chunk`` (its index) are for people reading Flower or ``celery inspect``."""
    settings = app.conf.medq_settings
    store = open_store(settings)
    owner = owner or uuid.uuid4().hex
    try:
        claim = retrying(f"claim chunk {chunk_id}", lambda: store_ops.claim_chunk(
            store, chunk_id, owner, self.request.hostname or settings.worker_label, settings.device,
            settings.lease_seconds, settings.max_attempts, settings.local_time()))
    except StoreUnavailable as exc:
        return retry_later(self, exc)
    if not claim.run:
        return f"skipped: {claim.reason}"
    events = ProgressEvents(self, settings.progress_interval)

    def progress(done: int, total: int) -> None:
        events.send(f"chunk {claim.index}: {done}/{total} studies", now=done == total, job_id=claim.job_id,
                    chunk=claim.index, studies_done=done, studies_total=total)

    beat = Heartbeat(settings, f"chunk {chunk_id}",
                     renew=lambda: store_ops.renew_chunk_lease(store, chunk_id, owner, settings.lease_seconds),
                     cancelled=lambda: cancel_requested(store, claim.job_id))
    try:
        with beat:
            stats = run_claimed_chunk(store, claim, settings, beat.should_stop, progress)
    except JobError as exc:
        return _finish(store, chunk_id, owner, "failed", str(exc))
    except Exception as exc:
        if interrupted(exc):
            raise
        if is_transient(exc):
            return _retry(self, store, chunk_id, owner, claim, faults, exc)
        log.exception("chunk %s of job %s crashed", claim.index, claim.job_id)
        return _finish(store, chunk_id, owner, "failed", describe(exc))  # the text may name a patient's file
    if beat.lease_lost.is_set():
        return "stood down: lease lost"
    state = _finish(store, chunk_id, owner, "cancelled" if beat.cancelled.is_set() else "succeeded")
    log.info("chunk %s of job %s: %s done, %s failed, %s skipped, %.1f studies/s", claim.index, claim.job_id,
             stats.done, stats.failed, stats.skipped, stats.studies_per_s)
    return state


def run_claimed_chunk(store, claim, settings, should_stop, progress=None):
    """The chunk's pending studies through its family's predictor, each batch recorded (and,
    with --send-to, its DICOM outputs stored on the PACS after the record); ``progress(done,
    total)`` after each batch: studies recorded in this run, of those pending at its start."""
    from medq.common.inference.chunk import run_chunk
    from medq.common.inference.sources import open_source
    from medq.common.inference.study_paths import StudyPaths
    from medq.common.specs import InferSpec

    spec = InferSpec.from_dict(claim.spec)
    pacs = _send_target(spec, settings)
    if pacs is not None:  # what an earlier attempt recorded but did not send
        send_pending(store, pacs, claim.job_id, claim.index, Path(spec.out_dir))
    opened = StudyPaths.for_job(claim.job_id, claim.plan or {}, settings).opener()  # JobError: not the job's key
    rows = retrying("read the chunk's studies",
                    lambda: store_ops.pending_studies(store, claim.job_id, claim.index))
    items = [(study_id, opened(path, sealed)) for study_id, path, sealed, _ in rows]
    if not items:  # reopened only to send (a resume after the PACS refused): no model needed
        from medq.common.inference.outcome import ChunkStats

        return ChunkStats(done=0, failed=0, skipped=0, seconds=0.0, studies_per_s=0.0)
    predictor = _predictor(spec, claim.plan or {})
    predictor.name_studies({study_id: key for study_id, _, _, key in rows})  # output files by study key
    archive = open_source(spec.archive, settings, spec.query, check=False)
    done = 0

    def record(outcomes) -> None:
        nonlocal done
        rows = [outcome.to_row() for outcome in outcomes]
        retrying("record studies", lambda: store_ops.record_studies(
            store, rows, claim.job_id if pacs is not None else None))
        if pacs is not None:
            send_pending(store, pacs, claim.job_id, claim.index, Path(spec.out_dir))
        done += len(rows)
        if progress is not None:
            progress(done, len(items))

    return run_chunk(items, archive, predictor, spec.loader_workers, record, should_stop)


def _send_target(spec, settings):
    if not spec.send_to:
        return None
    from medq.common.inference.dicomweb import PacsAccess, PacsClient, check_url

    return PacsClient(check_url(spec.send_to, "--send-to"), PacsAccess.from_settings(settings))


def send_pending(store, pacs, job_id: str, chunk_index: int, out_dir: Path) -> None:
    """Every pending send of the chunk stored on the PACS, each answer in the ledger."""
    from medq.common.inference.dicomweb import PacsError
    from medq.common.inference.stow import store_file
    from medq.common.store import sends

    refused: dict[int, str] = {}  # study -> its output the PACS refused in this pass
    away = ""  # the PACS did not answer in this pass: the rest are not tried until the next batch
    for item in retrying("read the chunk's sends", lambda: sends.pending_sends(store, job_id, chunk_index)):
        try:
            if away:
                raise PacsError(f"not tried: {away}")
            if item.study_id in refused:  # the SR refers to the SEG: not sent without it
                raise PacsError(f"not sent: its {refused[item.study_id]} was not accepted")
            state, answer = "accepted", store_file(pacs, out_dir / item.path)
        except PacsError as exc:
            state, answer = "failed", str(exc)
            refused.setdefault(item.study_id, item.output)
            away = away or (answer if exc.outage else "")
            log.warning("job %s: a %s output of study %s was not accepted by the PACS: %s", job_id, item.output,
                        item.study_id, answer)
        retrying("record a send", lambda: sends.record_send(store, item.id, state, answer, 1))


def _predictor(spec, plan: dict):
    """The family's predictor for this spec: built once, kept while the next chunk wants the same."""
    from medq.common.families import registry

    kind = plan.get("family") or registry.family_of_checkpoint(Path(spec.checkpoints[0])).kind
    key = (kind, json.dumps({k: v for k, v in spec.to_dict().items() if k not in NOT_THE_MODELS}, sort_keys=True))
    if key not in _PREDICTOR:
        for previous in _PREDICTOR.values():
            previous.close()
        _PREDICTOR.clear()
        _PREDICTOR[key] = registry.family(kind).inference.predictor(spec)
    return _PREDICTOR[key]


def _retry(task, store, chunk_id: int, owner: str, claim, faults: int, exc: BaseException) -> str:
    """A transient fault: the chunk held for a retry of this task after the next backoff, or,
    past the last, failed with the reason."""
    reason, count = transient_reason(exc), faults + 1
    if faults >= len(BACKOFF_S):
        log.error("chunk %s of job %s: transient fault %d (%s); giving up", claim.index, claim.job_id, count, reason)
        return _finish(store, chunk_id, owner, "failed", f"gave up after {count} transient faults: {reason}")
    delay = BACKOFF_S[faults]
    log.warning("chunk %s of job %s: transient fault %d of at most %d (%s); its pending studies run again in %d s",
                claim.index, claim.job_id, count, len(BACKOFF_S) + 1, reason, delay)
    lease = delay + task.app.conf.medq_settings.lease_seconds
    recorded(f"hold chunk {chunk_id} for its retry",
             lambda: store_ops.hold_chunk(store, chunk_id, owner, lease, f"transient fault {count}: {reason}; "
                                                                         f"trying again in {delay} s"),
             "its lease will lapse and the reaper queues it again")
    raise task.retry(args=[chunk_id], kwargs={**(task.request.kwargs or {}), "owner": owner, "faults": count},
                     countdown=delay, max_retries=None)


def _finish(store, chunk_id: int, owner: str, state: str, error: str | None = None) -> str:
    written = recorded(f"record the end of chunk {chunk_id}",
                       lambda: store_ops.finish_chunk(store, chunk_id, owner, state, error),
                       "its lease will lapse and its remaining studies run again")
    return "stood down: store unavailable" if written is None else state
