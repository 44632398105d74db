"""The store's schema as an operator handles it: `alembic -c common/store/alembic.ini ...` from the
repository, `medq db current|history|upgrade|downgrade`, and the commands that only read
(`medq status`, `results`, `watch`, `queue`), which never migrate a store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from medq.common.store import Store
from medq.common.store.models import SCHEMA_HEAD

ROOT = Path(__file__).resolve().parents[2]
PREVIOUS = f"{int(SCHEMA_HEAD) - 1:04d}"
PG_PASSWORD = "pg-S3cret-88"


def medq(*args: str, input: str | None = None):
    from medq.scheduler.cli import main

    return CliRunner().invoke(main, list(args), input=input)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A fresh MEDQ_HOME, every other MEDQ_* variable cleared, and no store a command opened
    before (each `medq` command is a process of its own); returns a setter for the rest."""
    from medq.common.store import db

    monkeypatch.setattr(db, "_STORES", {})
    for name in [n for n in os.environ if n.startswith("MEDQ_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MEDQ_HOME", str(tmp_path / "home"))
    return monkeypatch.setenv


def revision(url: str) -> str | None:
    store = Store(url)
    try:
        return store.revision()
    finally:
        store.dispose()


# -- the alembic command ---------------------------------------------------------------------
def alembic(tmp_path, *args: str, database_url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDQ_")}
    env.update(MEDQ_HOME=str(tmp_path / "home"), MEDQ_DATABASE_URL=database_url)
    return subprocess.run([sys.executable, "-m", "alembic", "-c", "common/store/alembic.ini", *args], cwd=ROOT,
                          env=env, text=True, capture_output=True, timeout=120)


def test_alembic_command_from_the_repository_on_medq_database_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    history = alembic(tmp_path, "history", database_url=url)
    assert history.returncode == 0, history.stderr
    assert f"{PREVIOUS} -> {SCHEMA_HEAD} (head)" in history.stdout and "<base> -> 0001" in history.stdout

    upgraded = alembic(tmp_path, "upgrade", "head", database_url=url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"store at {url}" in upgraded.stderr  # which store it migrated
    assert revision(url) == SCHEMA_HEAD
    assert alembic(tmp_path, "current", database_url=url).stdout.strip() == f"{SCHEMA_HEAD} (head)"

    assert alembic(tmp_path, "downgrade", "-1", database_url=url).returncode == 0
    assert revision(url) == PREVIOUS
    assert alembic(tmp_path, "current", database_url=url).stdout.strip() == PREVIOUS
    assert not (tmp_path / "home").exists(), "MEDQ_DATABASE_URL, not the embedded store, was used"


def test_alembic_never_prints_the_store_password(tmp_path):
    url = f"postgresql+psycopg://medq:{PG_PASSWORD}@127.0.0.1:1/medq?connect_timeout=2"  # nothing listens
    failed = alembic(tmp_path, "upgrade", "head", database_url=url)
    assert failed.returncode != 0
    assert "store at postgresql+psycopg://medq:***@127.0.0.1:1/medq" in failed.stderr
    assert PG_PASSWORD not in failed.stdout + failed.stderr


def test_alembic_offline_sql_for_postgresql_and_a_clear_refusal_on_sqlite(tmp_path):
    sql = alembic(tmp_path, "upgrade", "head", "--sql",
                  database_url=f"postgresql+psycopg://medq:{PG_PASSWORD}@db-host/medq")  # no server needed
    assert sql.returncode == 0, sql.stderr
    assert "CREATE TABLE jobs" in sql.stdout and f"version_num='{SCHEMA_HEAD}'" in sql.stdout
    assert PG_PASSWORD not in sql.stdout + sql.stderr

    db_file = tmp_path / "store.sqlite"
    refused = alembic(tmp_path, "upgrade", "head", "--sql", database_url=f"sqlite:///{db_file}")
    assert refused.returncode != 0
    assert "--sql (offline) mode does not work on SQLite" in refused.stderr
    assert "Traceback" not in refused.stderr and not db_file.exists()


# -- medq db ---------------------------------------------------------------------------------
def test_medq_db_current_upgrade_downgrade_on_the_embedded_store(env, tmp_path):
    url = f"sqlite:///{tmp_path / 'home' / 'medq.sqlite'}"
    fresh = medq("db", "current")
    assert fresh.exit_code == 0
    assert fresh.stdout.splitlines() == [f"store: {url}", f'revision: none (no store there yet); medq needs '
                                                           f'{SCHEMA_HEAD}: run "medq db upgrade"']
    assert not (tmp_path / "home").exists(), "db current makes no store"

    assert medq("db", "upgrade", PREVIOUS).stdout.strip() == f"store at {url}: empty -> {PREVIOUS}"
    assert f"revision: {PREVIOUS}, behind head {SCHEMA_HEAD}" in medq("db", "current").stdout
    assert medq("db", "upgrade").stdout.strip() == f"store at {url}: {PREVIOUS} -> {SCHEMA_HEAD} (head)"
    assert f"revision: {SCHEMA_HEAD} (head)" in medq("db", "current").stdout
    assert "already at" in medq("db", "upgrade").stdout

    declined = medq("db", "downgrade", "-1", input="n\n")
    assert declined.exit_code == 1 and "Downgrade the store at" in declined.stderr
    assert revision(url) == SCHEMA_HEAD, "nothing is undone without a yes"
    confirmed = medq("db", "downgrade", "-1", input="y\n")
    assert confirmed.exit_code == 0 and f"{SCHEMA_HEAD} -> {PREVIOUS}" in confirmed.stdout
    assert revision(url) == PREVIOUS

    unknown = medq("db", "downgrade", "nope", "--yes")
    assert unknown.exit_code == 2 and "Can't locate revision identified by 'nope'" in unknown.stderr
    assert medq("db", "downgrade", "base", "--yes").exit_code == 0
    assert revision(url) is None
    assert "revision: none (no schema yet)" in medq("db", "current").stdout


def test_medq_db_history_lists_the_migrations_newest_first(env):
    lines = medq("db", "history").stdout.splitlines()
    assert lines[0].startswith(f"{PREVIOUS} -> {SCHEMA_HEAD} (head), ")
    assert lines[-1].startswith("<base> -> 0001, ") and len(lines) == int(SCHEMA_HEAD)


# -- commands that only read never migrate --------------------------------------------------
@pytest.fixture(params=["embedded", "sqlite-url", pytest.param("postgresql", marks=pytest.mark.integration)])
def behind(request, env, tmp_path):
    """A store with one job in it, one revision behind this medq: its URL as configured."""
    from medq.common.settings import load_settings
    from medq.common.store import jobs

    if request.param == "sqlite-url":
        env("MEDQ_DATABASE_URL", f"sqlite:///{tmp_path / 'elsewhere' / 'store.sqlite'}")
    elif request.param == "postgresql":
        url = make_url(request.getfixturevalue("postgres_url"))
        env("MEDQ_DATABASE_URL", url.set(password=PG_PASSWORD).render_as_string(hide_password=False))
    url = load_settings().resolved_database_url
    assert medq("db", "upgrade").exit_code == 0
    store = Store(url)
    job_id, _ = jobs.create_job(store, "ensemble", {}, {"data_dir": "/d"}, range(2))
    store.dispose()
    assert medq("db", "downgrade", PREVIOUS, "--yes").exit_code == 0
    yield url, job_id
    if request.param == "postgresql":  # the server's database is shared by the session's tests
        assert medq("db", "upgrade").exit_code == 0
        assert medq("db", "downgrade", "base", "--yes").exit_code == 0


def test_a_read_only_command_refuses_a_store_one_revision_behind_and_changes_nothing(behind):
    url, job_id = behind
    shown = url.replace(PG_PASSWORD, "***")
    message = f'error: the store at {shown} is at revision {PREVIOUS}, medq needs {SCHEMA_HEAD}; run "medq db upgrade"'
    for args in (["status"], ["status", job_id], ["results", job_id, "--json"], ["watch", job_id], ["queue"]):
        refused = medq(*args)
        assert refused.exit_code == 2, (args, refused.output)
        assert refused.stderr.strip() == message, args
        assert PG_PASSWORD not in refused.output
        assert revision(url) == PREVIOUS, f"medq {' '.join(args)} migrated the store"
    assert medq("db", "upgrade").exit_code == 0
    listed = medq("status", "--json")
    assert listed.exit_code == 0 and [j["job_id"] for j in json.loads(listed.stdout)] == [job_id]


def test_submitting_and_workers_migrate_after_a_read_was_refused_unless_the_step_breaks_older_workers(behind):
    from medq.common.errors import SchemaError
    from medq.common.settings import load_settings
    from medq.common.store import open_store
    from medq.common.store.migrate import breaking_between

    url, _ = behind
    with pytest.raises(SchemaError):
        open_store(load_settings(), migrate=False)  # what status does
    assert revision(url) == PREVIOUS
    if breaking_between(PREVIOUS):  # 0010 renames columns a running older worker uses
        with pytest.raises(SchemaError, match=f"revision {SCHEMA_HEAD} changes columns the older medq uses.*"
                                              'stop every worker of the older medq, then run "medq db upgrade"'):
            open_store(load_settings())
        assert revision(url) == PREVIOUS  # nothing applied
        assert medq("db", "upgrade").exit_code == 0  # the operator's step
    else:
        open_store(load_settings())  # what submit and the workers do, in the same process
    assert revision(url) == SCHEMA_HEAD
    open_store(load_settings())  # and from then on, as before


def test_a_new_user_gets_an_embedded_store_but_a_named_store_is_never_made_by_reading(env, tmp_path):
    first = medq("status")
    assert first.exit_code == 0, first.output
    assert revision(f"sqlite:///{tmp_path / 'home' / 'medq.sqlite'}") == SCHEMA_HEAD

    missing = tmp_path / "typo" / "store.sqlite"
    env("MEDQ_DATABASE_URL", f"sqlite:///{missing}")
    refused = medq("status")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (f'error: there is no store at sqlite:///{missing} yet; '
                                      f'run "medq db upgrade" (or submit a job)')
    assert not missing.parent.exists()


def test_a_schema_newer_than_this_medq_is_refused_by_readers_and_by_upgrade(env, tmp_path):
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'home' / 'medq.sqlite'}"
    assert medq("db", "upgrade").exit_code == 0
    newer = f"{int(SCHEMA_HEAD) + 1:04d}"
    store = Store(url)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": newer})
    store.dispose()
    for args in (["status"], ["db", "upgrade"]):
        refused = medq(*args)
        assert refused.exit_code == 2, refused.output
        assert f"is at revision {newer}, newer than this medq's {SCHEMA_HEAD}; upgrade medq" in refused.stderr
    assert revision(url) == newer


def test_medq_own_upgrade_leaves_the_process_logging_alone(tmp_path):
    """Workers migrate on first use: Alembic must not reconfigure their logging (alembic.ini's
    logging is for the alembic command only)."""
    import logging

    from medq.common.store.migrate import upgrade

    root, alembic_logger = logging.getLogger(), logging.getLogger("alembic")
    before = (list(root.handlers), root.level, alembic_logger.level, list(alembic_logger.handlers))
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    upgrade(store)
    assert store.revision() == SCHEMA_HEAD
    store.dispose()
    assert (list(root.handlers), root.level, alembic_logger.level, list(alembic_logger.handlers)) == before


def test_a_store_that_does_not_answer_is_still_named_as_such_not_as_a_schema_problem(env):
    env("MEDQ_DATABASE_URL", f"postgresql+psycopg://medq:{PG_PASSWORD}@127.0.0.1:1/medq?connect_timeout=2")
    for args in (["status"], ["db", "current"]):
        failed = medq(*args)
        assert failed.exit_code == 3, failed.output
        assert "error: cannot use the database at postgresql+psycopg://medq:***@127.0.0.1:1/medq" in failed.stderr
        assert PG_PASSWORD not in failed.output
