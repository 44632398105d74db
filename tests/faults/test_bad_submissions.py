"""Bad submissions through the real CLI: each is refused with exit code 2 and a sentence naming
the option, file or line (no traceback), and nothing is enqueued."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tests.integration.harness import Cluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    cluster = Cluster(root / "home")
    for kind, args in (("synth-chest", ["--n", "12"]), ("synth-ceph", ["--n", "6", "--n-test", "1", "--width", "96",
                                                                        "--height", "120"]),
                       ("synth-ct", ["--n", "12", "--size", "64", "--slices-per-volume", "4"])):
        assert cluster.medq("data", kind, str(root / kind), *args).returncode == 0
    return root


def _variants(root):
    """(name, argv, what the message must say). Each dataset variant is made on first use."""
    chest, ceph, ct = root / "synth-chest", root / "synth-ceph", root / "synth-ct"

    def copy(src, name, edit):
        dst = root / name
        if not dst.exists():
            shutil.copytree(src, dst)
            edit(dst)
        return str(dst)

    def fifo_ct(d):
        os.mkfifo(d / "images_fifo.npy")
        np.save(d / "masks_fifo.npy", np.zeros((2, 64, 64), dtype=np.uint8))

    def latin1_annotation(d):
        path = d / "AnnotationsByMD" / "400_senior" / "002.txt"
        path.write_bytes(path.read_bytes().replace(b",", b"\xe9,", 1))

    ens = ["submit", "ensemble", "--data", str(chest)]
    hrnet = ["submit", "hrnet", "--data", str(ceph)]
    seg = ["submit", "segment", "--data", str(ct)]
    return [
        ("NaN head learning rate", [*ens, "--lr-head", "nan"], "--lr-head"),
        ("negative backbone learning rate", [*ens, "--lr-backbone", "-1"], "--lr-backbone"),
        ("absurd image size", [*ens, "--image-size", "100000"], "--image-size"),
        ("a thousand loader processes", [*ens, "--loader-workers", "1000"], "--loader-workers"),
        ("NaN HRNet learning rate", [*hrnet, "--lr", "nan"], "--lr"),
        ("infinite sigma", [*hrnet, "--sigma", "inf"], "--sigma"),
        ("NaN loss weights", [*seg, "--loss-weights", "nan,nan,nan"], "--loss-weights"),
        ("zero loss weights", [*seg, "--loss-weights", "0,0,0"], "loss weights"),
        ("unknown loss", [*ens, "--loss", "huber"], "complete"),
        ("a FIFO among the CT arrays", ["submit", "segment", "--data", copy(ct, "ct-fifo", fifo_ct)],
         "not a regular file"),
        ("a Latin-1 byte in an annotation", ["submit", "hrnet", "--data", copy(ceph, "ceph-latin1", latin1_annotation)],
         "002.txt: line 1: byte 0xe9 is not UTF-8"),
        ("a data folder that does not exist", ["submit", "ensemble", "--data", str(root / "br[/x]")], "br[/x]"),
        ("--out under a file", ["submit", "infer", "--archive", str(chest / "images"), "--model",
                                str(root / "model.pt"), "--out", str(chest / "landmarks.csv" / "out")],
         "cannot be written"),
        ("--out inside the archive", ["submit", "infer", "--archive", str(chest / "images"), "--model",
                                      str(root / "model.pt"), "--out", str(chest / "images" / "out")],
         "inside the archive"),
        ("--out under /proc", ["submit", "infer", "--archive", str(chest / "images"), "--model",
                               str(root / "model.pt"), "--out", "/proc/medq"], "cannot be written"),
        ("inference batch of zero", ["submit", "infer", "--archive", str(chest / "images"), "--model",
                                     str(root / "model.pt"), "--batch-size", "0"], "--batch-size"),
    ]


def test_each_bad_submission_is_refused_with_its_reason_and_nothing_is_enqueued(data, tmp_path, fault_log):
    from medq.scheduler.bench import _untrained_checkpoint

    _untrained_checkpoint(data / "model.pt", 64)
    cluster = Cluster(tmp_path / "home")
    variants = _variants(data)
    unclean = []
    for name, argv, said in variants:
        out = cluster.medq(*argv, timeout=120)
        if out.returncode != 2 or said not in out.stderr or "Traceback" in out.stderr or out.stdout:
            unclean.append((name, out.returncode, out.stderr[-1500:]))
    fault_log.bad_inputs("bad submissions through the CLI", len(variants), len(variants) - len(unclean))
    assert unclean == []
    assert json.loads(cluster.medq("status", "--json").stdout) == []  # nothing was created, nothing enqueued
