"""What Celery and Flower show of medq's work: messages that name their job, stable worker node
names, progress in Flower's task view, and the resend wait that purges and revokes run into."""

from __future__ import annotations

import inspect
import socket
import subprocess
import sys
import threading
import time as clock
from datetime import time

import pytest

from medq.common.settings import load_settings
from medq.common.store import Store, admission, jobs
from medq.common.store import inference as ops
from medq.tasks import names
from tests.unit.infer_jobs import home  # noqa: F401  (fixtures of the chunk task's test)
from tests.unit.test_infer_task import job  # noqa: F401

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


# --- node names ---------------------------------------------------------------------------

def test_node_names_are_the_same_at_every_start_of_a_launcher():
    """Flower's workers and the Prometheus series keep one name per slot across restarts."""
    from medq.workers.plan import plan_workers

    first, second = plan_workers([0, 2], 2, host="node7"), plan_workers([0, 2], 2, host="node7")
    assert [p.nodename for p in first] == ["gpu0@node7", "gpu2@node7", "cpu0@node7", "cpu1@node7"]
    assert [(p.nodename, p.own_queue) for p in first] == [(p.nodename, p.own_queue) for p in second]
    assert [p.nodename for p in plan_workers([0], 0, host="node7", prefix="b")] == ["b-gpu0@node7"]


def _supervisor(store, tmp_path, plans, **env):
    from medq.workers.supervisor import Supervisor

    settings = load_settings({"MEDQ_HOME": str(tmp_path), "MEDQ_DATABASE_URL": store.url,
                              "MEDQ_WORKER_TTL": "2", "MEDQ_ADMIT_INTERVAL": "0.2", **env})
    return Supervisor(plans, settings, app=None)


def test_a_second_launcher_with_the_same_slots_on_a_live_host_is_refused(store, tmp_path):
    """Two launchers on one host with the same slots would share node names, queues and leases:
    while the first is alive the second refuses to start, naming the way out; the first keeps
    its registry rows even against a second that slipped past at the same moment."""
    from medq.workers.plan import plan_workers

    plans = plan_workers([], 1, host="node7")
    first, second = _supervisor(store, tmp_path, plans), _supervisor(store, tmp_path, plans)
    assert first.wait_for_names() is None
    assert admission.register_workers(store, first.launcher_id, [("cpu0@node7", "w.cpu0@node7", "cpu")], ttl=2) == []
    stop = threading.Event()

    def keep_alive():  # the first launcher's admission rounds
        while not stop.wait(0.2):
            admission.register_workers(store, first.launcher_id, [("cpu0@node7", "w.cpu0@node7", "cpu")], ttl=2)

    beat = threading.Thread(target=keep_alive)
    beat.start()
    try:
        refused = second.wait_for_names()
        assert refused and "cpu0@node7" in refused and "--name-prefix" in refused
        assert admission.register_workers(store, second.launcher_id, [("cpu0@node7", "w.cpu0@node7", "cpu")],
                                          ttl=2) == ["cpu0@node7"]
    finally:
        stop.set()
        beat.join()
    with store.session() as s:
        assert s.get(admission.Worker, "cpu0@node7").launcher == first.launcher_id


def test_a_launcher_restarted_after_a_crash_takes_its_names_at_once(store, tmp_path):
    """The dead launcher's rows (this host, its process gone) are not waited for."""
    from medq.workers.plan import plan_workers

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = f"{socket.gethostname()[:32]}:{int(gone.stdout)}:0123456789abcdef"
    admission.register_workers(store, dead, [("cpu0@node7", "w.cpu0@node7", "cpu")])
    restarted = _supervisor(store, tmp_path, plan_workers([], 1, host="node7"))
    started = clock.monotonic()
    assert restarted.wait_for_names() is None and clock.monotonic() - started < 1
    assert admission.register_workers(store, restarted.launcher_id, [("cpu0@node7", "w.cpu0@node7", "cpu")],
                                      ttl=2) == []


# --- progress in Flower ---------------------------------------------------------------------

