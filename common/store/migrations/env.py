"""Alembic environment for medq's store. Run through common.store.migrate (or `medq db upgrade`)."""

from alembic import context
from sqlalchemy import text

from medq.common.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes["connection"]
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Several processes may start at once: one migrates, the others wait.
            connection.execute(text("SELECT pg_advisory_xact_lock(7461023)"))
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("medq migrations run online only: use `medq db upgrade`")
run_migrations_online()
