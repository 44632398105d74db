"""A task's writes to the store, retried through a short outage; past it, the store's own
recovery takes over, and the task ends without a traceback.

PostgreSQL restarting, a failover, a dropped connection: a task's claim, its recorded outcome
or a batch of study records is tried again for about 15 s. If the store is still away:
- a claim is retried later as a Celery retry (the message comes back), and after a few of
  those dropped: the row is still queued in the store, so the reaper's resend sweep sends it
  again once the store is back;
- an outcome that cannot be recorded is left: the attempt's lease lapses, the reaper gives the
  member (or chunk) to a worker again, and it resumes from its checkpoint (a chunk from its
  first study not yet recorded). Nothing is lost and nothing is done twice.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

from medq.common.errors import TransientError, brief, is_transient

log = logging.getLogger("medq.worker")
T = TypeVar("T")
DELAYS = (0.5, 1, 2, 4, 8)  # seconds between tries: about 15 s in all
CLAIM_RETRIES, CLAIM_COUNTDOWN = 10, 30  # a claim the store could not take: Celery retries, 30 s apart


class StoreUnavailable(TransientError):
    """The results store could not be reached for a write the task needed."""


def retrying(what: str, write: Callable[[], T]) -> T:
    """``write()``, tried again while the store is unreachable; StoreUnavailable past ``DELAYS``."""
    for attempt, delay in enumerate((*DELAYS, None)):
        try:
            return write()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if delay is None:
                raise StoreUnavailable(f"the store could not be reached to {what} ({brief(exc)})") from None
            if attempt == 0:
                log.warning("the store is unreachable to %s (%s); trying again for %.0f s", what, brief(exc),
                            sum(DELAYS))
            time.sleep(delay)
    raise AssertionError("unreachable")


def recorded(what: str, write: Callable[[], T], otherwise: str) -> T | None:
    """``write()`` through ``retrying``; when the store stays away, one log line saying what
    happens instead (``otherwise``: the lease lapses and ...) and None."""
    try:
        return retrying(what, write)
    except StoreUnavailable as exc:
        log.error("%s; %s", exc, otherwise)
        return None


def retry_later(task, exc: StoreUnavailable) -> str:
    """A claim the store could not take: a Celery retry (a new message) while retries are left,
    then the message is dropped: the store still says queued, and the resend sweep sends it."""
    if task.request.retries < CLAIM_RETRIES:
        raise task.retry(countdown=CLAIM_COUNTDOWN, max_retries=None)
    log.warning("%s; dropping the message: the reaper sends the work again once the store is back", exc)
    return "dropped: store unavailable"
