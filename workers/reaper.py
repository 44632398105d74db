"""The launcher's periodic round: put members whose worker died (lease lapsed) back to wait for
admission and re-enqueue such chunks, within about a minute instead of waiting hours for
Redis's visibility timeout; admit again members whose admission nobody took; send lost
evaluations again, queue inference chunks whose window has opened, ask training to yield to
inference that waits for a worker (common/store/preemption.py), send again the work the
broker lost (a queue found empty while the store still says its rows are queued), and close
jobs whose every member or chunk has ended but which were left open. Safe to run in every
launcher: each row is taken with a guarded update, and a duplicate message is harmless."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from medq.common.store import admission, inference, preemption, recovery, retention
from medq.common.store.db import Store
from medq.common.store.models import utcnow
from medq.tasks import names
from medq.tasks.send import queue_depth, send_chunk, send_evaluation

log = logging.getLogger("medq.reaper")


def reap_once(store: Store, app) -> tuple[list[recovery.Lapsed], list[str]]:
    lapsed = recovery.reap_lapsed_members(store)  # back to waiting: the dispatcher admits them again
    for item in lapsed:
        if item.cancelled:
            log.warning("job %s seed %s: lease lapsed on %s while the job was being cancelled; ended as cancelled",
                        item.job_id, item.seed, item.worker)
        else:
            log.warning("job %s seed %s: lease lapsed on %s; re-enqueued (it resumes from its checkpoint)",
                        item.job_id, item.seed, item.worker)
    evaluations = recovery.redispatch_evaluations(store, lambda job_id, kind: send_evaluation(app, job_id, kind))
    for job_id in evaluations:
        log.warning("job %s: evaluation sent again (not taken, or its worker died)", job_id)
    dispatch_and_reap_chunks(store, app)
    resend_lost(store, app, grace_s=app.conf.medq_settings.resend_after)
    close_stalled(store, app)
    try:  # last: a fault here must not cost the round its repairs
        preempt_for_inference(store, app.conf.medq_settings)
    except Exception as exc:
        log.warning("could not look for inference waiting on training (%s); next round", type(exc).__name__)
    collect_garbage(store, app.conf.medq_settings)
    return lapsed, evaluations


GC_EVERY_S = 3600.0
_gc = {"last": None, "thread": None}  # this process's last collection (monotonic) and its thread


def collect_garbage(store: Store, settings, now: float | None = None, wait: bool = False) -> int:
    """With ``MEDQ_RETENTION_DAYS`` set: once an hour, what `medq gc` removes by default (resume
    checkpoints of succeeded members of jobs that ended that long ago, half-written files), in a
    thread of its own: a walk of a large shared artifact root must not hold up the launcher's
    round (its health answer, its workers' liveness). Every launcher may do it; a file another
    took first is skipped. Returns the bytes freed when ``wait``, else 0."""
    now = time.monotonic() if now is None else now
    running = _gc["thread"] is not None and _gc["thread"].is_alive()
    if not settings.retention_days or running or (_gc["last"] is not None and now - _gc["last"] < GC_EVERY_S):
        return 0
    _gc["last"] = now
    freed: list[int] = []
    _gc["thread"] = threading.Thread(target=lambda: freed.append(_collect(store, settings)), name="medq-gc",
                                     daemon=True)
    _gc["thread"].start()
    if wait:
        _gc["thread"].join()
        return freed[0] if freed else 0
    return 0


def _collect(store: Store, settings) -> int:
    try:
        removals = retention.plan(store, settings.artifacts, timedelta(days=settings.retention_days))
        freed = retention.remove(store, removals)
    except Exception as exc:
        log.warning("could not collect old artifacts (%s); in an hour", type(exc).__name__)
        return 0
    if removals:
        log.info("retention: removed %d old resume checkpoint(s) and partial file(s), freed %s",
                 len(removals), retention.human(freed))
    return freed


def preempt_for_inference(store: Store, settings) -> list[tuple[int, str]]:
    """High-priority inference chunks that waited past ``MEDQ_PREEMPT_GRACE`` with no worker free to take them:
    the sharing policy picks the training members that yield (their next step's checkpoint)."""
    asked = preemption.preempt_for_waiting(store, settings.sharing, timedelta(seconds=settings.preempt_grace),
                                           settings.local_time())
    for member_id, reason in asked:
        log.warning("member %s asked to yield its worker (%s)", member_id, reason)
    return asked


def resend_lost(store: Store, app, grace_s: float) -> tuple[list[int], list[int]]:
    """Members admitted for over ``grace_s`` and not taken, or admitted to a worker no longer live,
    are admitted again. Chunks and evaluations queued for over ``grace_s`` whose queue holds no
    message: the broker lost them (a Redis restart without persistence drops every queue, or a
    send failed after its commit). A worker holds the one message it runs, which it claims within
    moments, and at most a member's own retry with a countdown, so an empty queue means nothing
    of these is on its way."""
    older_than = utcnow() - timedelta(seconds=grace_s)
    members = admission.lapse_admissions(store, older_than, ttl=app.conf.medq_settings.worker_ttl)
    if members:
        log.warning("%d member(s) admitted but not taken (their worker is gone, or not taken within %.0f s); "
                    "admitted again", len(members), grace_s)
    if queue_depth(app, names.GPU_QUEUE) == 0:
        for job_id in recovery.redispatch_evaluations(store, lambda job_id, kind: send_evaluation(app, job_id, kind),
                                                      queue_empty_since=older_than, reports=False):
            log.warning("job %s: its evaluation was not on the broker; sent again", job_id)
    if queue_depth(app, names.REPORT_QUEUE) == 0:
        for job_id in recovery.redispatch_evaluations(store, lambda job_id, kind: send_evaluation(app, job_id, kind),
                                                      queue_empty_since=older_than, reports=True):
            log.warning("report %s was not on the broker; sent again", job_id)
    chunks: list[int] = []
    for priority, queue in names.INFER_QUEUES.items():
        if queue_depth(app, queue) == 0:
            chunks += recovery.resend_queued_chunks(store, priority, older_than,
                                                     lambda cid, prio: send_chunk(app, cid, prio))
    if chunks:
        log.warning("%d queued chunk(s) were not on the broker; sent again", len(chunks))
    return members, chunks


def dispatch_and_reap_chunks(store: Store, app) -> tuple[int, list[int]]:
    """Queue waiting chunks of inference jobs whose window is open; re-enqueue lapsed ones."""
    sent = inference.dispatch_chunks(store, app.conf.medq_settings.local_time(),
                                      lambda cid, prio: send_chunk(app, cid, prio))
    lapsed = recovery.reap_lapsed_chunks(store, lambda cid, prio: send_chunk(app, cid, prio))
    for chunk_id in lapsed:
        log.warning("chunk %s: lease lapsed; re-enqueued (its done studies are not redone)", chunk_id)
    return sent, lapsed


def close_stalled(store: Store, app) -> list[str]:
    """Jobs whose members or chunks have all ended but which are still open: closed now."""
    repaired = recovery.close_stalled_jobs(store, lambda job_id: send_evaluation(app, job_id))
    repaired += recovery.close_stalled_infer_jobs(store)
    for job_id in repaired:
        log.warning("job %s: every member or chunk had ended but the job was still open; closed it", job_id)
    return repaired
