"""Finds members whose worker died (lease lapsed) and re-enqueues them within about a minute,
instead of waiting hours for Redis's visibility timeout. Safe to run in every launcher."""

from __future__ import annotations

import logging

from common.store import jobs
from common.store.db import Store
from tasks import names

log = logging.getLogger("medq.reaper")


def reap_once(store: Store, app) -> tuple[list[jobs.Lapsed], list[str]]:
    lapsed = jobs.reap_lapsed_members(store, lambda member_id: app.send_task(names.TRAIN_MEMBER, args=[member_id]))
    for item in lapsed:
        log.warning("job %s seed %s: lease lapsed on %s; re-enqueued (it resumes from its checkpoint)",
                    item.job_id, item.seed, item.worker)
    evaluations = jobs.redispatch_evaluations(store, lambda job_id: app.send_task(names.EVALUATE_ENSEMBLE, args=[job_id]))
    for job_id in evaluations:
        log.warning("job %s: evaluation sent again (not taken, or its worker died)", job_id)
    return lapsed, evaluations
