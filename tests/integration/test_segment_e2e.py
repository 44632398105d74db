"""Segmentation jobs end to end: the real CLI, a real redis-server and a real worker process
train a small smp model, score it, and segment .npy volumes and a real DICOM series."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from tests.integration.harness import Cluster, ended
from tests.unit.test_seg_volumes import write_series

pytestmark = pytest.mark.integration
TINY = ["--arch", "unet", "--encoder", "resnet18", "--image-size", "64", "--batch-size", "4"]


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    out = tmp_path_factory.mktemp("ct") / "data"
    done = Cluster(out.parent / "home").medq("data", "synth-ct", str(out), "--n", "30", "--size", "64",
                                             "--slices-per-volume", "5", "--seed", "5")
    assert done.returncode == 0, done.stderr
    return out


def test_a_segment_job_reports_dice_and_iou_per_class_and_its_masks_serve_bulk_inference(cluster, ct, tmp_path):
    cluster.start_workers(1, "a")
    done = cluster.medq("submit", "segment", "--data", str(ct), "--epochs", "2", *TINY, "--wait")
    assert done.returncode == 0, done.stdout + done.stderr + cluster.logs()
    job_id = done.stdout.splitlines()[0]
    assert "Dice (per slice)" in done.stdout and "lesion mean" in done.stdout and "split by volume" in done.stdout
    status = cluster.status(job_id)
    assert (status["kind"], status["state"]) == ("segment", "succeeded")
    assert [(m["seed"], m["state"], m["epoch"]) for m in status["members"]] == [(0, "succeeded", 2)]
    assert 0 <= status["members"][0]["val_score"] <= 1  # the last epoch's validation lesion Dice
    assert "val Dice" in cluster.medq("status", job_id).stdout
    results = json.loads(cluster.medq("results", job_id, "--json").stdout)
    sets = {s["name"]: s["metrics"] for s in results["sets"]}
    assert list(sets) == ["test", "test-untrained"]
    for metrics in sets.values():
        assert metrics["split_by"] == "volume" and metrics["n_images"] == metrics["n_slices"]["test"] == 5
        assert set(metrics["per_class"]) == {"ground_glass", "consolidation", "other_lung", "background"}
        assert {"per_image", "pooled"} == set(metrics["reductions"])
        assert all(0 <= v <= 1 for v in metrics["lesion_mean"].values() if v is not None)
    assert len(list((cluster.home / "artifacts").rglob("overlays/slice-*.png"))) == 5

    # bulk inference with the trained segmenter: two .npy volumes, a DICOM series, bad files alone
    archive = tmp_path / "archive"
    (archive / "series").mkdir(parents=True)
    images = np.load(ct / "images_synth.npy")
    np.save(archive / "scan1.npy", images[:5, ..., 0])
    np.save(archive / "scan2.npy", images[5:8])
    (archive / "broken.npy").write_bytes(b"\x93NUMPY not really")
    (archive / "readme.txt").write_text("hello")
    write_series(archive / "series", 4, gap_mm=3.0)
    out = tmp_path / "out"
    refused = cluster.medq("submit", "infer", "--archive", str(archive), "--model", job_id)
    assert refused.returncode == 2 and "give --out DIR" in refused.stderr
    infer = cluster.medq("submit", "infer", "--archive", str(archive), "--model", job_id, "--out", str(out), "--wait")
    assert infer.returncode == 0, infer.stdout + infer.stderr + cluster.logs()
    rows = list(csv.DictReader(io.StringIO(cluster.medq("results", infer.stdout.splitlines()[0], "--csv").stdout)))
    by_path = {r["path"] if not r["path"].startswith("series:") else "series": r for r in rows}
    assert sorted(by_path) == ["broken.npy", "readme.txt", "scan1.npy", "scan2.npy", "series"]
    assert (by_path["broken.npy"]["state"], by_path["readme.txt"]["state"]) == ("failed", "skipped")
    assert "not a readable .npy array" in by_path["broken.npy"]["reason"]
    for name, slices in (("scan1.npy", 5), ("scan2.npy", 3), ("series", 4)):
        row = by_path[name]
        assert row["state"] == "done" and int(row["slices"]) == slices
        saved = np.load(out / row["mask"])
        labels = saved["labels"]
        assert len(saved["sop_instance_uids"]) == (4 if name == "series" else 0)
        assert labels.shape == (slices, int(row["height"]), int(row["width"])) and labels.max() <= 3
        voxels = {c: int(row[f"{c}_voxels"]) for c in ("ground_glass", "consolidation", "other_lung", "background")}
        assert voxels == {c: int((labels == k).sum()) for k, c in enumerate(voxels)}
        assert (out / "overlays" / row["mask"].replace("masks/", "").replace(".npz", ".png")).is_file()
    assert by_path["scan1.npy"]["ground_glass_ml"] == ""  # a .npy volume has no spacing
    series = by_path["series"]
    assert (series["format"], float(series["spacing_slice_mm"])) == ("dicom", 3.0)
    voxel_ml = 3.0 * float(series["spacing_row_mm"]) * float(series["spacing_column_mm"]) / 1000
    assert float(series["ground_glass_ml"]) == pytest.approx(int(series["ground_glass_voxels"]) * voxel_ml, rel=1e-3)
    lung = sum(int(series[f"{c}_voxels"]) for c in ("ground_glass", "consolidation", "other_lung"))
    if lung:
        assert math.isclose(float(series["lung_involvement_pct"]), 100 * (lung - int(series["other_lung_voxels"])) / lung,
                            rel_tol=1e-3)


def test_a_bad_dataset_is_refused_before_anything_is_enqueued(cluster, ct, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ct, bad)
    masks = np.load(bad / "masks_synth.npy")
    masks[6, 1, 1] = (0, 1, 1, 0)
    np.save(bad / "masks_synth.npy", masks)
    done = cluster.medq("submit", "segment", "--data", str(bad), "--epochs", "1", *TINY)
    assert done.returncode == 2
    assert "masks_synth.npy: one-hot channels do not sum to 1 at every pixel in slice(s) 6" in done.stderr
    assert json.loads(cluster.medq("status", "--json").stdout) == []


def test_a_cancelled_segment_job_resumes_from_its_last_checkpoint(cluster, ct):
    cluster.start_workers(1, "a")
    done = cluster.medq("submit", "segment", "--data", str(ct), "--epochs", "30", "--patience", "0", *TINY)
    job_id = done.stdout.splitlines()[0]
    cluster.wait(job_id, lambda v: v["members"][0]["epoch"] >= 2)
    assert cluster.medq("cancel", job_id).returncode == 0
    view = cluster.wait(job_id, ended, timeout=120)
    stopped_at = view["members"][0]["epoch"]
    assert view["state"] == "cancelled" and stopped_at < 30

    again = cluster.medq("submit", "segment", "--resume", job_id, "--wait")
    assert again.returncode == 0 and again.stdout.splitlines()[0] == job_id, again.stdout + again.stderr
    assert "queued again" in again.stderr and "lesion mean" in again.stdout
    attempts = cluster.attempts(job_id, 0)
    assert [a.state for a in attempts][-1] == "succeeded"
    assert attempts[-1].start_epoch >= max(1, stopped_at - 1), "the resumed attempt must start from the checkpoint"
    assert cluster.status(job_id)["members"][0]["epoch"] == 30
