"""What Celery and Flower show of medq's work: messages that name their job, stable worker node
names, progress in Flower's task view, and the resend wait that purges and revokes run into."""

from __future__ import annotations

import inspect
from datetime import time

import pytest

from medq.common.settings import load_settings
from medq.common.store import Store, admission, jobs
from medq.common.store import inference as ops
from medq.tasks import names

NOON = time(12, 0)


@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    store.ensure_schema()
    return store


@pytest.fixture
def memory_app():
    """medq's app on kombu's in-process memory broker: what is sent can be read back."""
    from medq.tasks.app import make_app

    from kombu.transport.memory import Channel

    Channel.queues.clear()  # the transport's queues are the process's, shared by every connection
    yield make_app(load_settings({"MEDQ_BROKER_URL": "memory://"}))
    Channel.queues.clear()


def _sent(app, queue: str) -> tuple[str, list, dict]:
    """The one message waiting on ``queue``: (task name, args, kwargs), as a worker reads it."""
    with app.connection_for_read() as conn:
        message = conn.SimpleQueue(queue).get(timeout=2)
        message.ack()
    args, kwargs, _embed = message.decode()
    return message.headers["task"], args, kwargs


def test_a_member_message_names_its_job_kind_and_seed(store, memory_app):
    from medq.workers.dispatch import dispatch_once

    job_id, (_first, second) = jobs.create_job(store, "ensemble", {}, {"split": {}}, [0, 7], 4)
    with store.session() as s:  # seed 0 is taken elsewhere: the message is the second seed's
        s.get(jobs.Member, _first).state = "running"
    admission.register_workers(store, "L1", [("gpu0@node7", names.worker_queue("gpu0@node7"), "gpu")])
    dispatch_once(store, memory_app, memory_app.conf.medq_settings)
    task, args, kwargs = _sent(memory_app, "w.gpu0@node7")
    assert task == names.TRAIN_MEMBER and args == [second]
    assert kwargs == {"admission": 1, "job": job_id, "kind": "ensemble", "seed": 7}


def test_a_chunk_message_names_its_job_and_index(store, memory_app):
    from medq.tasks.send import send_chunk

    ops.create_infer_job(store, "infer000001", {}, {}, "normal", None)
    ops.add_studies(store, "infer000001", [ops.PlannedStudy(f"/a/{i}.png") for i in range(3)], chunk_size=2)
    sent = ops.dispatch_chunks(store, NOON, lambda chunk_id, priority: send_chunk(memory_app, chunk_id, priority))
    assert sent == 2
    for index in (0, 1):
        task, args, kwargs = _sent(memory_app, "infer.normal")
        assert task == names.INFER_CHUNK and isinstance(args[0], int)
        assert kwargs == {"job": "infer000001", "kind": "infer", "chunk": index}


def test_tasks_take_old_and_new_messages_alike():
    """Messages queued by a medq before this one (only the row id, a member's admission) and by
    a newer one (informational keywords it does not know) are both accepted."""
    from medq.tasks.infer import infer_chunk
    from medq.tasks.train import train_member

    member = inspect.signature(train_member.run)
    member.bind(4)
    member.bind(4, admission=2)
    member.bind(4, admission=2, job="abc", kind="ensemble", seed=3, project="labA")
    chunk = inspect.signature(infer_chunk.run)
    chunk.bind(9)
    chunk.bind(9, owner="o", faults=1, job="abc", kind="infer", chunk=0, something_new=1)
