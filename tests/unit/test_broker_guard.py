"""Malformed broker messages are set aside, never raised into the worker's event loop; the
embedded broker gives back its connections."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, text

from medq.common.settings import load_settings
from medq.tasks import names
from medq.tasks.app import make_app
from medq.tasks.broker_guard import envelope_problem, transport_for
from medq.tasks.config import celery_config
from medq.tasks.embedded_broker import Channel
from medq.tasks.send import queue_depth


@pytest.fixture
def embedded(tmp_path):
    settings = load_settings({"MEDQ_HOME": str(tmp_path)})
    return make_app(settings), tmp_path / "broker.sqlite"


def _payloads(broker) -> list[str]:
    engine = create_engine(f"sqlite:///{broker}")
    with engine.connect() as conn:
        rows = [r[0] for r in conn.execute(text("SELECT payload FROM kombu_message ORDER BY id"))]
    engine.dispose()
    return rows


def test_a_real_task_message_passes_and_broken_envelopes_are_named(embedded):
    app, broker = embedded
    app.send_task(names.NOOP, args=[1], queue="gpu")
    real = json.loads(_payloads(broker)[0])
    assert envelope_problem(real) is None
    broken = {
        "a list": [1, 2],
        "no properties": {**real, "properties": None},
        "no tag": {**real, "properties": {**real["properties"], "delivery_tag": 7}},
        "no delivery info": {**real, "properties": {**real["properties"], "delivery_info": "x"}},
        "body a number": {**real, "body": 5},
        "bad base64": {**real, "body": "%%%"},
        "headers a list": {**real, "headers": []},
        "odd encoding": {**real, "properties": {**real["properties"], "body_encoding": "rot13"}},
    }
    for name, message in broken.items():
        assert envelope_problem(message), name


def test_the_redis_urls_get_the_guarded_transport():
    assert celery_config(load_settings({"MEDQ_BROKER_URL": "redis://h:6379/0"}))["broker_transport"] \
        == "medq.tasks.broker_guard:RedisTransport"
    assert transport_for("rediss://h:6380/0") == "medq.tasks.broker_guard:RedisTransport"
    assert transport_for("sentinel://h:26379") == "medq.tasks.broker_guard:SentinelTransport"
    assert transport_for("medq+sqlite:///x") is None  # the embedded transport guards itself


def test_poison_on_the_embedded_broker_is_dropped_and_the_next_message_still_arrives(embedded, caplog):
    app, broker = embedded
    app.send_task(names.NOOP, args=[1], queue="gpu")  # creates the queue and a good message
    engine = create_engine(f"sqlite:///{broker}")
    with engine.begin() as conn:
        queue_id = conn.execute(text("SELECT id FROM kombu_queue WHERE name='gpu'")).scalar()
        good = conn.execute(text("SELECT payload FROM kombu_message")).scalar()
        conn.execute(text("DELETE FROM kombu_message"))
        for payload in ("this is {not json", "[1, 2]", '{"body": 5}', '{"__type__": "bytes", "__value__": 5}',
                        '{"__type__": "nope", "__value__": 1}', good):
            conn.execute(text("INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id) "
                              "VALUES (1, CURRENT_TIMESTAMP, :p, 1, :q)"), {"p": payload, "q": queue_id})
    engine.dispose()
    received = []
    with app.connection_for_read() as conn:
        with conn.SimpleQueue("gpu") as queue:
            message = queue.get(timeout=10)
            received.append(message.headers.get("task"))
            message.ack()
    assert received == [names.NOOP]
    assert sum("dropped a malformed message" in r.message for r in caplog.records) == 5


def test_looking_at_queue_depths_does_not_leak_connections(embedded):
    """The reaper looks at four queues every round; each look used to keep a connection."""
    app, _ = embedded
    for _ in range(40):
        assert queue_depth(app, names.GPU_QUEUE) == 0
    engine, _ = next(v for k, v in Channel._engines.items() if str(embedded[1]) in k)
    assert engine.pool.checkedout() == 0
