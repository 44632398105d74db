"""MEDQ_STUDY_PATHS: what the store, the CSV and output names keep of archive paths that name
patients. The pure parts (pseudonyms, keys, sealing) on their own, then whole inference jobs
through the real CLI and chunk task on a SQLite store of the test's own."""

from __future__ import annotations

import csv
import io
from collections import Counter

import pytest
from sqlalchemy import select

from medq.common.errors import JobError, SpecError
from medq.common.inference.study_paths import StudyPaths, plain_hash, pseudonymise
from tests.unit.infer_jobs import chunk_ids, chunk_row, home, infer_jobs, medq, run_chunks  # noqa: F401
from tests.unit.test_predict import random_member

KEY = "a-hospital-key-of-32-characters!"
OTHER_KEY = "another-key-of-the-same-length!!"


# --- pseudonyms, keys, sealing ----------------------------------------------------------------------


def test_a_pseudonym_hides_the_names_and_keeps_the_layout_generic_words_and_uids():
    key = b"k" * 32
    shown = pseudonymise("npy/patient_DOE_JOHN_vol0.npy", key)
    assert shown.startswith("npy/patient_p") and shown.endswith("_vol0.npy")
    assert "DOE" not in shown.upper() and "JOHN" not in shown.upper()
    # the same name gets the same pseudonym whatever its case; another name another one
    assert pseudonymise("Doe/john.png", key).split("/")[0] == shown.split("_")[1]
    assert pseudonymise("ROE_JANE_vol0.npy", key) != pseudonymise("DOE_JOHN_vol0.npy", key)
    # DICOM UIDs (the CSV's join key) and short numbers stay; a record number or a date does not
    uid = "1.2.826.0.1.3680043.8.498.1"
    assert pseudonymise(f"series/{uid}/IM0001.dcm", key) == f"series/{uid}/IM0001.dcm"
    assert pseudonymise("0001/0002.dcm", key) == "0001/0002.dcm"  # series and instance folders
    for identifying in ("MRN12345678/scan_20260101.dcm", "DOE_1975-03-14/a.dcm", "x_14.03.1975.1/a.dcm",
                        "123-45-6789_x.png", "19750314.1.2.3/a.dcm", "exports/1975/03/14/a.dcm"):
        shown = pseudonymise(identifying, key)
        assert not any(part in shown for part in ("12345678", "20260101", "1975", "6789")), shown
    assert pseudonymise("2.25.329800735698586629295641978511506172918/0012.dcm", key).startswith("2.25.3298")
    # words that are also names are kept only as layout words with a number: IM0001, not Ko or Im
    assert pseudonymise("KO_MIN/IM0001.dcm", key).split("/") == [pseudonymise("ko_min", key), "IM0001.dcm"]
    assert "KO" not in pseudonymise("KO_MIN/IM0001.dcm", key).split("/")[0]
    assert pseudonymise("a.png", b"x" * 32) != pseudonymise("a.png", key)


def test_keyed_modes_key_studies_by_an_hmac_and_seal_the_path_for_the_worker_alone():
    path = "exports/patient_DOE_JOHN/ct_0001.dcm"
    full, keyed = StudyPaths(), StudyPaths("pseudonymised", KEY.encode())
    assert full.hasher()(path) == plain_hash(path) and full.sealer()(path) is None
    assert keyed.hasher()(path) != plain_hash(path) and len(keyed.hasher()(path)) == 32
    sealed = keyed.sealer()(path)
    assert "DOE" not in sealed and keyed.opener()(keyed.shower()(path), sealed) == path
    with pytest.raises(JobError, match="does not open with this worker's MEDQ_PATH_KEY"):
        StudyPaths("pseudonymised", OTHER_KEY.encode()).opener()("x", sealed)
    assert StudyPaths("none", KEY.encode()).shower()(path) == ""


def test_a_keyed_mode_without_a_long_enough_key_is_refused_with_how_to_make_one():
    with pytest.raises(SpecError, match=r"needs MEDQ_PATH_KEY .*at least 32 characters.*secrets.token_urlsafe"):
        StudyPaths("pseudonymised", b"hospital-key-2026")
    with pytest.raises(SpecError, match="MEDQ_STUDY_PATHS must be one of full, pseudonymised, none"):
        StudyPaths("hashed", KEY.encode())


# --- whole jobs -------------------------------------------------------------------------------------


@pytest.fixture
def named_archive(tmp_path):
    """Four synthetic radiographs named as a hospital export names them: two of one patient."""
    from medq.common.families.chest.synth import synth_chest

    synth_chest(tmp_path / "synth", n=4, seed=2)
    images = tmp_path / "synth" / "images"
    names = ["patient_DOE_JOHN_0001.png", "patient_DOE_JOHN_0002.png", "patient_ROE_JANE_0001.png",
             "patient_POE_EDGAR_0001.png"]
    for path, name in zip(sorted(images.iterdir()), names):
        path.rename(images / name)
    return images


