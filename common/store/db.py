"""Engines and sessions. SQLite is set up for several writer processes at once.

SQLite: WAL journal, a busy timeout, and every transaction begun IMMEDIATE so that two
processes never deadlock upgrading a read lock to a write lock (the cause of most
'database is locked' errors); transactions are short. PostgreSQL: plain pooled engine.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from medq.common.errors import SchemaError, SpecError
from medq.common.secrets import mask_url
from medq.common.settings import Settings, load_settings

SQLITE_BUSY_TIMEOUT_MS = 60_000


def _jsonb_text(value) -> str:
    """JSON for PostgreSQL's jsonb, which refuses the NUL character (a DICOM string padded with
    one, say): it is written as U+FFFD instead of failing the study's record."""
    return json.dumps(value).replace("\\u0000", "\\ufffd")


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # a server that does not answer fails a connection in 10 s instead of hanging a launcher's
        # loop (and its liveness probe) on the operating system's TCP timeout
        connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": 10}
        try:
            return create_engine(url, pool_pre_ping=True, future=True, connect_args=connect_args,
                                 json_serializer=_jsonb_text)
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
        self.at_head = False  # the schema was found (or brought) at this medq's newest

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
        """Bring the schema to the newest migration (cheap when it is already there). A schema
        newer than this medq's is refused, not touched; so is a step that the older medq's
        running workers cannot live with (a breaking revision): `medq db upgrade` takes it,
        once they are stopped."""
        from medq.common.store.models import SCHEMA_HEAD

        current = self.schema_version()
        if current is not None and current > SCHEMA_HEAD:
            raise SchemaError(schema_problem(self.url, current))
        if current != SCHEMA_HEAD:
            from medq.common.store.migrate import breaking_between, upgrade

            breaking = breaking_between(current) if current is not None else []
            if breaking:
                raise SchemaError(f"the store at {mask_url(self.url)} is at revision {current}; revision "
                                  f"{', '.join(breaking)} changes columns the older medq uses, so it is not applied "
                                  f'on first use: stop every worker of the older medq, then run "medq db upgrade"')
            upgrade(self)
        self.at_head = True

    def require_schema(self) -> None:
        """Check, changing nothing, that the schema is this medq's newest: SchemaError otherwise,
        naming the store (password masked), its revision and what to run."""
        from medq.common.store.models import SCHEMA_HEAD

        if missing_sqlite_file(self.url):
            raise SchemaError(schema_problem(self.url, None, missing=True))
        current = self.revision()
        if current != SCHEMA_HEAD:
            raise SchemaError(schema_problem(self.url, current))
        self.at_head = True

    def revision(self) -> str | None:
        """The schema's Alembic revision, None for a store without one. Reads only (no write
        lock); unlike schema_version, a server that cannot be reached raises."""
        with self.engine.connect() as conn:
            conn.execution_options(medq_read_only=True)
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    def schema_version(self) -> str | None:
        """The revision, or None when there is none or the store cannot be read."""
        try:
            return self.revision()
        except Exception:
            return None

    def dispose(self) -> None:
        self.engine.dispose()


def missing_sqlite_file(url: str) -> bool:
    """A SQLite URL whose file does not exist (connecting would make an empty one)."""
    parsed = make_url(url)
    return (parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
            and not Path(parsed.database).exists())


def schema_problem(url: str, current: str | None, *, missing: bool = False) -> str:
    """What is wrong with a store's schema, and what to run about it."""
    from medq.common.store.models import SCHEMA_HEAD

    where = mask_url(url)
    if missing:
        return f'there is no store at {where} yet; run "medq db upgrade" (or submit a job)'
    if current is None:
        return f'the store at {where} has no schema yet; run "medq db upgrade" (or submit a job)'
    if current > SCHEMA_HEAD:
        return (f"the store at {where} is at revision {current}, newer than this medq's {SCHEMA_HEAD}; "
                f"upgrade medq on this host")
    return f'the store at {where} is at revision {current}, medq needs {SCHEMA_HEAD}; run "medq db upgrade"'


_STORES: dict[tuple[int, str], Store] = {}


def open_store(settings: Settings | None = None, *, migrate: bool = True) -> Store:
    """The process's store for the configured URL (a new engine after a fork).

    ``migrate=True`` (commands that write, workers): the schema is brought to the newest
    migration. ``migrate=False`` (commands that only read): nothing is changed; a schema that is
    missing, older or newer than this medq's raises SchemaError naming "medq db upgrade". The
    one exception is a new user's embedded store (MEDQ_DATABASE_URL unset, no schema yet): it is
    made, as the first submit would, so that `medq status` on a fresh machine lists no jobs.
    """
    settings = settings or load_settings()
    url = settings.resolved_database_url
    key = (os.getpid(), url)
    store = _STORES.get(key)
    if store is None:
        if not migrate and settings.database_url and missing_sqlite_file(url):
            raise SchemaError(schema_problem(url, None, missing=True))  # and make no file or folder
        store = _STORES[key] = Store(url)
    if store.at_head:
        return store
    if migrate or (not settings.database_url and store.revision() is None):
        store.ensure_schema()
    else:
        store.require_schema()
    return store
