"""Sending work by task name: the submitter, the reaper and the workers all go through here.

A message carries the row id its task works on (its one positional argument) and, as keyword
arguments, what a person reading ``celery inspect active`` or Flower needs to know which work
it is: the job id and kind, and a member's seed or a chunk's index. Those are JSON and only
informational: the task loads everything it uses from the store by the row id.
"""

from __future__ import annotations

from medq.common.specs import INFER_KIND, REPORT_KIND
from medq.common.store.inference import ChunkRef
from medq.tasks import names


def send_member(app, member_id: int, queue: str | None = None, admission: int | None = None, *,
                job: str = "", kind: str = "", seed: int | None = None) -> None:
    """A member's message: to the worker's own ``queue`` with the store's ``admission`` number
    (common/store/admission.py); ``job``, ``kind`` and ``seed`` name it in Celery and Flower."""
    kwargs = {"admission": admission} if admission is not None else {}
    kwargs.update(_readable(job, kind, seed=seed))
    app.send_task(names.TRAIN_MEMBER, args=[member_id], kwargs=kwargs, **({"queue": queue} if queue else {}))


# The one task of a job that has no members or chunks, by job kind: a training job's evaluation
# on the GPU queue, a report on the report queue (every worker takes it when free).
JOB_TASKS = {REPORT_KIND: (names.RENDER_REPORT, names.REPORT_QUEUE)}


def send_evaluation(app, job_id: str, kind: str | None = None) -> None:
    """A training job's evaluation, or a report job's rendering (``kind`` REPORT_KIND). Its one
    argument is the job id, which already says which job it is."""
    task, queue = JOB_TASKS.get(kind, (names.EVALUATE_JOB, None))
    app.send_task(task, args=[job_id], **({"queue": queue} if queue else {}))


def send_chunk(app, chunk_id: int, priority: str) -> None:
    """A chunk's message to its priority's queue; a ``ChunkRef`` (what the store's chunk
    senders get) also names its job and index."""
    kwargs = _readable(chunk_id.job_id, INFER_KIND, chunk=chunk_id.index) if isinstance(chunk_id, ChunkRef) else {}
    app.send_task(names.INFER_CHUNK, args=[int(chunk_id)], kwargs=kwargs, queue=names.INFER_QUEUES[priority])


def _readable(job: str, kind: str, **which) -> dict:
    """The informational keyword arguments, leaving out what the sender does not know."""
    return {key: value for key, value in {"job": job, "kind": kind, **which}.items() if value not in (None, "")}


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
