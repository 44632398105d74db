"""HRNet jobs end to end: the real CLI, a real redis-server and a real worker process."""

from __future__ import annotations

import json
import math

import pytest

from tests.integration.harness import Cluster, ended

pytestmark = pytest.mark.integration
TINY = ["--width", "w18s", "--image-size", "64", "--batch-size", "4", "--warmup-epochs", "1", "--top-k", "2"]


@pytest.fixture(scope="module")
def ceph(tmp_path_factory):
    out = tmp_path_factory.mktemp("ceph") / "data"
    done = Cluster(out.parent / "home").medq("data", "synth-ceph", str(out), "--n", "12", "--n-test", "3",
                                             "--width", "160", "--height", "200", "--seed", "4")
    assert done.returncode == 0, done.stderr
    return out


def test_an_hrnet_job_reports_mre_and_sdr_per_set_beside_the_untrained_model(cluster, ceph):
    cluster.start_workers(1, "a")
    done = cluster.medq("submit", "hrnet", "--data", str(ceph), "--test-dir", str(ceph / "RawImage" / "Test1Data"),
                        "--test-dir", str(ceph / "RawImage" / "Test2Data"), "--epochs", "3", *TINY, "--wait")
    assert done.returncode == 0, done.stdout + done.stderr + cluster.logs()
    job_id = done.stdout.splitlines()[0]
    assert "MRE ± SD" in done.stdout and "Sella" in done.stdout
    status = cluster.status(job_id)
    assert (status["kind"], status["state"]) == ("hrnet", "succeeded")
    assert [(m["seed"], m["state"], m["epoch"]) for m in status["members"]] == [(0, "succeeded", 3)]
    results = json.loads(cluster.medq("results", job_id, "--json").stdout)
    sets = {s["name"]: s["metrics"] for s in results["sets"]}
    assert list(sets) == ["test", "test-untrained", "Test1Data", "Test2Data"]
    assert sets["Test1Data"]["n_images"] == 3 and sets["test"]["checkpoints"] == 2
    for metrics in sets.values():
        assert metrics["unit"] == "mm" and math.isfinite(metrics["mre_mm"]) and metrics["mre_mm"] > 0
        assert {"sdr_2mm", "sdr_2.5mm", "sdr_3mm", "sdr_4mm"} <= set(metrics)
        assert len(metrics["per_landmark"]) == 19

    # The trained job serves bulk inference: 19 landmarks per study, in mm where DICOM gives a spacing.
    import csv
    import io
    import shutil

    from pydicom.data import get_testdata_file

    archive = ceph.parent / "archive"
    shutil.copytree(ceph / "RawImage" / "Test1Data", archive)
    shutil.copy(get_testdata_file("CT_small.dcm"), archive / "ct_small")
    infer = cluster.medq("submit", "infer", "--archive", str(archive), "--model", job_id, "--wait")
    assert infer.returncode == 0, infer.stdout + infer.stderr + cluster.logs()
    out = cluster.medq("results", infer.stdout.splitlines()[0], "--csv")
    rows = {r["path"]: r for r in csv.DictReader(io.StringIO(out.stdout))}
    assert sorted(rows) == ["013.bmp", "014.bmp", "015.bmp", "ct_small"]
    # the 19 landmarks named in the columns, counted from 1: x1_sella ... x19_articulare
    assert all(r["state"] == "done" and r["x19_articulare"] and r["spread19_articulare_px"] for r in rows.values())
    assert not any(column.startswith("x20") for column in rows["ct_small"])
    assert float(rows["ct_small"]["x19_articulare_mm"]) == pytest.approx(float(rows["ct_small"]["x19_articulare"])
                                                                         * 0.661468, rel=1e-3)
    assert rows["ct_small"]["spacing_source"] == "PixelSpacing"
    assert rows["013.bmp"]["x1_sella_mm"] == "" and rows["013.bmp"]["spacing_source"] == ""  # a BMP has no spacing


def test_a_bad_annotation_is_refused_before_anything_is_enqueued(cluster, ceph, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ceph, bad)
    annotation = bad / "AnnotationsByMD" / "400_senior" / "005.txt"
    annotation.write_text("\n".join(annotation.read_text().splitlines()[:18]) + "\n")
    done = cluster.medq("submit", "hrnet", "--data", str(bad), "--epochs", "1", *TINY)
    assert done.returncode == 2
    assert "005.txt: 18 coordinate lines, expected 19" in done.stderr
    assert json.loads(cluster.medq("status", "--json").stdout) == []


def test_a_cancelled_job_resumes_from_its_last_checkpoint(cluster, ceph):
    cluster.start_workers(1, "a")
    done = cluster.medq("submit", "hrnet", "--data", str(ceph), "--epochs", "30", *TINY)
    job_id = done.stdout.splitlines()[0]
    cluster.wait(job_id, lambda v: v["members"][0]["epoch"] >= 2)
    assert cluster.medq("cancel", job_id).returncode == 0
    view = cluster.wait(job_id, ended, timeout=120)
    stopped_at = view["members"][0]["epoch"]
    assert view["state"] == "cancelled" and stopped_at < 30

    again = cluster.medq("submit", "hrnet", "--resume", job_id, "--wait")
    assert again.returncode == 0 and again.stdout.splitlines()[0] == job_id, again.stdout + again.stderr
    assert "queued again" in again.stderr
    attempts = cluster.attempts(job_id, 0)
    assert [a.state for a in attempts][-1] == "succeeded"
    # the status shows the epoch in progress; the checkpoint holds the one before it
    assert attempts[-1].start_epoch >= max(1, stopped_at - 1), "the resumed attempt must start from the checkpoint"
    assert cluster.status(job_id)["members"][0]["epoch"] == 30
