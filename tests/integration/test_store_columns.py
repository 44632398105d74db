"""Columns a person queries with psql (Alembic 0010): no reserved words, and on PostgreSQL
timestamps with their zone and JSON as jsonb. A store with data at 0009 upgrades without losing
a value and downgrades back."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import text

from medq.common.store import Store, jobs
from medq.common.store.migrate import downgrade, upgrade
from medq.common.store.models import Base, utcnow


def _types(store) -> dict[tuple[str, str], str]:
    with store.engine.connect() as conn:
        if conn.dialect.name != "postgresql":
            return {}
        rows = conn.execute(text("SELECT table_name, column_name, data_type FROM information_schema.columns "
                                 "WHERE table_schema = current_schema()"))
        return {(t, c): d for t, c, d in rows}


def test_a_store_at_0009_with_data_upgrades_to_plain_names_timestamptz_and_jsonb_and_back(store):
    job_id, _ = jobs.create_job(store, "ensemble", {"loss": "mse", "nested": {"k": [1, 2]}}, {"split": {}}, [0], 4)
    with store.session() as s:
        s.execute(text("UPDATE jobs SET run_window = '22:00-06:00' WHERE id = :id"), {"id": job_id})
        s.execute(text("INSERT INTO chunks (job_id, chunk_index, state, attempts, n_studies) "
                       "VALUES (:id, 7, 'waiting', 0, 3)"), {"id": job_id})
    with store.engine.connect() as conn:
        created = conn.execute(text("SELECT created_at FROM jobs")).scalar()
    downgrade(store, "0009")
    with store.engine.connect() as conn:  # 0009's names, as psql saw them before
        assert conn.execute(text('SELECT "window" FROM jobs')).scalar() == "22:00-06:00"
        assert conn.execute(text('SELECT "index" FROM chunks')).scalar() == 7
    upgrade(store)
    with store.engine.connect() as conn:  # what a person types in psql now, without quoting
        assert conn.execute(text("SELECT run_window FROM jobs")).scalar() == "22:00-06:00"
        assert conn.execute(text("SELECT chunk_index FROM chunks")).scalar() == 7
        assert conn.execute(text("SELECT created_at FROM jobs")).scalar() == created  # not shifted by a zone
    from medq.common.store.views import find_job

    view = find_job(store, job_id)
    assert view["spec"] == {"loss": "mse", "nested": {"k": [1, 2]}}
    assert abs(datetime.fromisoformat(view["created_at"]) - utcnow()) < timedelta(minutes=5)
    types = _types(store)
    if types:  # PostgreSQL
        assert types[("jobs", "created_at")] == "timestamp with time zone"
        assert types[("members", "lease_expires_at")] == "timestamp with time zone"
        assert types[("jobs", "spec")] == "jsonb" and types[("studies", "result")] == "jsonb"
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT spec ->> 'loss' FROM jobs")).scalar() == "mse"
            conn.execute(text("SET TIME ZONE 'Asia/Tokyo'"))  # psql in another zone sees the same moment
            shown = conn.execute(text("SELECT created_at FROM jobs")).scalar()
        assert shown.utcoffset() == timedelta(hours=9) and shown.astimezone(timezone.utc) == \
            datetime.fromisoformat(view["created_at"])
    assert {c.name for c in Base.metadata.tables["chunks"].columns} >= {"chunk_index"}
    assert "window" not in {c.name for c in Base.metadata.tables["jobs"].columns}


def test_an_aware_time_read_back_is_the_same_moment_in_utc(store: Store):
    job_id, _ = jobs.create_job(store, "ensemble", {}, {"split": {}}, [0], 1)
    moment = datetime(2026, 12, 4, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    with store.session() as s:
        from medq.common.store.models import Job

        s.get(Job, job_id).finished_at = moment
    with store.session() as s:
        back = s.get(Job, job_id).finished_at
    assert back == moment and back.tzinfo == timezone.utc and back.hour == 4


def test_downgrades_and_upgrades_keep_every_row_of_tables_they_do_not_drop(store: Store):
    """A migration that copies a table (SQLite's batch mode) must not cascade its drop to the
    rows that refer to it: downgrading to 0006 and back keeps the job's members and chunks."""
    job_id, _ = jobs.create_job(store, "ensemble", {}, {"split": {}}, [0, 1], 1)
    with store.session() as s:
        s.execute(text("INSERT INTO chunks (job_id, chunk_index, state, attempts, n_studies) "
                       "VALUES (:id, 0, 'waiting', 0, 1)"), {"id": job_id})
    downgrade(store, "0006")
    upgrade(store)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM members WHERE job_id = :id"), {"id": job_id}).scalar() == 2
        assert conn.execute(text("SELECT count(*) FROM chunks WHERE job_id = :id"), {"id": job_id}).scalar() == 1


def test_a_nul_character_in_a_json_value_survives_the_upgrade_and_later_writes(store: Store):
    """PostgreSQL's jsonb refuses U+0000, which its json kept (a DICOM string padded with a NUL):
    the upgrade and every later write keep the value, with U+FFFD in its place."""
    old_id, _ = jobs.create_job(store, "ensemble", {}, {"split": {}}, [0], 1)
    downgrade(store, "0009")
    with store.session() as s:  # as 0009's json column could hold it
        s.execute(text("UPDATE jobs SET spec = :spec WHERE id = :id"), {"spec": '{"note": "a\\u0000b"}', "id": old_id})
    upgrade(store)
    from medq.common.store.views import find_job

    assert find_job(store, old_id)["spec"]["note"] in ("a\ufffdb", "a\x00b")  # SQLite keeps the NUL
    job_id, _ = jobs.create_job(store, "ensemble", {"note": "c\x00d"}, {"split": {}}, [0], 1)
    assert find_job(store, job_id)["spec"]["note"] in ("c\ufffdd", "c\x00d")
