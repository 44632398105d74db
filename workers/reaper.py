"""The launcher's periodic round: re-enqueue members and chunks whose worker died (lease lapsed)
within about a minute instead of waiting hours for Redis's visibility timeout, send lost
evaluations again, and queue inference chunks whose window has opened. Safe to run in every
launcher: each row is taken with a guarded update."""

from __future__ import annotations

import logging

from common.store import jobs
from common.store.db import Store
from tasks.send import send_chunk, send_evaluation, send_member

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
    return lapsed, evaluations


def dispatch_and_reap_chunks(store: Store, app) -> tuple[int, list[int]]:
    """Queue waiting chunks of inference jobs whose window is open; re-enqueue lapsed ones."""
    from datetime import datetime

    from common.store import inference

    sent = inference.dispatch_chunks(store, datetime.now().time(), lambda cid, prio: send_chunk(app, cid, prio))
    lapsed = inference.reap_lapsed_chunks(store, lambda cid, prio: send_chunk(app, cid, prio))
    for chunk_id in lapsed:
        log.warning("chunk %s: lease lapsed; re-enqueued (its done studies are not redone)", chunk_id)
    return sent, lapsed
