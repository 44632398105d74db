"""The chunk task's error mapping: a transient fault (database, broker, I/O) holds the chunk and
retries the task with backoff, bounded, then fails it with the reason; a job error fails it at
once. Run eagerly (``Task.apply``: a retry runs at once), on a SQLite store of the test's own.
An I/O fault under the archive is the chunk's, not the study's."""

from __future__ import annotations

import errno
import logging

import pytest
from sqlalchemy.exc import OperationalError

from medq.common.errors import SpecError, TransientError, is_transient
from medq.common.inference.chunk import StudyPredictor
from medq.tasks import infer as infer_task
from medq.tasks.infer import BACKOFF_S
from tests.unit.infer_jobs import chunk_ids, chunk_row, csv_rows, home, medq, run_chunks  # noqa: F401
from tests.unit.test_predict import random_member

DB_DOWN = OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


# --- the task ---------------------------------------------------------------------------------------


class Flaky(StudyPredictor):
    """A real predictor whose ``predict`` raises ``errors[k]`` on its k-th call (None: works)."""

    def __init__(self, real, errors):
        self.real, self.errors, self.calls = real, list(errors), 0
        self.decoder, self.device, self.studies_per_batch = real.decoder, real.device, real.studies_per_batch

    def predict(self, study_ids, batch):
        self.calls += 1
        error = self.errors.pop(0) if self.errors else None
        if error is not None:
            raise error
        return self.real.predict(study_ids, batch)


@pytest.fixture
def job(home, tmp_path):
    """A job of 4 synthetic radiographs in one chunk, with one random member."""
    from medq.common.families.chest.synth import synth_chest

    synth_chest(tmp_path / "synth", n=4, seed=2)
    member = random_member(tmp_path / "m" / "best.pt", seed=3)
    done = medq("submit", "infer", "--archive", tmp_path / "synth" / "images", "--model", member, "--batch-size", "2")
    assert done.exit_code == 0, done.output
    return done.stdout.splitlines()[0]


def _flaky(monkeypatch, errors) -> list[Flaky]:
    made = []
    real_predictor = infer_task._predictor

    def predictor(spec, plan):
        made.append(Flaky(real_predictor(spec, plan), errors))
        return made[-1]

    monkeypatch.setattr(infer_task, "_predictor", predictor)
    return made


def test_a_database_error_during_a_chunk_is_retried_and_the_chunk_then_succeeds(home, job, monkeypatch, caplog):
    made = _flaky(monkeypatch, [None, DB_DOWN])  # the first batch is recorded, the second meets the fault
    with caplog.at_level(logging.WARNING, logger="medq.worker"):
        assert run_chunks(home, job) == ["succeeded"]
    assert "transient fault 1 of at most 4 (OperationalError: server closed the connection unexpectedly)" in caplog.text
    assert f"run again in {BACKOFF_S[0]} s" in caplog.text
    (chunk_id,) = chunk_ids(home, job)
    chunk = chunk_row(home, chunk_id)
    assert (chunk.state, chunk.attempts, chunk.error) == ("succeeded", 1, None)  # the retry counted no attempt
    assert [f.calls for f in made] == [2, 1]  # the retry did only the batch not yet recorded
    assert sorted(r["state"] for r in csv_rows(job)) == ["done"] * 4


def test_a_store_outage_while_recording_is_ridden_out_then_retried(home, job, monkeypatch):
    """A batch whose record meets the store away past ``retrying``'s tries: StoreUnavailable, a
    transient fault: the task retries and records it."""
    from medq.common.store import inference as store_ops

    monkeypatch.setattr("medq.tasks.store_retry.DELAYS", (0, 0))
    real, failures = store_ops.record_studies, iter(range(3))

    def record_studies(store, rows, send_job=None):
        if next(failures, None) is not None:
            raise DB_DOWN
        return real(store, rows, send_job)

    monkeypatch.setattr(store_ops, "record_studies", record_studies)
    assert run_chunks(home, job) == ["succeeded"]
    assert sorted(r["state"] for r in csv_rows(job)) == ["done"] * 4


