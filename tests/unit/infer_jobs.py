"""Helpers of the unit tests that run bulk inference jobs without servers: a MEDQ_HOME of the
test's own (SQLite store, embedded broker), training jobs made in the store from checkpoint
files, the real `medq` CLI in-process, and chunk tasks run eagerly (``Task.apply``)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest
from click.testing import CliRunner


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Settings of a fresh MEDQ_HOME (every other MEDQ_* variable cleared); the task app's own
    settings point there while the test runs."""
    from medq.common.settings import load_settings
    from medq.tasks.app import app
    from medq.tasks import infer

    for name in [n for n in os.environ if n.startswith("MEDQ_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MEDQ_HOME", str(tmp_path / "home"))
    settings = load_settings()
    previous = app.conf.medq_settings
    app.conf.medq_settings = settings
    infer._PREDICTOR.clear()
    yield settings
    app.conf.medq_settings = previous
    infer._PREDICTOR.clear()


def medq(*args: str):
    """The `medq` CLI in this process: the click result (exit_code, output, stderr)."""
    from medq.scheduler.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def trained_job(settings, kind: str, checkpoints: list[Path], spec: dict | None = None) -> str:
    """A training job of ``kind`` whose members (one per checkpoint) succeeded, each leaving its
    checkpoint as its best."""
    from medq.common.store import jobs, open_store

    store = open_store(settings)
    job_id, members = jobs.create_job(store, kind, spec or {}, {"data_dir": "/d"}, range(len(checkpoints)))
    for seed, (member, path) in enumerate(zip(members, checkpoints)):
        assert jobs.claim_member(store, member, f"o{seed}", "w", "cpu", 60, 3).run
        jobs.finish_member(store, member, f"o{seed}", jobs.State.SUCCEEDED, artifacts={f"seed-{seed}/best": str(path)})
    return job_id


def infer_jobs(settings) -> list[str]:
    from sqlalchemy import select

    from medq.common.store import open_store
    from medq.common.store.models import Job

    with open_store(settings).session() as s:
        return list(s.scalars(select(Job.id).where(Job.kind == "infer")))


def chunk_ids(settings, job_id: str) -> list[int]:
    from sqlalchemy import select

    from medq.common.store import open_store
    from medq.common.store.models import Chunk

    with open_store(settings).session() as s:
        return list(s.scalars(select(Chunk.id).where(Chunk.job_id == job_id).order_by(Chunk.index)))


def chunk_row(settings, chunk_id: int):
    from medq.common.store import open_store
    from medq.common.store.models import Chunk

    with open_store(settings).session() as s:
        chunk = s.get(Chunk, chunk_id)
        s.expunge(chunk)
        return chunk


def run_chunks(settings, job_id: str) -> list[str]:
    """Every chunk of the job through the real task, in this process (retries run at once)."""
    from medq.tasks.infer import infer_chunk

    return [infer_chunk.apply(args=[chunk_id]).get() for chunk_id in chunk_ids(settings, job_id)]


def csv_rows(job_id: str, *flags: str) -> list[dict]:
    done = medq("results", job_id, *(flags or ("--csv",)))
    assert done.exit_code == 0, done.output
    return list(csv.DictReader(io.StringIO(done.stdout)))
