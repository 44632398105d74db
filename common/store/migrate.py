"""Alembic migrations, run programmatically: by workers and submitting commands on first use, and
by `medq db`. The configuration is built here, not read from alembic.ini, so that Alembic never
sets up logging inside a medq process; alembic.ini (beside this file) is for the `alembic`
command (`alembic -c common/store/alembic.ini ...`) and names the same scripts."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from medq.common.errors import SchemaError

from medq.common.store.models import SCHEMA_HEAD as HEAD  # noqa: F401  (the schema head, for callers)

if TYPE_CHECKING:  # db.py runs the migrations on first use; this module needs only the type
    from medq.common.store.db import Store

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config() -> Config:
    config = Config(stdout=sys.stdout)  # this moment's stdout (Alembic's default is the one at its import)
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def script_head() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def breaking_between(current: str, head: str | None = None) -> list[str]:
    """The revisions after ``current`` up to ``head`` that the older medq cannot run with (a
    column renamed, a type changed: their module says ``breaking = True``). Workers and
    submits do not apply these on their own: every process of the older medq must stop first,
    then `medq db upgrade` runs them."""
    scripts = ScriptDirectory.from_config(alembic_config())
    return sorted(script.revision for script in scripts.iterate_revisions(head or "head", current)
                  if getattr(script.module, "breaking", False))


def upgrade(store: "Store", revision: str = "head") -> None:
    _run(store, command.upgrade, revision)


def downgrade(store: "Store", revision: str) -> None:
    """Back to ``revision`` (a revision, ``-1``, or ``base``): what later migrations added is dropped."""
    _run(store, command.downgrade, revision)


@contextmanager
def migrating(engine: Engine) -> Iterator[Connection]:
    """A connection in one transaction for Alembic. On SQLite with its foreign keys off: a batch
    migration copies a table and drops the old one, and with them on, that drop deletes every row
    that refers to the table (ON DELETE CASCADE: a migration of ``jobs`` would empty ``members``,
    ``chunks`` and ``studies``). They are checked before the commit and turned on again after."""
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:  # before BEGIN: SQLite ignores this pragma inside a transaction
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                yield connection
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise SchemaError(f"a migration left {len(broken)} row(s) whose foreign key points "
                                          f"nowhere (first: table {broken[0][0]}); nothing was changed")
        finally:
            if sqlite:
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")


def _run(store: "Store", step, revision: str) -> None:
    config = alembic_config()
    with migrating(store.engine) as connection:  # env.py runs on this connection, in this transaction
        config.attributes["connection"] = connection
        step(config, revision)
