"""A hostile archive corpus through real workers: names that are not UTF-8, duplicate names, zip
and tar bombs, FIFOs, symlink loops, absolute and ``..`` names, links out, devices. Every entry
gets exactly one record; the good ones are done, each bad one fails (or is skipped) alone with
a reason that names no file; the job ends and the worker goes on to the next archive."""

from __future__ import annotations

import csv
import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.integration.harness import Cluster

pytestmark = pytest.mark.integration
LIMIT = 4_000_000  # MEDQ_MAX_STUDY_BYTES for this test: a 20 MB member is a bomb
BOMB = b"\0" * 20_000_000
PATIENT = "DOE_JOHN"  # in every name: no reason, log or output may repeat it


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> list[bytes]:
    from medq.common.families.chest.synth import synth_chest

    out = tmp_path_factory.mktemp("synth")
    synth_chest(out, n=3, seed=8)
    return [p.read_bytes() for p in sorted((out / "images").glob("*.png"))]


def _folder(root: Path, pngs: list[bytes], outside: Path) -> dict[str, tuple[str, str]]:
    """Files of a folder archive -> (expected state, reason fragment)."""
    for k, data in enumerate(pngs):
        (root / f"ward{k}").mkdir(parents=True)
        (root / f"ward{k}" / f"{PATIENT}_{k}.png").write_bytes(data)
    os.close(os.open(bytes(root) + f"/{PATIENT}_caf\xe9.png".encode("latin-1"), os.O_CREAT | os.O_WRONLY))
    os.mkdir(bytes(root) + b"/dir\xff")
    (Path(os.fsdecode(bytes(root) + b"/dir\xff")) / "x.png").write_bytes(pngs[0])
    os.mkfifo(root / f"{PATIENT}_pipe.png")
    (root / "loop1").symlink_to("loop2")
    (root / "loop2").symlink_to("loop1")
    (root / f"{PATIENT}_out.png").symlink_to(outside)
    (root / f"{PATIENT}_big.dcm").write_bytes(BOMB[:6_000_000])
    (root / f"{PATIENT}_empty.png").write_bytes(b"")
    return {
        **{f"ward{k}/{PATIENT}_{k}.png": ("done", "") for k in range(len(pngs))},
        f"{PATIENT}_caf\\xe9.png": ("failed", "not valid UTF-8"),
        "dir\\xff": ("failed", "folder name is not valid UTF-8"),
        f"{PATIENT}_pipe.png": ("failed", "not a regular file"),
        "loop1": ("failed", "symlink loop"), "loop2": ("failed", "symlink loop"),
        f"{PATIENT}_out.png": ("failed", "outside the archive"),
        f"{PATIENT}_big.dcm": ("failed", "file too large"),
        f"{PATIENT}_empty.png": ("failed", "empty file"),
    }


def _tar(path: Path, pngs: list[bytes]) -> dict[str, tuple[str, str]]:
    with tarfile.open(path, "w:gz", encoding="utf-8", errors="surrogateescape") as tf:
        def add(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data)
            tf.addfile(info, io.BytesIO(data) if data else None)

        for k, data in enumerate(pngs):
            add(f"scans/{PATIENT}_{k}.png", data)
        add(f"scans/{PATIENT}_dup.png", pngs[0])
        add(f"scans/{PATIENT}_dup.png", pngs[1])  # the same name again
        add(f"{PATIENT}_caf\udce9.png", pngs[0])  # the raw byte 0xe9: not UTF-8
        add(f"{PATIENT}_bomb.dcm", BOMB)
        add(f"/{PATIENT}_abs.png", pngs[0])
        add(f"../{PATIENT}_up.png", pngs[0])
        add(f"{PATIENT}_passwd.png", kind=tarfile.LNKTYPE, link="/etc/passwd")  # a hard link out
        add(f"{PATIENT}_sym.png", kind=tarfile.SYMTYPE, link="/etc/hostname")
        add(f"{PATIENT}_fifo.png", kind=tarfile.FIFOTYPE)
        add(f"{PATIENT}_dev", kind=tarfile.CHRTYPE)
    return {
        **{f"scans/{PATIENT}_{k}.png": ("done", "") for k in range(len(pngs))},
        f"scans/{PATIENT}_dup.png": ("done", ""), f"scans/{PATIENT}_dup.png#2": ("skipped", "duplicate name"),
        f"{PATIENT}_caf\\xe9.png": ("failed", "not valid UTF-8"),
        f"{PATIENT}_bomb.dcm": ("failed", "file too large"),
        f"/{PATIENT}_abs.png": ("failed", "unsafe name"), f"../{PATIENT}_up.png": ("failed", "unsafe name"),
        f"{PATIENT}_passwd.png": ("failed", "link in archive"), f"{PATIENT}_sym.png": ("failed", "link in archive"),
        f"{PATIENT}_fifo.png": ("failed", "special file"), f"{PATIENT}_dev": ("failed", "special file"),
    }


