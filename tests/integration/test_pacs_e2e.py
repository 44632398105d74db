"""A real PACS end to end: Orthanc with its DICOMweb plugin, the real CLI, a real redis-server
and real workers. Studies are found by QIDO-RS, retrieved by WADO-RS inside the chunk tasks,
and the DICOM SEG and SR outputs are stored back with STOW-RS, then read back from Orthanc and
checked with highdicom: referenced UIDs, frames, segment labels, points."""

from __future__ import annotations

import csv
import io
import re
import time

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medq.common.store import Store
from medq.common.store.sends import send_counts
from tests.integration.harness import ended
from tests.orthanc import PASSWORD, Orthanc
from tests.unit.test_seg_volumes import write_series

pytestmark = pytest.mark.integration


@pytest.fixture
def pacs(tmp_path, cluster):
    """A running Orthanc, and the cluster's settings (submitter and workers) logged in to it."""
    server = Orthanc(tmp_path / "orthanc").start()
    cluster.env.update({f"MEDQ_{k.upper()}": v for k, v in server.env.items()})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> Path:
    """A small trained lesion segmenter (the family's own example, a few seconds on a CPU)."""
    from medq.common.families.registry import family
    from medq.common.training.kit import TrainHooks

    folder = tmp_path_factory.mktemp("segmenter")
    kind = family("segment")
    example = kind.example(folder / "example")
    trained = kind.train(example.spec, kind.plan(example.spec, example.data_dir), 0, folder / "member", TrainHooks())
    return trained.checkpoints["best"]


def upload_ct_studies(pacs: Orthanc, folder: Path, n: int, slices: int = 5) -> dict[str, list[str]]:
    """n CT series from pydicom's CT_small, each in a study of its own; study UID -> its slices' SOP UIDs."""
    studies = {}
    for k in range(n):
        where = folder / f"series{k}"
        where.mkdir(parents=True)
        study = generate_uid()
        sops = []
        for path in write_series(where, slices, gap_mm=2.5):
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID = study
            ds.save_as(path)
            pacs.upload(path)
            sops.append(str(ds.SOPInstanceUID))
        studies[study] = sops
    return studies


def submit(cluster, pacs: Orthanc, *args: str):
    return cluster.medq("submit", "infer", "--pacs", pacs.dicomweb, *args)


def csv_rows(cluster, job_id: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(cluster.medq("results", job_id, "--csv").stdout)))


def check_seg_and_sr(pacs: Orthanc, studies: dict[str, list[str]]) -> None:
    segs, srs = pacs.instances_of_modality("SEG"), pacs.instances_of_modality("SR")
    assert len(segs) == len(set(segs)) == len(studies) and len(srs) == len(studies)  # one of each per study
    for uid in segs:
        seg = hd.seg.Segmentation.from_dataset(pacs.retrieve(uid))
        sources = studies[seg.StudyInstanceUID]  # the source's study
        referenced = {str(item.ReferencedSOPInstanceUID) for series in seg.ReferencedSeriesSequence
                      for item in series.ReferencedInstanceSequence}
        assert referenced == set(sources)
        assert int(seg.NumberOfFrames) == 3 * len(sources)  # a frame per slice for each of 3 segments
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Ground glass", "Consolidation", "Other lung"]
        assert seg.SegmentationType == "BINARY" and seg.Manufacturer == "medq"
    for uid in srs:
        sr = hd.sr.srread(io.BytesIO(_bytes(pacs.retrieve(uid))))
        assert sr.StudyInstanceUID in studies
        evidence = {str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                    for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
        assert evidence & set(segs)  # it references the study's SEG


def _bytes(ds) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_studies_from_orthanc_come_back_as_seg_and_sr_once_each_though_the_worker_was_killed(
        cluster, pacs, segmenter, tmp_path):
    studies = upload_ct_studies(pacs, tmp_path / "src", 8)
    pacs.upload(Path(get_testdata_file("MR_small.dcm")))  # not CT: skipped with its reason, not segmented
    cluster.env["MEDQ_LEASE_SECONDS"] = "4"
    workers = cluster.start_workers(1, "a")
    out = tmp_path / "out"
    done = submit(cluster, pacs, "--model", str(segmenter), "--out", str(out), "--send-to", pacs.dicomweb,
                  "--chunk", "1")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.splitlines()[0]
    assert "9 studies in 8 chunk(s)" in done.stderr
    store = Store(cluster.database_url)
    deadline = time.monotonic() + 240
    while send_counts(store, job_id).get("accepted", 0) < 1:  # the first object is on the PACS
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.02)
    cluster.kill(workers)  # SIGKILL, mid-job
    at_kill = send_counts(store, job_id)
    store.dispose()
    assert at_kill.get("accepted", 0) < 16, "the job ended before the worker could be killed"
    cluster.start_workers(1, "b")
    view = cluster.wait(job_id, ended, timeout=240)
    assert view["state"] == "succeeded", view
    assert view["sends"] == {"accepted": 16}  # a SEG and an SR per CT study, each accepted once
    check_seg_and_sr(pacs, studies)
    rows = csv_rows(cluster, job_id)
    done_rows = [r for r in rows if r["state"] == "done"]
    assert len(done_rows) == 8 and all(r["sent"] == "seg accepted; sr accepted" for r in done_rows)
    assert all((out / r["seg"]).is_file() and (out / r["sr"]).is_file() for r in done_rows)
    (mr,) = [r for r in rows if r["state"] != "done"]
    assert (mr["state"], mr["reason"]) == ("skipped", "modality MR, not CT")
    assert PASSWORD not in cluster.full_logs()


