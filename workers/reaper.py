"""The launcher's periodic round: re-enqueue members and chunks whose worker died (lease lapsed)
within about a minute instead of waiting hours for Redis's visibility timeout, send lost
evaluations again, queue inference chunks whose window has opened, and send again the work the
broker lost (a queue found empty while the store still says its rows are queued). Safe to run
in every launcher: each row is taken with a guarded update, and a duplicate message is harmless."""

from __future__ import annotations

import logging

from common.store import jobs
from common.store.db import Store
from tasks import names
from tasks.send import queue_depth, send_chunk, send_evaluation, send_member

log = logging.getLogger("medq.reaper")


def reap_once(store: Store, app) -> tuple[list[jobs.Lapsed], list[str]]:
    lapsed = jobs.reap_lapsed_members(store, lambda member_id: send_member(app, member_id))
    for item in lapsed:
        log.warning("job %s seed %s: lease lapsed on %s; re-enqueued (it resumes from its checkpoint)",
                    item.job_id, item.seed, item.worker)
    evaluations = jobs.redispatch_evaluations(store, lambda job_id: send_evaluation(app, job_id))
    for job_id in evaluations:
        log.warning("job %s: evaluation sent again (not taken, or its worker died)", job_id)
    dispatch_and_reap_chunks(store, app)
    resend_lost(store, app, grace_s=app.conf.medq_settings.resend_after)
    return lapsed, evaluations


def resend_lost(store: Store, app, grace_s: float) -> tuple[list[int], list[int]]:
    """Rows queued for over ``grace_s`` whose queue holds no message: the broker lost them (a Redis
    restart without persistence drops every queue). A worker holds at most the one message it
    runs, which it claims within moments, so an empty queue means nothing is on its way."""
    from datetime import timedelta

    from common.store import inference
    from common.store.models import utcnow

    older_than = utcnow() - timedelta(seconds=grace_s)
    members: list[int] = []
    if queue_depth(app, names.GPU_QUEUE) == 0:
        members = jobs.resend_queued_members(store, older_than, lambda member_id: send_member(app, member_id))
        if members:
            log.warning("%d queued member(s) were not on the broker; sent again", len(members))
    chunks: list[int] = []
    for priority, queue in names.INFER_QUEUES.items():
        if queue_depth(app, queue) == 0:
            chunks += inference.resend_queued_chunks(store, priority, older_than,
                                                     lambda cid, prio: send_chunk(app, cid, prio))
    if chunks:
        log.warning("%d queued chunk(s) were not on the broker; sent again", len(chunks))
    return members, chunks


def dispatch_and_reap_chunks(store: Store, app) -> tuple[int, list[int]]:
    """Queue waiting chunks of inference jobs whose window is open; re-enqueue lapsed ones."""
    from datetime import datetime

    from common.store import inference

    sent = inference.dispatch_chunks(store, datetime.now().time(), lambda cid, prio: send_chunk(app, cid, prio))
    lapsed = inference.reap_lapsed_chunks(store, lambda cid, prio: send_chunk(app, cid, prio))
    for chunk_id in lapsed:
        log.warning("chunk %s: lease lapsed; re-enqueued (its done studies are not redone)", chunk_id)
    return sent, lapsed
