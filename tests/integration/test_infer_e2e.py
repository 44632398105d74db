"""Bulk inference end to end: the real CLI, a real redis-server, real worker processes, and the
real DICOM files that ship with pydicom and pydicom-data."""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.harness import Cluster, ended

pytestmark = pytest.mark.integration
PATIENT_NAMED = "DOE_JOHN_1961.dcm"  # a file name that carries a patient's name


def _good_pngs(tmp: Path, n: int) -> list[Path]:
    from medq.common.families.chest.synth import synth_chest

    synth_chest(tmp / "synth", n=n, seed=5)
    return sorted((tmp / "synth" / "images").glob("*.png"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from medq.scheduler.bench import _untrained_checkpoint

    return _untrained_checkpoint(tmp_path_factory.mktemp("model") / "best.pt", 64)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """12 synthetic PNGs in nested folders, real DICOMs, and every kind of bad file."""
    from PIL import Image
    from pydicom.data import get_testdata_file

    tmp = tmp_path_factory.mktemp("archive")
    root = tmp / "export"
    for i, png in enumerate(_good_pngs(tmp, 12)):
        folder = root / f"ward{i % 3}" / "day1"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, folder / png.name)
    shutil.copy(get_testdata_file("RG1_UNCR.dcm"), root / PATIENT_NAMED)
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "ct_without_extension")
    data = (root / "ward0" / "day1").iterdir().__next__().read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "zero.png").write_bytes(b"")
    (root / "notes.dcm").write_text("not an image")
    Image.new("L", (1, 1)).save(root / "tiny.png")
    (root / "outside").symlink_to("/etc/hostname")
    return root


BAD = {"truncated.png": "truncated or corrupt", "zero.png": "empty file", "notes.dcm": "unrecognised file format",
       "tiny.png": "too small", "outside": "outside the archive"}


def _csv(cluster, job_id, *flags) -> list[dict]:
    out = cluster.medq("results", job_id, *flags)
    assert out.returncode == 0, out.stderr
    return list(csv.DictReader(io.StringIO(out.stdout)))


def test_every_study_gets_one_record_and_every_failure_its_reason(cluster, archive, checkpoint, tmp_path):
    cluster.start_workers(2, "a")
    done = cluster.medq("submit", "infer", "--archive", str(archive), "--model", str(checkpoint), "--chunk", "5",
                        "--batch-size", "4", "--out", str(tmp_path / "out"), "--wait")
    assert done.returncode == 0, done.stdout + done.stderr + cluster.logs()
    job_id = done.stdout.splitlines()[0]

    rows = _csv(cluster, job_id, "--csv")
    files = sorted(str(p.relative_to(archive)) for p in archive.rglob("*") if p.is_file() or p.is_symlink())
    assert sorted(r["path"] for r in rows) == files  # one record per file, none twice
    by_path = {r["path"]: r for r in rows}
    for name, reason in BAD.items():
        assert by_path[name]["state"] == "failed" and reason in by_path[name]["reason"], by_path[name]
    good = [r for r in rows if r["path"] not in BAD]
    assert {r["state"] for r in good} == {"done"}
    assert all(r["x15"] and r["y15"] and r["spread15_px"] for r in good)

    cr = by_path[PATIENT_NAMED]
    assert cr["format"] == "dicom" and cr["study_uid"].startswith("1.") and cr["sop_uid"]
    ct = by_path["ct_without_extension"]
    assert ct["x1_mm"] and float(ct["x1_mm"]) == pytest.approx(float(ct["x1"]) * 0.661468, rel=1e-3)
    assert ct["spacing_source"] == "PixelSpacing" and cr["spacing_source"] == ""  # RG1_UNCR's spacing is 0.000

    failed = _csv(cluster, job_id, "--failed")
    assert sorted(r["path"] for r in failed) == sorted(BAD)
    status = cluster.status(job_id)
    assert status["studies"]["done"] == len(good) and status["studies"]["failed"] == len(BAD)
    assert status["studies"]["remaining"] == 0 and status["studies_per_s"] > 0
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == len(good)
    # No patient data in any log: file names are never written there.
    assert "DOE_JOHN" not in cluster.logs()


def test_a_missing_archive_or_an_unknown_model_is_refused_before_anything_is_enqueued(cluster, archive,
                                                                                      checkpoint):
    missing = cluster.medq("submit", "infer", "--archive", str(archive / "nope"), "--model", str(checkpoint))
    assert missing.returncode == 2 and "nope" in missing.stderr
    unknown = cluster.medq("submit", "infer", "--archive", str(archive), "--model", "0123456789ab")
    assert unknown.returncode == 2 and "unknown model" in unknown.stderr
    assert json.loads(cluster.medq("status", "--json").stdout) == []


def test_a_killed_worker_loses_no_study_and_duplicates_none(cluster, checkpoint, tmp_path):
    archive = tmp_path / "many"
    archive.mkdir()
    for png in _good_pngs(tmp_path, 120):
        shutil.copy(png, archive / png.name)
    first = cluster.start_workers(1, "first")
    done = cluster.medq("submit", "infer", "--archive", str(archive), "--model", str(checkpoint), "--chunk", "40",
                        "--batch-size", "2", "--loader-workers", "0")
    job_id = done.stdout.splitlines()[0]
    cluster.wait(job_id, lambda v: v["studies"]["done"] >= 10, poll=0.2)
    cluster.kill(first)
    before = cluster.status(job_id)["studies"]["done"]
    assert before < 120, "the job ended before the kill; make it bigger"
    cluster.start_workers(1, "second")
    view = cluster.wait(job_id, ended, timeout=240)
    assert view["state"] == "succeeded" and view["studies"]["done"] == 120, cluster.logs()
    rows = _csv(cluster, job_id, "--csv")
    assert len(rows) == 120 and len({r["path"] for r in rows}) == 120


