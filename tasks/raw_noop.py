"""A plain Celery app with Celery's defaults: the 'raw Celery' baseline of `medq bench queue`."""

import os

from celery import Celery

raw = Celery("raw", broker=os.environ.get("RAW_BROKER_URL"), backend=os.environ.get("RAW_BACKEND_URL"))


@raw.task(name="raw.noop")
def noop(i: int) -> int:
    return i
