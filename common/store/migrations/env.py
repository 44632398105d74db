"""Alembic environment for medq's store.

Two ways in:
- medq's own upgrade (common.store.migrate, `medq db`, workers and submits on first use) hands its
  connection in ``config.attributes["connection"]`` and builds its Config without an ini file, so
  nothing here touches logging;
- the `alembic` command (`alembic -c common/store/alembic.ini upgrade head`): the store is the one
  medq is configured for (MEDQ_DATABASE_URL, else the embedded SQLite store under MEDQ_HOME), on
  an engine made as medq makes it; `--sql` writes the SQL instead of running it.
"""

import logging
from logging.config import fileConfig

from alembic import context
from sqlalchemy import text

from medq.common.store.models import Base

config = context.config
target_metadata = Base.metadata
ADVISORY_LOCK = 7461023  # several processes may start at once: one migrates, the others wait

if config.config_file_name is not None:  # the alembic command with alembic.ini: its logging
    fileConfig(config.config_file_name, disable_existing_loggers=False)
log = logging.getLogger("medq.migrations")


def store_url() -> str:
    from medq.common.settings import load_settings

    return load_settings().resolved_database_url


def run_migrations(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK})"))
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    from medq.common.secrets import mask_url
    from medq.common.store.db import make_engine
    from medq.common.store.migrate import migrating

    url = store_url()
    log.info("store at %s", mask_url(url))
    engine = make_engine(url)
    try:
        with migrating(engine) as connection:
            run_migrations(connection)
    finally:
        engine.dispose()


def run_migrations_offline() -> None:
    """The SQL of the migrations for the configured store's dialect, written, not run. Not for
    SQLite: its batch migrations copy tables, which needs the live table to reflect."""
    from alembic.util import CommandError
    from sqlalchemy.engine import make_url

    url = store_url()
    if make_url(url).get_backend_name() == "sqlite":
        raise CommandError("--sql (offline) mode does not work on SQLite: its migrations copy tables, which "
                           "needs the live database; run them online (`alembic ... upgrade head` or "
                           "`medq db upgrade`), or point MEDQ_DATABASE_URL at PostgreSQL for its SQL")
    context.configure(url=url, target_metadata=target_metadata, render_as_batch=True, literal_binds=True,
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        if context.get_context().dialect.name == "postgresql":
            context.execute(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK})")
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