def test_a_window_holds_the_job_until_resume_and_skip_done_processes_only_new_files(cluster, checkpoint,
                                                                                    tmp_path):
    archive = tmp_path / "nightly"
    archive.mkdir()
    for png in _good_pngs(tmp_path, 6):
        shutil.copy(png, archive / png.name)
    cluster.start_workers(1, "a")
    later = datetime.now() + timedelta(hours=3)
    window = f"{later:%H:%M}-{later + timedelta(hours=1):%H:%M}"
    done = cluster.medq("submit", "infer", "--archive", str(archive), "--model", str(checkpoint), "--chunk", "4",
                        "--window", window)
    job_id = done.stdout.splitlines()[0]
    time.sleep(4)
    view = cluster.status(job_id)
    assert view["studies"]["remaining"] == 6 and view["chunks"] == {"waiting": 2}
    assert "queued" in cluster.medq("resume", job_id).stdout
    assert cluster.wait(job_id, ended, timeout=120)["studies"]["done"] == 6

    for png in _good_pngs(tmp_path / "more", 2):
        shutil.copy(png, archive / f"new-{png.name}")
    again = cluster.medq("submit", "infer", "--archive", str(archive), "--model", str(checkpoint), "--skip-done",
                         "--wait")
    assert again.returncode == 0, again.stderr
    rows = _csv(cluster, again.stdout.splitlines()[0], "--csv")
    assert sorted(r["state"] for r in rows) == ["done"] * 2 + ["skipped"] * 6
    assert all(r["path"].startswith("new-") for r in rows if r["state"] == "done")
    assert all(job_id in r["reason"] for r in rows if r["state"] == "skipped")


def test_a_broker_killed_mid_job_loses_no_study_and_duplicates_none(redis_server, checkpoint, tmp_path):
    """Redis is SIGKILLed while chunks wait in its queues and restarted empty (no persistence):
    the launcher sees the queues empty while the store says chunks are queued, sends them again,
    and every study ends done exactly once."""
    archive = tmp_path / "many"
    archive.mkdir()
    for png in _good_pngs(tmp_path, 90):
        shutil.copy(png, archive / png.name)
    cluster = Cluster(tmp_path / "home", broker_url=f"{redis_server.url}/0", resend_after="3")
    try:
        cluster.start_workers(1, "a")
        done = cluster.medq("submit", "infer", "--archive", str(archive), "--model", str(checkpoint), "--chunk",
                            "15", "--batch-size", "3")
        job_id = done.stdout.splitlines()[0]
        cluster.wait(job_id, lambda v: v["studies"]["done"] >= 5, poll=0.2)
        redis_server.kill()
        before = cluster.status(job_id)
        assert before["studies"]["done"] < 90 and before["chunks"].get("queued", 0) >= 2, before
        redis_server.start()  # same port, every queue empty
        view = cluster.wait(job_id, ended, timeout=240)
        assert view["state"] == "succeeded" and view["studies"]["done"] == 90, cluster.logs()
        rows = _csv(cluster, job_id, "--csv")
        assert len(rows) == 90 and len({r["path"] for r in rows}) == 90
        assert "not on the broker; sent again" in cluster.logs()
    finally:
        cluster.stop()


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_zip_or_tar_archive_is_read_in_place_and_an_unsafe_name_fails_alone(cluster, checkpoint, tmp_path, kind):
    """PNGs in folders, a DICOM without an extension and a `../` entry, packed as one archive:
    every entry gets one record, the unsafe one fails with its reason, nothing is unpacked."""
    import tarfile
    import zipfile

    from pydicom.data import get_testdata_file

    pngs = _good_pngs(tmp_path, 4)
    entries = {f"scans/day{i % 2}/{p.name}": p.read_bytes() for i, p in enumerate(pngs)}
    entries["scans/ct_small"] = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    entries["../escape.png"] = pngs[0].read_bytes()
    path = tmp_path / f"export.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in entries.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz") as tf:
            for name, data in entries.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    cluster.start_workers(1, "a")
    done = cluster.medq("submit", "infer", "--archive", str(path), "--model", str(checkpoint), "--chunk", "2",
                        "--wait")
    assert done.returncode == 0, done.stdout + done.stderr  # failed studies are listed, the job goes on
    rows = {r["path"]: r for r in _csv(cluster, done.stdout.splitlines()[0], "--csv")}
    assert sorted(rows) == sorted(entries)
    assert rows["../escape.png"]["state"] == "failed" and "unsafe name" in rows["../escape.png"]["reason"]
    assert {rows[name]["state"] for name in entries if name != "../escape.png"} == {"done"}
    assert rows["scans/ct_small"]["format"] == "dicom" and rows["scans/ct_small"]["x1_mm"]
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "scans").exists()
