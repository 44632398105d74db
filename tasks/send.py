"""Sending work by task name: the submitter, the reaper and the workers all go through here."""

from __future__ import annotations

from medq.common.specs import REPORT_KIND
from medq.tasks import names


def send_member(app, member_id: int, queue: str | None = None, admission: int | None = None, **readable) -> None:
    """A member's message: to the worker's own ``queue`` with the store's ``admission`` number
    (common/store/admission.py); ``readable`` (job, seed) names it in Flower."""
    kwargs = {"admission": admission, **readable} if admission is not None else readable
    app.send_task(names.TRAIN_MEMBER, args=[member_id], kwargs=kwargs, **({"queue": queue} if queue else {}))


# The one task of a job that has no members or chunks, by job kind: a training job's evaluation
# on the GPU queue, a report on the report queue (every worker takes it when free).
JOB_TASKS = {REPORT_KIND: (names.RENDER_REPORT, names.REPORT_QUEUE)}


def send_evaluation(app, job_id: str, kind: str | None = None) -> None:
    """A training job's evaluation, or a report job's rendering (``kind`` REPORT_KIND)."""
    task, queue = JOB_TASKS.get(kind, (names.EVALUATE_JOB, None))
    app.send_task(task, args=[job_id], **({"queue": queue} if queue else {}))


def send_chunk(app, chunk_id: int, priority: str) -> None:
    app.send_task(names.INFER_CHUNK, args=[chunk_id], queue=names.INFER_QUEUES[priority])


def queue_depth(app, queue: str) -> int:
    """Messages waiting in ``queue`` (not those a worker holds). A queue the broker does not
    know (Redis drops an empty list) holds none; an unreachable broker raises."""
    return queue_depths(app, [queue])[queue]


def queue_depths(app, queues) -> dict[str, int]:
    """``queue_depth`` of each of ``queues``, over one connection."""
    depths = {}
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        if hasattr(channel, "depths"):  # the embedded broker: one query for them all
            return channel.depths(queues)
        for queue in queues:
            try:
                depths[queue] = int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
            except conn.channel_errors:
                depths[queue] = 0
    return depths
