"""`medq db`: the store's schema, by Alembic: where it stands, the migrations, upgrade, downgrade.

These commands run on the store medq is configured for (MEDQ_DATABASE_URL, else the embedded SQLite
store under MEDQ_HOME) and print its URL with the password masked. Commands that only read
(`medq status`, `results`, `watch`, `queue`) never migrate: they say to run `medq db upgrade`.
Never imports torch."""

from __future__ import annotations

import click

from medq.common.errors import SchemaError
from medq.common.settings import load_settings


@click.group()
def db() -> None:
    """The results store's schema (Alembic migrations). Submitting and workers migrate on first use;
    commands that only read never do."""


def _open(must_exist: bool = True):
    """The configured store and its masked URL; no file is made for a SQLite store not there yet."""
    from medq.common.store.db import Store, missing_sqlite_file, schema_problem

    settings = load_settings()
    url = settings.resolved_database_url
    if must_exist and missing_sqlite_file(url):
        raise SchemaError(schema_problem(url, None, missing=True))
    return Store(url), settings.describe()["database"]


def _step(store, step, revision: str) -> str | None:
    """``step(store, revision)`` (migrate.upgrade or downgrade); the revision after it. An
    unknown or invalid REVISION is a usage error."""
    from alembic.util import CommandError

    try:
        step(store, revision)
    except CommandError as exc:
        raise click.BadParameter(str(exc), param_hint="REVISION") from None
    return store.revision()


@db.command("current")
def db_current() -> None:
    """The store (password masked), its schema revision, and whether that is this medq's newest."""
    from medq.common.store.db import missing_sqlite_file
    from medq.common.store.migrate import script_head

    settings = load_settings()
    head = script_head()
    click.echo(f"store: {settings.describe()['database']}")
    if missing_sqlite_file(settings.resolved_database_url):
        click.echo(f'revision: none (no store there yet); medq needs {head}: run "medq db upgrade"')
        return
    store, _ = _open()
    try:
        current = store.revision()
    finally:
        store.dispose()
    if current == head:
        click.echo(f"revision: {current} (head)")
    elif current is None:
        click.echo(f'revision: none (no schema yet); medq needs {head}: run "medq db upgrade"')
    elif current < head:
        click.echo(f'revision: {current}, behind head {head}: run "medq db upgrade"')
    else:
        click.echo(f"revision: {current}, newer than this medq's head {head}: upgrade medq on this host")


@db.command("history")
@click.option("--verbose", "-v", is_flag=True, help="each migration's full header")
def db_history(verbose) -> None:
    """The migrations this medq has, newest first (reads no store)."""
    from alembic import command

    from medq.common.store.migrate import alembic_config

    command.history(alembic_config(), verbose=verbose)


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision) -> None:
    """Apply the store's migrations up to REVISION (default: head, this medq's newest). Workers and
    submitting commands also do this on first use; commands that only read never do."""
    from medq.common.store.db import schema_problem
    from medq.common.store.migrate import HEAD, upgrade

    store, where = _open(must_exist=False)  # an embedded or new SQLite store is made here
    try:
        before = store.revision()
        if before is not None and before > HEAD:
            raise SchemaError(schema_problem(store.url, before))
        after = _step(store, upgrade, revision)
    finally:
        store.dispose()
    if after == before:
        click.echo(f"store at {where}: already at {after}" + (" (head)" if after == HEAD else ""))
    else:
        click.echo(f"store at {where}: {before or 'empty'} -> {after}" + (" (head)" if after == HEAD else ""))


@db.command("downgrade", context_settings={"ignore_unknown_options": True})  # so that -1 is a REVISION
@click.argument("revision")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def db_downgrade(revision, yes) -> None:
    """Undo migrations down to REVISION (a revision such as 0008, -1 for one step, or base for
    none). What the undone migrations added is dropped with its data. Asks first, unless --yes."""
    from medq.common.store.migrate import HEAD, downgrade

    store, where = _open()
    try:
        before = store.revision()
        if before is None:
            raise SchemaError(f"the store at {where} has no schema: nothing to downgrade")
        if not yes:
            click.confirm(f"Downgrade the store at {where} from {before} to {revision}? What the later "
                          f"migrations added is dropped, with its data", abort=True, err=True)
        after = _step(store, downgrade, revision)
    finally:
        store.dispose()
    click.echo(f"store at {where}: {before} -> {after or 'base (no schema)'}")
    if after != HEAD:
        click.echo(f'this medq needs {HEAD}: commands that only read refuse until "medq db upgrade"', err=True)