def _flower_view(events: list[tuple[str, dict]]) -> dict:
    """What Flower's task page and its /api/task/info show of a task after these events: Flower
    keeps Celery's event state (its EventsState is celery.events.state.State) and shows only the
    task's own fields (``Task._fields``, ``as_dict``), not the extra fields of an event."""
    from celery.events.state import State

    state = State()
    now = clock.time()
    state.event({"type": "task-received", "uuid": "t1", "hostname": "cpu0@node7", "timestamp": now,
                 "name": names.TRAIN_MEMBER, "args": "[4]", "kwargs": "{'job': 'j1'}", "local_received": now,
                 "clock": 1})
    state.event({"type": "task-started", "uuid": "t1", "hostname": "cpu0@node7", "timestamp": now + 0.1,
                 "local_received": now, "clock": 1})
    for i, (kind, fields) in enumerate(events):
        state.event({"type": kind, "uuid": "t1", "hostname": "cpu0@node7", "timestamp": now + 1 + i,
                     "local_received": now, "clock": 2 + i, **fields})
    return state.tasks["t1"].as_dict()


class _Task:
    def __init__(self):
        self.sent = []

    def send_event(self, kind, **fields):
        self.sent.append((kind, fields))


def test_a_members_progress_shows_in_flowers_task_view():
    from medq.common.training.kit import Progress
    from medq.tasks.runtime import ProgressEvents, member_summary

    task = _Task()
    events = ProgressEvents(task, interval=60)
    step = Progress(epoch=3, total_epochs=20, phase="finetune", step=40, steps_per_epoch=125, train_loss=0.01234,
                    val_loss=None, val_error_px=None, images_per_s=45.25, epoch_done=False)
    events.send(member_summary(step), epoch=3)
    events.send("not yet: within the interval", epoch=3)
    view = _flower_view(task.sent)
    assert view["state"] == "PROGRESS"
    assert view["result"] == "epoch 3/20 (finetune), step 40/125, train loss 0.01234, 45.2 images/s"
    assert len(task.sent) == 1
    events.send("epoch 3/20 done", now=True)  # an epoch's end is sent at once
    assert len(task.sent) == 2


def test_an_inference_chunk_sends_studies_done_of_total(home, job, monkeypatch):
    from celery.app.task import Task

    from tests.unit.infer_jobs import run_chunks

    sent = []
    monkeypatch.setattr(Task, "send_event", lambda self, kind, **fields: sent.append((kind, fields)), raising=True)
    assert run_chunks(home, job) == ["succeeded"]
    progress = [fields for kind, fields in sent if kind == "task-progress"]
    assert progress and progress[-1]["result"] == "chunk 0: 4/4 studies"
    assert (progress[-1]["studies_done"], progress[-1]["studies_total"], progress[-1]["job_id"]) == (4, 4, job)
    assert _flower_view([("task-progress", progress[-1])])["result"] == "chunk 0: 4/4 studies"


# --- the resend wait --------------------------------------------------------------------------

def test_purged_work_is_sent_again_only_after_the_resend_wait(store, memory_app):
    """`celery purge` (or a broker restart) empties the queues; the store still says the member
    is admitted and the chunks queued. Nothing is sent again before MEDQ_RESEND_AFTER has
    passed since each was sent, and a chunk with no time of sending (NULL) waits as if it had
    just been sent rather than counting as long ago; after the wait, each is sent once more."""
    from kombu.transport.memory import Channel
    from sqlalchemy import update

    from medq.common.store.models import Chunk
    from medq.tasks.send import send_chunk
    from medq.workers.dispatch import dispatch_once
    from medq.workers.reaper import resend_lost

    _, (member,) = jobs.create_job(store, "ensemble", {}, {"split": {}}, [0], 4)
    admission.register_workers(store, "L1", [("cpu0@node7", "w.cpu0@node7", "cpu")])
    dispatch_once(store, memory_app, memory_app.conf.medq_settings)
    ops.create_infer_job(store, "infer000001", {}, {}, "normal", None)
    ops.add_studies(store, "infer000001", [ops.PlannedStudy(f"/a/{i}.png") for i in range(2)], chunk_size=1)
    ops.dispatch_chunks(store, NOON, lambda chunk_id, priority: send_chunk(memory_app, chunk_id, priority))
    with store.session() as s:  # the second chunk as an older medq left it: queued, no time of sending
        s.execute(update(Chunk).where(Chunk.index == 1).values(updated_at=None))
    Channel.queues.clear()  # celery purge
    wait = 1.5
    assert resend_lost(store, memory_app, grace_s=wait) == ([], [])
    admission.register_workers(store, "L1", [("cpu0@node7", "w.cpu0@node7", "cpu")])  # the launcher is alive
    clock.sleep(wait + 0.2)
    members, chunks = resend_lost(store, memory_app, grace_s=wait)
    assert members == [member] and len(chunks) == 2
    assert resend_lost(store, memory_app, grace_s=wait)[1] == []  # their queue is no longer empty
