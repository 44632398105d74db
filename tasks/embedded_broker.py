"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, tuned for several
worker processes (WAL journal, a busy timeout) and polled often enough for short tasks.

URL scheme ``medq+sqlite:///path``; registered with kombu on import of tasks.config.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqla
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url

ALIAS = "medq"
POLLING_INTERVAL = 0.2  # seconds between polls of an empty queue
BUSY_TIMEOUT_S = 60


class Channel(kombu_sqla.Channel):
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

        return engine


class Transport(kombu_sqla.Transport):
    Channel = Channel
    polling_interval = POLLING_INTERVAL


TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:Transport")