def test_landmarks_of_a_radiograph_from_orthanc_become_an_sr_with_a_point_per_landmark(cluster, pacs, tmp_path):
    from tests.unit.test_predict import random_member

    member = random_member(tmp_path / "member" / "best.pt", seed=1)
    source = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    pacs.upload(Path(get_testdata_file("RG1_UNCR.dcm")))
    cluster.start_workers(1, "a")
    out = tmp_path / "out"
    done = submit(cluster, pacs, "--query", "Modality=CR", "--model", str(member), "--out", str(out),
                  "--send-to", pacs.dicomweb, "--outputs", "sr", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr + cluster.logs()
    (row,) = csv_rows(cluster, done.stdout.splitlines()[0])
    assert row["state"] == "done" and row["sent"] == "sr accepted" and row["overlay"] == ""
    (uid,) = pacs.instances_of_modality("SR")
    sr = hd.sr.srread(io.BytesIO(_bytes(pacs.retrieve(uid))))
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 15
    points = [g.roi.value for g in groups]  # SCOORD: pixel centre of 0-based (x, y) is (x + 0.5, y + 0.5)
    expected = [(float(row[f"x{k}"]) + 0.5, float(row[f"y{k}"]) + 0.5) for k in range(1, 16)]
    np.testing.assert_allclose(np.array(points).reshape(15, 2), expected, atol=0.02)


def test_a_pacs_that_refuses_or_is_away_is_named_before_anything_is_enqueued(cluster, pacs, segmenter, tmp_path):
    from medq.common.store import open_store
    from medq.common.settings import load_settings

    out = str(tmp_path / "out")
    nothing = submit(cluster, pacs, "--query", "StudyDate=19000101", "--model", str(segmenter), "--out", out)
    assert nothing.returncode == 0 and "0 studies: the query matched nothing on the PACS" in nothing.stderr
    cluster.env["MEDQ_PACS_PASSWORD"] = "wrong-password-271"
    refused = cluster.medq("submit", "infer", "--pacs", pacs.dicomweb, "--model", str(segmenter), "--out", out)
    assert refused.returncode == 2
    assert f"PACS {pacs.dicomweb}: querying it: HTTP 401 Unauthorized" in refused.stderr
    assert "wrong-password-271" not in refused.stderr + refused.stdout
    bad = submit(cluster, pacs, "--query", "Modalty=CT", "--model", str(segmenter), "--out", out)
    assert bad.returncode == 2 and "not DICOM attribute keywords: Modalty" in bad.stderr
    unknown = submit(cluster, pacs, "--model", str(segmenter), "--out", out, "--outputs", "seg,dicom")
    assert unknown.returncode == 2 and "--outputs dicom: a segmentation model writes npz, overlay, nifti, seg, sr" \
        in unknown.stderr
    closed = f"http://127.0.0.1:{pacs.port + 1 if pacs.port < 65535 else 1}/dicom-web"
    no_target = submit(cluster, pacs, "--model", str(segmenter), "--out", out, "--send-to", closed)
    assert no_target.returncode == 2 and f"--send-to {closed}: asking it: cannot connect" in no_target.stderr
    patient = submit(cluster, pacs, "--query", "PatientID=12345", "--model", str(segmenter), "--out", out)
    assert patient.returncode == 2 and "PatientID: identifies a patient" in patient.stderr
    pacs.stop()
    away = submit(cluster, pacs, "--model", str(segmenter), "--out", out)
    assert away.returncode == 2 and "querying it: cannot connect (after 3 attempts)" in away.stderr
    settings = load_settings({"MEDQ_HOME": str(cluster.home)})
    jobs = open_store(settings).session
    from medq.common.store.models import Job

    with jobs() as s:
        assert s.query(Job).count() == 1  # only the job whose query matched nothing


def test_outputs_the_pacs_did_not_accept_stay_on_disk_and_a_resume_sends_only_those(cluster, pacs, segmenter, tmp_path):
    studies = upload_ct_studies(pacs, tmp_path / "src", 2)
    target = Orthanc(tmp_path / "target").start()  # a second PACS: it answers at submit, then goes away
    out = tmp_path / "out"
    cluster.env["MEDQ_PACS_ATTEMPTS"] = "2"
    done = submit(cluster, pacs, "--model", str(segmenter), "--out", str(out), "--send-to", target.dicomweb)
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.splitlines()[0]
    target.stop()
    cluster.start_workers(1, "a")
    view = cluster.wait(job_id, ended, timeout=180)
    assert view["state"] == "failed" and view["sends"] == {"failed": 4}
    assert "4 DICOM output(s) not accepted by the PACS (first: storing on the PACS: cannot connect" in view["error"]
    rows = csv_rows(cluster, job_id)
    assert all(r["sent"].startswith("seg failed: storing on the PACS: cannot connect") for r in rows)
    assert all((out / r["seg"]).is_file() for r in rows)  # nothing lost
    listed = list(csv.DictReader(io.StringIO(cluster.medq("results", job_id, "--failed").stdout)))
    assert [r["key"] for r in listed] == [r["key"] for r in rows]  # --failed lists the studies not sent
    target.start()
    try:
        resumed = cluster.medq("resume", job_id)
        assert resumed.returncode == 0, resumed.stderr
        view = cluster.wait(job_id, ended, timeout=120)
        assert view["state"] == "succeeded" and view["sends"] == {"accepted": 4}
        check_seg_and_sr(target, studies)
        assert len(pacs.instances_of_modality("SEG")) == 0  # sent where it was told, nowhere else
    finally:
        target.stop()


def test_a_study_the_pacs_lost_after_planning_fails_alone_with_the_pacs_answer(cluster, pacs, segmenter, tmp_path):
    studies = upload_ct_studies(pacs, tmp_path / "src", 2)
    done = submit(cluster, pacs, "--model", str(segmenter), "--out", str(tmp_path / "out"))  # planned, no worker yet
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.splitlines()[0]
    lost = sorted(studies)[0]
    found = pacs.session.post(f"{pacs.url}/tools/find", json={
        "Level": "Instance", "Query": {"SOPInstanceUID": studies[lost][2]}}, timeout=30).json()
    assert pacs.session.delete(f"{pacs.url}/instances/{found[0]}", timeout=30).ok  # gone before its chunk runs
    cluster.start_workers(1, "a")
    view = cluster.wait(job_id, ended, timeout=180)
    assert view["state"] == "succeeded" and view["studies"]["done"] == 1 and view["studies"]["failed"] == 1
    (failed,) = [r for r in csv_rows(cluster, job_id) if r["state"] == "failed"]
    assert re.fullmatch(r"slice \d of 5: retrieving the instance from the PACS: HTTP 404 Not Found", failed["reason"])