def _zip(path: Path, pngs: list[bytes]) -> dict[str, tuple[str, str]]:
    import warnings

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate, and writes it
        for k, data in enumerate(pngs):
            zf.writestr(f"scans/{PATIENT}_{k}.png", data)
        zf.writestr(f"scans/{PATIENT}_dup.png", pngs[0])
        zf.writestr(f"scans/{PATIENT}_dup.png", pngs[1])
        zf.writestr(f"{PATIENT}_bomb.dcm", BOMB)
        zf.writestr(f"/{PATIENT}_abs.png", pngs[0])
        zf.writestr(f"../{PATIENT}_up.png", pngs[0])
        link = zipfile.ZipInfo(f"{PATIENT}_sym.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/hostname")
    return {
        **{f"scans/{PATIENT}_{k}.png": ("done", "") for k in range(len(pngs))},
        f"scans/{PATIENT}_dup.png": ("done", ""), f"scans/{PATIENT}_dup.png#2": ("skipped", "duplicate name"),
        f"{PATIENT}_bomb.dcm": ("failed", "file too large"),
        f"/{PATIENT}_abs.png": ("failed", "unsafe name"), f"../{PATIENT}_up.png": ("failed", "unsafe name"),
        f"{PATIENT}_sym.png": ("failed", "link in archive"),
    }


def _records(cluster, job_id: str) -> dict[str, dict]:
    out = cluster.medq("results", job_id, "--csv")
    assert out.returncode == 0, out.stderr
    records: dict[str, dict] = {}
    for row in csv.DictReader(io.StringIO(out.stdout)):
        key = row["path"] if row["path"] not in records else f"{row['path']}#2"
        records[key] = row
    return records


def test_a_hostile_corpus_fails_entry_by_entry_and_the_worker_goes_on(redis_url, tmp_path, pngs, fault_log):
    import redis

    from medq.scheduler.bench import _untrained_checkpoint

    redis.Redis.from_url(f"{redis_url}/5").flushdb()
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(pngs[0])
    corpus = {"folder": (tmp_path / "export", None), "tar.gz": (tmp_path / "export.tar.gz", _tar),
              "zip": (tmp_path / "export.zip", _zip)}
    expected = {"folder": _folder(corpus["folder"][0], pngs, outside)}
    for kind, (path, make) in corpus.items():
        if make is not None:
            expected[kind] = make(path, pngs)
    model = _untrained_checkpoint(tmp_path / "best.pt", 64)
    cluster = Cluster(tmp_path / "home", broker_url=f"{redis_url}/5", max_study_bytes=str(LIMIT))
    fault_log.trying("a hostile archive corpus: a folder, a tar.gz and a zip")
    bad = sum(state != "done" for entries in expected.values() for state, _ in entries.values())
    wrong: list = []
    try:
        cluster.start_workers(1, "a")
        for kind, (path, _) in corpus.items():
            done = cluster.medq("submit", "infer", "--archive", str(path), "--model", str(model), "--chunk", "4",
                                "--out", str(tmp_path / f"out-{kind}"), "--wait", timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr + cluster.logs()
            job_id = done.stdout.splitlines()[0]
            records = _records(cluster, job_id)
            assert sorted(records) == sorted(expected[kind]), kind  # one record per entry, none twice
            for name, (state, reason) in expected[kind].items():
                row = records[name]
                if row["state"] != state or reason not in row["reason"] or PATIENT in row["reason"]:
                    wrong.append((kind, name, row["state"], row["reason"]))
            assert len({r["key"] for r in records.values()}) == len(records)  # distinct keys, duplicates too
            assert cluster.status(job_id)["state"] == "succeeded"
        fault_log.bad_inputs("hostile archive entries (folder, tar.gz, zip)", bad,
                             bad - sum(1 for w in wrong if expected[w[0]][w[1]][0] != "done"))
        assert wrong == []
        logs = cluster.full_logs()
        assert PATIENT not in logs and "Traceback" not in logs
        assert "exited with code" not in logs
    finally:
        cluster.stop()
    fault_log.survived(None, f"{bad} bad entries, each failed alone; the good ones done")
