"""The metrics endpoint during real jobs: a real redis-server, real worker launchers serving
MEDQ_METRICS_PORT, scraped over HTTP as Prometheus does, and compared with the store."""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from medq.common.store import Member, Store
from medq.common.store.models import Chunk, Study
from medq.workers.metrics import MIN_READ_INTERVAL
from tests.conftest import TINY, free_port
from tests.integration.harness import ended

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of the endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _until(check, timeout: float = 120, poll: float = 0.2, what: str = ""):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)
    return value


def test_metrics_match_the_store_during_a_job_and_a_killed_worker_moves_the_reap_counter(
        cluster, big_dataset, tmp_path):
    from medq.common.families.chest.synth import synth_chest
    from medq.scheduler.bench import _untrained_checkpoint

    synth_chest(tmp_path / "synth", n=60, seed=9)
    archive = tmp_path / "archive"
    shutil.copytree(tmp_path / "synth" / "images", archive)
    model = _untrained_checkpoint(tmp_path / "best.pt", 64)
    store = Store(cluster.database_url)

    trainer = cluster.start_workers(1, "trainer")  # no endpoint of its own
    train = cluster.medq("submit", "ensemble", "--data", str(big_dataset), "--seeds", "1", "--epochs", "30", *TINY)
    assert train.returncode == 0, train.stderr
    train_id = train.stdout.splitlines()[0]
    _until(lambda: cluster.status(train_id)["members"][0]["state"] == "running", what="the member running")

    port = free_port()
    cluster.env["MEDQ_METRICS_PORT"] = str(port)
    cluster.start_workers(1, "watched")
    infer = cluster.medq("submit", "infer", "--archive", str(archive), "--model", str(model), "--chunk", "10",
                         "--batch-size", "2", "--loader-workers", "0")
    assert infer.returncode == 0, infer.stderr
    infer_id = infer.stdout.splitlines()[0]

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
        assert answer.status == 200
    _until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10).status == 200,
           what="the launcher ready")

    # Mid-job: what the endpoint says is what the store says (read before and after the scrape).
    def counts():
        with store.session() as s:
            done = s.scalar(select(func.count()).where(Study.job_id == infer_id, Study.state == "done"))
            queued = s.scalar(select(func.count()).where(Chunk.job_id == infer_id, Chunk.state == "queued"))
            worker = s.scalar(select(Member.worker).where(Member.job_id == train_id))
        return done, queued, worker

    def consistent():
        time.sleep(MIN_READ_INTERVAL)  # past the endpoint's cache: this scrape reads the store
        before = counts()
        samples = scrape(port)
        after = counts()
        done = sample(samples, "medq_studies_total", job_id=infer_id, outcome="done")
        depth = sample(samples, "medq_queue_messages", queue="infer.normal")
        running = sample(samples, "medq_members_running", worker=before[2], device="cpu")
        if before != after or done is None or not 0 < before[0] < 60 or before[1] == 0:
            return None  # the job moved during the scrape, or is not mid-way yet: look again
        return samples, done, depth, running, before

    samples, done, depth, running, (store_done, store_queued, trainer_node) = _until(
        consistent, what="a scrape mid-job")
    assert done == store_done
    assert depth == store_queued, "every queued chunk is one message on infer.normal"
    assert running == 1, f"the training member runs on {trainer_node}"
    progress = sample(samples, "medq_member_progress_ratio", worker=trainer_node, device="cpu", job_id=train_id, seed="0")
    assert progress is not None and 0 < progress < 1
    assert sample(samples, "medq_jobs", kind="infer", state="running") == 1
    assert sample(samples, "medq_workers_online", device="cpu") == 2
    assert sample(samples, "medq_launcher_workers_alive", device="cpu") == 1
    assert sample(samples, "medq_store_up") == 1 and sample(samples, "medq_broker_up") == 1
    assert sample(samples, "medq_lease_reaps_total", kind="member") == 0
    assert not any(name.startswith("medq_gpu_") for name, _ in samples), "no GPU here: no GPU series"

    # A SIGKILLed worker: its lease lapses, the watched launcher's reaper reaps it, the counter moves.
    cluster.kill(trainer)
    _until(lambda: sample(scrape(port), "medq_lease_reaps_total", kind="member") == 1, timeout=90,
           what="the reap counted")
    view = cluster.wait(infer_id, ended, timeout=240)
    assert view["state"] == "succeeded"
    final = scrape(port)
    assert sample(final, "medq_studies_total", job_id=infer_id, outcome="done") == 60
    assert sample(final, "medq_studies_pending", job_id=infer_id) == 0
    assert cluster.medq("cancel", train_id).returncode == 0
    store.dispose()


def test_an_endpoint_without_a_store_says_so_and_is_not_ready(tmp_path):
    """`medq metrics --port` on a host whose store is away: store_up 0, /readyz 503, no traceback."""
    import subprocess
    import sys

    from tests.integration.harness import ROOT

    port = free_port()
    env = {"MEDQ_HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
           "MEDQ_DATABASE_URL": "postgresql+psycopg://medq:s3cret-pw@127.0.0.1:1/medq"}
    proc = subprocess.Popen([sys.executable, "-m", "medq.scheduler", "metrics", "--port", str(port)], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        samples = _until(lambda: _try_scrape(port), timeout=60, what="the endpoint up")
        assert sample(samples, "medq_store_up") == 0
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert refused.value.code == 503
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "s3cret-pw" not in out and "Traceback" not in out, out


def _try_scrape(port: int):
    try:
        return scrape(port)
    except (urllib.error.URLError, ConnectionError):
        return None
