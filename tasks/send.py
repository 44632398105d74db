"""Sending work by task name: the submitter, the reaper and the workers all go through here."""

from __future__ import annotations

from medq.tasks import names


def send_member(app, member_id: int) -> None:
    app.send_task(names.TRAIN_MEMBER, args=[member_id])


def send_evaluation(app, job_id: str) -> None:
    app.send_task(names.EVALUATE_JOB, args=[job_id])


def send_chunk(app, chunk_id: int, priority: str) -> None:
    app.send_task(names.INFER_CHUNK, args=[chunk_id], queue=names.INFER_QUEUES[priority])


def queue_depth(app, queue: str) -> int:
    """Messages waiting in ``queue`` (not those a worker holds). A queue the broker does not
    know (Redis drops an empty list) holds none; an unreachable broker raises."""
    with app.connection_for_write() as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except conn.channel_errors:
            return 0
