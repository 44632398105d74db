"""The admission dispatcher's send side: one round of the store's admission
(common/store/admission.py), then each admitted member's message to its worker's own queue.
Runs in every launcher, every ``MEDQ_ADMIT_INTERVAL`` seconds, and once at each submit.

A send that fails leaves the member admitted with no message; its admission lapses after
``MEDQ_RESEND_AFTER`` seconds and it is admitted again (the old number is then stale).
"""

from __future__ import annotations

import logging
from datetime import datetime

from medq.common.errors import brief
from medq.common.store import admission
from medq.common.store.db import Store
from medq.tasks.send import send_member

log = logging.getLogger("medq.dispatch")


def dispatch_once(store: Store, app, settings) -> admission.Round:
    decided = admission.admit(store, settings.sharing, datetime.now().time(), settings.worker_ttl)
    for item in decided.admitted:
        try:
            send_member(app, item.member_id, item.queue, item.admission, job=item.job_id, seed=item.seed)
        except Exception as exc:
            log.warning("member %s admitted to %s but not sent (%s); it is admitted again in %.0f s",
                        item.member_id, item.queue, brief(exc), settings.resend_after)
            continue
        log.info("job %s seed %s admitted to %s%s", item.job_id, item.seed, item.queue,
                 " (borrowing an idle worker beyond its project's quota)" if item.borrowed else "")
    for member_id, why in decided.preempted:
        log.warning("member %s asked to yield its worker (%s)", member_id, why)
    return decided
