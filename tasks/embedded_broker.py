"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, tuned for several
worker processes (WAL journal, a busy timeout) and polled often enough for short tasks;
malformed messages are set aside (tasks/broker_guard.py) and channels give back their connection.

URL scheme ``medq+sqlite:///path``; registered with kombu on import of tasks.config.
"""

from __future__ import annotations

import fcntl

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqla
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from medq.tasks.broker_guard import _GuardedChannel, _GuardedTransport

ALIAS = "medq"
POLLING_INTERVAL = 0.2  # seconds between polls of an empty queue
BUSY_TIMEOUT_S = 60


class Channel(_GuardedChannel, kombu_sqla.Channel):
    def close(self):
        """kombu leaves the channel's session (and the pooled connection it holds) open: every
        connection the reaper opened to look at a queue's depth leaked one, until the pool was
        exhausted a minute after a launcher started ("QueuePool limit of size 5 overflow 10")."""
        if self._session is not None:
            self._session.close()
            self._session = None
        super().close()

    def _get_or_create(self, queue):
        """kombu guards the queue row's creation with a lock of its own process only: when the
        submitter and freshly started workers declare a queue at the same moment, all but one
        insert fails on the unique name. That one's row is the queue."""
        try:
            return super()._get_or_create(queue)
        except IntegrityError:
            self.session.rollback()
            return self.session.query(self.queue_cls).filter(self.queue_cls.name == queue).one()

    def depths(self, queues) -> dict[str, int]:
        """Visible messages of each queue in one read (no queue rows created, no write lock):
        what the metrics endpoint asks for on every scrape."""
        from sqlalchemy import and_, func

        queue, message = self.queue_cls, self.message_cls
        try:
            found = dict(self.session.query(queue.name, func.count(message.id))
                         .outerjoin(message, and_(message.queue_id == queue.id, message.visible.is_(True)))
                         .filter(queue.name.in_(list(queues))).group_by(queue.name).all())
        finally:
            self.session.rollback()  # end the read: an open one would hold back WAL checkpoints
        return {name: int(found.get(name, 0)) for name in queues}

    def _engine_from_config(self):
        url = make_url(self.connection.client.hostname)
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
            cursor.close()

        if url.database and url.database != ":memory:":
            # kombu creates its tables under a lock of its own process only; on a fresh broker
            # file the submitter and new workers would race ("table already exists"), and kombu
            # takes that error for a lost connection. One process at a time creates them here,
            # so kombu's own create_all finds them.
            with open(f"{url.database}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                kombu_sqla.metadata.create_all(engine)
        return engine


class Transport(_GuardedTransport, kombu_sqla.Transport):
    Channel = Channel
    polling_interval = POLLING_INTERVAL


TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:Transport")