def test_transient_faults_past_the_last_retry_fail_the_chunk_with_the_reason(home, job, monkeypatch):
    made = _flaky(monkeypatch, [OSError(errno.ESTALE, "Stale file handle", "/exports/Patient Doe/x.png")] * 9)
    assert run_chunks(home, job) == ["failed"]
    assert len(made) == len(BACKOFF_S) + 1
    chunk = chunk_row(home, chunk_ids(home, job)[0])
    assert chunk.error == f"gave up after {len(BACKOFF_S) + 1} transient faults: OSError: Stale file handle"
    failed = csv_rows(job, "--failed")
    assert len(failed) == 4 and all("gave up after 4 transient faults" in r["reason"] for r in failed)
    assert all("Patient" not in r["reason"] for r in failed)


def test_a_job_error_fails_the_chunk_at_once_with_its_message(home, job, monkeypatch):
    made = _flaky(monkeypatch, [SpecError("checkpoint /m/best.pt cannot be read: truncated")])
    assert run_chunks(home, job) == ["failed"]
    assert [f.calls for f in made] == [1]
    assert chunk_row(home, chunk_ids(home, job)[0]).error == "checkpoint /m/best.pt cannot be read: truncated"


# --- an I/O fault of the archive's storage is the chunk's, not the study's -------------------------


def test_an_io_fault_under_the_archive_is_transient_and_a_bad_file_is_the_studys(tmp_path, monkeypatch):
    from medq.common.inference import archive as archive_module
    from medq.common.inference.archive import open_archive
    from medq.common.inference.types import ArchiveUnavailable, StudyError

    (tmp_path / "Patient Doe.png").write_bytes(b"x" * 10)
    folder = open_archive(tmp_path)

    def failing(handle, limit, size):
        raise OSError(errno.EIO, "Input/output error", str(tmp_path / "Patient Doe.png"))

    monkeypatch.setattr(archive_module, "read_capped", failing)
    with pytest.raises(ArchiveUnavailable, match=r"the archive could not be read \(Input/output error\)") as caught:
        folder.read("Patient Doe.png")
    assert "Patient" not in str(caught.value) and is_transient(caught.value)
    def refused(handle, limit, size):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(archive_module, "read_capped", refused)
    with pytest.raises(StudyError, match="could not read the file"):
        folder.read("Patient Doe.png")


def test_a_chunk_meeting_an_io_fault_hands_on_what_it_did_and_raises_transient(tmp_path):
    from medq.common.families.chest.synth import synth_chest
    from medq.common.inference.archive import open_archive
    from medq.common.inference.chunk import run_chunk
    from medq.common.families.chest.predict import EnsemblePredictor

    synth_chest(tmp_path / "synth", n=4, seed=4)
    names = sorted(p.name for p in (tmp_path / "synth" / "images").iterdir())
    real = open_archive(tmp_path / "synth" / "images")

    class Flickering:
        def read(self, path):
            if path == names[2]:
                raise OSError(errno.ESTALE, "Stale file handle", path)
            return real.read(path)

    predictor = EnsemblePredictor.from_checkpoints([random_member(tmp_path / "m.pt", seed=1)], studies_per_batch=2)
    handed = []
    with pytest.raises(TransientError, match="reading the archive: OSError: Stale file handle"):
        run_chunk(list(enumerate(names)), Flickering(), predictor, 0, handed.extend)
    assert [o.study_id for o in handed] == [0, 1] and {o.state for o in handed} == {"done"}  # 2 and 3 stay pending


def test_outputs_are_named_by_the_study_key_not_a_row_id_or_the_source_name(home, tmp_path):
    """An overlay is `overlays/<key>.png`, the key being the CSV's `key` column (a hash of the
    archive path): the same study gets the same name in every job and store, and a file name
    that carries a patient's name never reaches --out."""
    from medq.common.families.chest.synth import synth_chest

    synth_chest(tmp_path / "synth", n=2, seed=2)
    images = tmp_path / "synth" / "images"
    first = sorted(images.iterdir())[0]
    first.rename(images / "DOE_JOHN.png")
    member = random_member(tmp_path / "m" / "best.pt", seed=3)
    done = medq("submit", "infer", "--archive", images, "--model", member, "--out", tmp_path / "out")
    assert done.exit_code == 0, done.output
    job_id = done.stdout.splitlines()[0]
    assert run_chunks(home, job_id) == ["succeeded"]
    rows = csv_rows(job_id)
    assert len(rows) == 2 and all(r["state"] == "done" for r in rows)
    for row in rows:
        assert row["overlay"] == f"overlays/{row['key']}.png" and (tmp_path / "out" / row["overlay"]).is_file()
    assert not [p for p in (tmp_path / "out").rglob("*") if "DOE" in p.name]
