"""The artifact root on a tiny file system (a tmpfs: a loop mount needs no image file and the
same privilege). A member that cannot fit its checkpoints is refused before it trains; one whose
disk fills while it trains is refused its next checkpoint, with the reason, and resumes from its
last good checkpoint once space is freed, clearing the partial file a killed attempt left. (A
write that runs out of space half way, torch's "unexpected pos", is tested on a tmpfs in
tests/unit/test_atomic_files.py: end to end the space check before each write comes first.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from tests.conftest import TINY, tmpfs
from tests.integration.harness import Cluster, ended

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "artifacts", 60) as mount:
        yield mount


def _resize(mount, megabytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={megabytes}m", str(mount)], check=True)


def test_a_full_artifact_disk_fails_the_member_clearly_and_resume_goes_on(redis_url, tmp_path, small_disk,
                                                                          fault_log):
    import redis

    fault_log.trying("the artifact disk too small for a member, then full while it trains")
    redis.Redis.from_url(f"{redis_url}/4").flushdb()
    cluster = Cluster(tmp_path / "home", broker_url=f"{redis_url}/4", artifact_root=str(small_disk))
    data = tmp_path / "chest"
    try:
        assert cluster.medq("data", "synth-chest", str(data), "--n", "36", "--seed", "3").returncode == 0
        cluster.start_workers(1, "a")
        # 60 MB cannot hold a ResNet-18 member's checkpoints (~45 MB of weights, Adam's moments, best.pt)
        done = cluster.medq("submit", "ensemble", "--data", str(data), "--seeds", "1", "--epochs", "20", *TINY)
        job_id = done.stdout.splitlines()[0]
        view = cluster.wait(job_id, ended, timeout=120)
        assert view["state"] == "failed"
        reason = view["members"][0]["error"]
        said, clean = [reason], 0
        clean += f"no space left on {small_disk}" in reason and "writing a member's checkpoints needs ~" in reason
        assert view["members"][0]["epoch"] == 0  # refused before it trained

        _resize(small_disk, 400)  # room to start; then the disk fills while it trains
        assert cluster.medq("resume", job_id).returncode == 0
        workdir = small_disk / job_id / "seed-0"
        deadline = time.monotonic() + 120
        while not (workdir / "last.pt").exists():
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.1)
        filler = small_disk / "filler"
        with open(filler, "wb") as handle:  # leave 2 MB: the next checkpoint cannot fit
            os.posix_fallocate(handle.fileno(), 0, shutil.disk_usage(small_disk).free - 2 * 1024 * 1024)
        view = cluster.wait(job_id, ended, timeout=120)
        reason = view["members"][0]["error"] or ""
        said.append(reason)
        clean += (view["state"] == "failed" and f"no space left on {small_disk}" in reason
                  and ("writing last.pt" in reason or "writing best.pt" in reason) and not list(workdir.glob("*.tmp")))
        fault_log.bad_inputs("an artifact disk too small, then full", 2, clean)
        assert clean == 2, said
        assert "no space left" in cluster.medq("status", job_id).stdout

        filler.unlink()  # the operator frees space
        (workdir / "last.pt.tmp").write_bytes(b"half a checkpoint")  # as a killed attempt leaves it
        freed = time.monotonic()
        assert cluster.medq("resume", job_id).returncode == 0
        view = cluster.wait(job_id, ended, timeout=240)
        recovery = time.monotonic() - freed
        assert view["state"] == "succeeded", cluster.logs()
        attempts = cluster.attempts(job_id, 0)
        assert attempts[-1].state == "succeeded" and attempts[-1].start_epoch >= 1  # from the last good checkpoint
        assert not (workdir / "last.pt.tmp").exists()
        results = json.loads(cluster.medq("results", job_id, "--json").stdout)
        assert [m["seed"] for m in results["members"] if m["metrics"]] == [0]
    finally:
        cluster.stop()
    fault_log.survived(recovery, "space freed + `medq resume` to the job's results; the member said: " + " / ".join(
        r.replace(str(small_disk), "ARTIFACTS") for r in said))