def _worker_settings(monkeypatch, **env):
    """The environment of the CLI and of the (in-process) worker: ``env`` as MEDQ_* variables."""
    from medq.common.settings import load_settings
    from medq.tasks.app import app

    for name, value in env.items():
        monkeypatch.setenv(f"MEDQ_{name.upper()}", value)
    app.conf.medq_settings = settings = load_settings()
    return settings


def _submit(archive, member, *extra) -> str:
    done = medq("submit", "infer", "--archive", archive, "--model", member, *extra)
    assert done.exit_code == 0, done.output
    return done.stdout.splitlines()[0]


def _csv(job_id: str) -> tuple[list[str], list[dict]]:
    done = medq("results", job_id, "--format", "csv")
    assert done.exit_code == 0, done.output
    reader = csv.DictReader(io.StringIO(done.stdout))
    return list(reader.fieldnames), list(reader)


def _stored(settings, job_id: str) -> list[tuple]:
    from medq.common.store import open_store
    from medq.common.store.models import Study

    with open_store(settings).session() as s:
        return list(s.execute(select(Study.path, Study.sealed_path, Study.path_hash).where(Study.job_id == job_id)))


def test_a_pseudonymised_job_runs_and_no_name_reaches_the_store_the_csv_or_the_outputs(
        home, named_archive, tmp_path, monkeypatch):
    settings = _worker_settings(monkeypatch, study_paths="pseudonymised", path_key=KEY)
    member = random_member(tmp_path / "m" / "best.pt", seed=3)
    job_id = _submit(named_archive, member, "--out", tmp_path / "out")
    assert run_chunks(settings, job_id) == ["succeeded"]
    columns, rows = _csv(job_id)
    assert columns[0] == "pseudonymised_path" and [r["state"] for r in rows] == ["done"] * 4
    shown = sorted(r["pseudonymised_path"] for r in rows)
    assert all(p.startswith("patient_p") and p.endswith(".png") for p in shown)
    patients = Counter(p.rsplit("_", 1)[0] for p in shown)  # one patient's two files still group
    assert sorted(patients.values()) == [1, 1, 2]
    for text in ["".join(map(str, row)) for row in _stored(settings, job_id)] + [str(rows)] + [
            p.name for p in (tmp_path / "out").rglob("*")]:
        assert not any(name in text for name in ("DOE_", "JOHN", "JANE", "EDGAR")), text
    assert {r["key"] for r in rows}.isdisjoint({plain_hash(p.name) for p in named_archive.iterdir()})
    # the same archive again with the same key: --skip-done finds what the first job did
    again = _submit(named_archive, member, "--skip-done")
    assert {r["state"] for r in _csv(again)[1]} == {"skipped"}


def test_a_worker_without_the_jobs_key_hands_the_chunk_back_then_fails_it_naming_the_key_and_loses_nothing(
        home, named_archive, tmp_path, monkeypatch):
    from medq.tasks.infer import BACKOFF_S

    _worker_settings(monkeypatch, study_paths="none", path_key=KEY)
    member = random_member(tmp_path / "m" / "best.pt", seed=3)
    job_id = _submit(named_archive, member)
    columns, rows = _csv(job_id)
    assert columns[0] == "path_withheld" and {r["path_withheld"] for r in rows} == {""}
    settings = _worker_settings(monkeypatch, path_key=OTHER_KEY)
    assert run_chunks(settings, job_id) == ["failed"]
    (chunk_id,) = chunk_ids(settings, job_id)
    error = chunk_row(settings, chunk_id).error  # retried as a transient fault (another worker may have the key)
    assert error.startswith(f"gave up after {len(BACKOFF_S) + 1} transient faults: ")
    assert f"job {job_id}: this worker's MEDQ_PATH_KEY is not the key the job was submitted with" in error
    assert {r["state"] for r in _csv(job_id)[1]} == {"pending"}  # nothing recorded
    settings = _worker_settings(monkeypatch, path_key=KEY)  # the worker gets the key: medq resume runs them
    assert medq("resume", job_id).exit_code == 0
    assert run_chunks(settings, job_id) == ["succeeded"]
    assert {r["state"] for r in _csv(job_id)[1]} == {"done"}


def test_a_keyed_mode_without_its_key_is_refused_before_anything_is_enqueued(
        home, named_archive, tmp_path, monkeypatch):
    settings = _worker_settings(monkeypatch, study_paths="pseudonymised")
    member = random_member(tmp_path / "m" / "best.pt", seed=3)
    done = medq("submit", "infer", "--archive", named_archive, "--model", member)
    assert done.exit_code != 0 and "MEDQ_STUDY_PATHS=pseudonymised needs MEDQ_PATH_KEY" in done.output
    assert infer_jobs(settings) == []
