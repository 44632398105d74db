"""Poison on the broker: malformed messages pushed on every queue a worker consumes and
published on the pidbox (remote control) channel. The worker logs and sets each aside, stays
up (no restart), and runs the next job."""

from __future__ import annotations

import json
import time

import pytest

from medq.tasks import names
from medq.tasks.broker_guard import DEAD_LETTER
from tests.integration.harness import Cluster

pytestmark = pytest.mark.integration

ENVELOPE = {"body": "eA==", "content-type": "application/json", "content-encoding": "utf-8", "headers": {},
            "properties": {"delivery_tag": "poison", "body_encoding": "base64",
                           "delivery_info": {"exchange": "gpu", "routing_key": "gpu"}}}
POISON = [
    "this is {not json",  # not JSON
    '{"__type__": "bytes", "__value__": 5}',  # JSON kombu's decoder hooks refuse (AttributeError)
    '{"__type__": "datetime", "__value__": "x"}',  # (ValueError)
    "[1, 2, 3]",  # JSON, not an object
    '{"body": 5}',  # an object without properties
    json.dumps({**ENVELOPE, "properties": {**ENVELOPE["properties"], "delivery_info": None}}),
    json.dumps({**ENVELOPE, "body": "%%% not base64"}),
    json.dumps(ENVELOPE),  # a valid envelope whose body is not JSON: Celery refuses it
    json.dumps({**ENVELOPE, "content-type": "application/x-python-serialize",
                "headers": {"task": names.NOOP, "id": "x"}}),  # pickle: refused, never unpickled
    json.dumps({**ENVELOPE, "body": "eyJhIjogMX0=", "headers": {"task": "no.such.task", "id": "y"}}),
]
REFUSALS = ("dropped a malformed message", "Can't decode message body", "Refusing to deserialize untrusted",
            "Received unregistered task", "Cannot process event on channel")
PIDBOX = ["[1, 2]", "nope{", '{"__type__": "bytes", "__value__": 5}', json.dumps({**ENVELOPE, "properties": {**ENVELOPE["properties"], "delivery_info": {
    "exchange": "celery.pidbox", "routing_key": ""}}})]


def test_poison_on_every_queue_and_the_pidbox_channel_kills_no_worker(redis_url, tmp_path, fault_log):
    import redis

    fault_log.trying(f"{len(POISON)} kinds of malformed message on every queue, {len(PIDBOX)} on the pidbox")
    client = redis.Redis.from_url(f"{redis_url}/3")
    client.flushdb()
    data = tmp_path / "chest"
    cluster = Cluster(tmp_path / "home", broker_url=f"{redis_url}/3")
    try:
        assert cluster.medq("data", "synth-chest", str(data), "--n", "24", "--seed", "2").returncode == 0
        launcher = cluster.start_workers(1, "a")
        own = cluster.worker_queues(1)
        assert len(own) == 1, cluster.logs()
        queues = [*names.consume_order(), names.CPU_QUEUE, *own]
        for queue in queues:
            for payload in POISON:
                client.lpush(queue, payload)
        for payload in PIDBOX:
            client.publish("/3.celery.pidbox", payload)
        started = time.monotonic()
        deadline = time.monotonic() + 60
        while any(client.llen(q) for q in queues):  # the worker has read every message
            assert time.monotonic() < deadline, {q: client.llen(q) for q in queues}
            time.sleep(0.2)
        done = cluster.medq("submit", "ensemble", "--data", str(data), "--seeds", "1", "--epochs", "1",
                            "--epochs-head", "0", "--image-size", "64", "--wait")
        assert done.returncode == 0, done.stdout + done.stderr + cluster.logs()
        served = time.monotonic() - started
        logs = cluster.full_logs()
        # each message is accounted for by one line: set aside by medq, or refused by kombu or Celery
        records = [line for line in logs.splitlines() if line.startswith("[20")]  # one per log record
        refused = sum(1 for line in records if any(said in line for said in REFUSALS))
        tried = len(POISON) * len(queues) + len(PIDBOX)
        fault_log.bad_inputs("malformed broker messages", tried, min(refused, tried))
        assert launcher.poll() is None and "exited with code" not in logs, logs[-3000:]
        assert refused == tried, {said: sum(said in line for line in records) for said in REFUSALS}
        assert client.llen(DEAD_LETTER) >= 5 * len(queues)  # kept for an operator to look at
    finally:
        cluster.stop()
    fault_log.survived(served, f"{tried} messages on {len(queues)} queues and the pidbox, to the next job done; "
                               f"the worker never restarted")
