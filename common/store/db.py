"""Engines and sessions. SQLite is set up for several writer processes at once.

SQLite: WAL journal, a busy timeout, and every transaction begun IMMEDIATE so that two
processes never deadlock upgrading a read lock to a write lock (the cause of most
'database is locked' errors); transactions are short. PostgreSQL: plain pooled engine.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from medq.common.errors import SpecError
from medq.common.settings import Settings, load_settings

SQLITE_BUSY_TIMEOUT_MS = 60_000


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # a server that does not answer fails a connection in 10 s instead of hanging a launcher's
        # loop (and its liveness probe) on the operating system's TCP timeout
        connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": 10}
        try:
            return create_engine(url, pool_pre_ping=True, future=True, connect_args=connect_args)
        except ModuleNotFoundError as exc:  # the driver is an extra: medq[postgres]
            extra = " (pip install 'medq[postgres]')" if exc.name == "psycopg" else ""
            raise SpecError(f"MEDQ_DATABASE_URL needs the database driver {exc.name!r}{extra}") from None
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        # a read-only unit of work (Store.read_session) takes no write lock: in WAL mode it
        # never holds up a writer, nor waits for one
        read_only = connection.get_execution_options().get("medq_read_only")
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


class Store:
    """An engine and its session factory; one session per unit of work."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any error."""
        with self._sessions() as session:
            with session.begin():
                yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A transaction that only reads (views, metrics): on SQLite it takes no write lock, so
        a scrape never holds up a worker's writes. Writing in it is a mistake SQLite refuses
        only when it conflicts, so don't."""
        with self.engine.connect() as connection:
            connection.execution_options(medq_read_only=True)
            if connection.dialect.name == "postgresql":  # one snapshot for every read of the unit
                connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with Session(bind=connection, expire_on_commit=False) as session, session.begin():
                yield session

    def ensure_schema(self) -> None:
        """Bring the schema to the newest migration (cheap when it is already there)."""
        from medq.common.store.models import SCHEMA_HEAD

        if self.schema_version() != SCHEMA_HEAD:
            from medq.common.store.migrate import upgrade

            upgrade(self)

    def schema_version(self) -> str | None:
        try:
            with self.engine.connect() as conn:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except Exception:
            return None

    def dispose(self) -> None:
        self.engine.dispose()


_STORES: dict[tuple[int, str], Store] = {}


def open_store(settings: Settings | None = None, *, migrate: bool = True) -> Store:
    """The process's store for the configured URL (a new engine after a fork)."""
    settings = settings or load_settings()
    key = (os.getpid(), settings.resolved_database_url)
    store = _STORES.get(key)
    if store is None:
        store = Store(settings.resolved_database_url)
        if migrate:
            store.ensure_schema()
        _STORES[key] = store
    return store
