"""No secret leaves medq: with a password-protected Redis, a PostgreSQL URL with a password and
Flower's basic auth, none of the passwords appears in the metrics, the launcher's and workers'
logs, `medq doctor`, Flower's command line, or an error a command prints."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import RedisServer, free_port
from tests.integration.harness import ROOT, Cluster

pytestmark = pytest.mark.integration
REDIS_PW = "redis-S3cret-77"
FLOWER_PW = "flower-S3cret-99"


@pytest.fixture
def secret_cluster(tmp_path, postgres_url):
    url = make_url(postgres_url)
    if not url.password:  # a trust-authenticated test server ignores it, but medq must hide it
        url = url.set(password="pg-S3cret-88")
    redis_server = RedisServer(tmp_path, password=REDIS_PW).start()
    cluster = Cluster(tmp_path / "home", broker_url=f"redis://:{REDIS_PW}@127.0.0.1:{redis_server.port}/0",
                      database_url=url.render_as_string(hide_password=False),
                      flower_basic_auth=f"admin:{FLOWER_PW}", metrics_port=str(free_port()))
    yield cluster, [REDIS_PW, FLOWER_PW, url.password]
    cluster.stop()
    redis_server.stop()


def _no_secret(text: str, secrets: list[str], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a password in {where}:\n{text[-2000:]}"


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            time.sleep(0.2)


def test_no_password_in_metrics_logs_doctor_flower_or_errors(secret_cluster, tmp_path):
    cluster, secrets = secret_cluster
    cluster.start_workers(1, "a")
    metrics_port = int(cluster.env["MEDQ_METRICS_PORT"])
    _wait_port(metrics_port)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    assert "medq_broker_up 1.0" in metrics and "medq_store_up 1.0" in metrics  # the passwords work
    _no_secret(metrics, secrets, "the metrics")

    doctor = cluster.medq("doctor", "--probe")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "redis://:***@127.0.0.1" in doctor.stdout
    _no_secret(doctor.stdout + doctor.stderr, secrets, "medq doctor")

    # `celery inspect conf` (Flower's worker "Config" tab too) shows the worker's configuration
    conf = subprocess.run([sys.executable, "-m", "celery", "-A", "medq.tasks.app", "inspect", "conf", "--json"],
                          env=cluster.env, cwd=ROOT, text=True, capture_output=True, timeout=60)
    assert conf.returncode == 0 and "medq_settings" in conf.stdout, conf.stdout + conf.stderr
    _no_secret(conf.stdout + conf.stderr, secrets, "celery inspect conf")

    flower_port = free_port()
    flower = subprocess.Popen([sys.executable, "-m", "medq.scheduler", "flower", "--port", str(flower_port),
                               "--address", "0.0.0.0"], env=cluster.env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        _wait_port(flower_port)
        command_line = Path(f"/proc/{flower.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert "flower" in command_line
        _no_secret(command_line, secrets, "Flower's command line")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{flower_port}/workers", timeout=10)
        assert refused.value.code == 401, "Flower without its password"
        token = b64encode(f"admin:{FLOWER_PW}".encode()).decode()
        request = urllib.request.Request(f"http://127.0.0.1:{flower_port}/workers",
                                         headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
    finally:
        flower.terminate()
        flower_out = flower.communicate(timeout=30)[0]
    _no_secret(flower_out, secrets, "Flower's output")

    # The store away, with its password in the URL: one clear line, no password, no traceback.
    away = dict(cluster.env, MEDQ_DATABASE_URL=f"postgresql+psycopg://medq:{secrets[-1]}@127.0.0.1:{free_port()}/x")
    failed = subprocess.run([sys.executable, "-m", "medq.scheduler", "status"], env=away, cwd=ROOT, text=True,
                            capture_output=True, timeout=60)
    assert failed.returncode == 3 and "cannot use the database at postgresql+psycopg://medq:***@" in failed.stderr
    assert "Traceback" not in failed.stderr
    _no_secret(failed.stdout + failed.stderr, secrets, "an error of medq status")

    cluster.stop()
    _no_secret(cluster.full_logs(), secrets, "the launcher's and workers' logs")
    assert "broker: redis://:***@127.0.0.1" in cluster.full_logs(), "the launcher names its broker, masked"
