"""The admission dispatcher's send side: one round of the store's admission
(common/store/admission.py), then each admitted member's message to its worker's own queue.
Runs in every launcher, every ``MEDQ_ADMIT_INTERVAL`` seconds.

A send that fails withdraws the admission (the member waits for the next round); if the store
is away too, the admission lapses after ``MEDQ_RESEND_AFTER`` seconds. Only launchers run
rounds, so the shares and quotas are theirs (set them alike on every launcher).
"""

from __future__ import annotations

import logging

from medq.common.errors import brief
from medq.common.store import admission
from medq.common.store.db import Store
from medq.tasks.send import send_member

log = logging.getLogger("medq.dispatch")


def dispatch_once(store: Store, app, settings) -> admission.Round:
    decided = admission.admit(store, settings.sharing, settings.local_time(), settings.worker_ttl)
    for item in decided.admitted:
        try:
            send_member(app, item.member_id, item.queue, item.admission, job=item.job_id, kind=item.kind,
                        seed=item.seed)
        except Exception as exc:
            log.warning("member %s admitted to %s but not sent (%s); it waits for the next round",
                        item.member_id, item.queue, brief(exc))
            try:
                admission.withdraw(store, item.member_id, item.admission)
            except Exception:  # the store is away too: the admission lapses after MEDQ_RESEND_AFTER
                pass
            continue
        log.info("job %s seed %s admitted to %s%s", item.job_id, item.seed, item.queue,
                 " (borrowing an idle worker beyond its project's quota)" if item.borrowed else "")
    for member_id, why in decided.preempted:
        log.warning("member %s asked to yield its worker (%s)", member_id, why)
    return decided
