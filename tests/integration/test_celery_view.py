"""What an operator sees of medq's work through Celery itself, on a real Redis and a real
worker: `celery inspect active` names the member's job, kind and seed, on a stable node name."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from tests.conftest import TINY
from tests.integration.harness import ROOT


def test_celery_inspect_active_names_the_job_and_seed_on_a_stable_node_name(cluster, big_dataset):
    cluster.start_workers(1, "one", name_prefix="")  # the real default: cpu0@<host>
    done = cluster.medq("submit", "ensemble", "--data", str(big_dataset), "--seeds", "1", "--epochs", "20", *TINY)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.splitlines()[0]
    node = f"cpu0@{socket.gethostname()}"
    deadline, active = time.monotonic() + 60, []
    while not active:
        assert time.monotonic() < deadline, cluster.logs()
        out = subprocess.run([sys.executable, "-m", "celery", "-A", "medq.tasks.app", "inspect", "active", "--json",
                              "--timeout", "2", "-d", node], env=cluster.env, cwd=ROOT, capture_output=True, text=True)
        active = json.loads(out.stdout or "{}").get(node, []) if out.returncode == 0 else []
        time.sleep(0.5)
    (task,) = active
    assert task["name"] == "medq.train_member" and task["hostname"] == node
    assert task["kwargs"]["job"] == job_id and task["kwargs"]["kind"] == "ensemble" and task["kwargs"]["seed"] == 0
    assert cluster.medq("cancel", job_id).returncode == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, auth: tuple[str, str] | None = None):
    import base64
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, None


def test_flowers_api_shows_the_members_job_seed_and_progress_behind_basic_auth(cluster, big_dataset):
    """`medq flower` with MEDQ_FLOWER_BASIC_AUTH: its HTTP API refuses a caller without the
    password, and shows a running member's task with its job id, seed and progress line."""
    port, auth = _free_port(), ("ops", "flower-pw-1")
    env = {**cluster.env, "MEDQ_FLOWER_BASIC_AUTH": ":".join(auth)}
    flower = subprocess.Popen([sys.executable, "-m", "medq.scheduler", "flower", "--port", str(port)], env=env,
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    job_id = None
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while _get(f"{base}/api/workers", auth)[0] != 200:
            assert time.monotonic() < deadline and flower.poll() is None, "Flower did not answer"
            time.sleep(0.5)
        assert _get(f"{base}/api/workers")[0] == 401  # no password, no API
        cluster.start_workers(1, "flowered")
        done = cluster.medq("submit", "ensemble", "--data", str(big_dataset), "--seeds", "1", "--epochs", "20",
                            *TINY)
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.splitlines()[0]
        deadline, task = time.monotonic() + 120, None
        while task is None:
            assert time.monotonic() < deadline, cluster.logs()
            status, tasks = _get(f"{base}/api/tasks?taskname=medq.train_member", auth)
            for info in (tasks or {}).values() if status == 200 else ():
                if job_id in str(info.get("kwargs")) and "epoch" in str(info.get("result")):
                    task = info
            time.sleep(1)
        assert "'seed': 0" in task["kwargs"] and "'kind': 'ensemble'" in task["kwargs"], task
        assert task["state"] == "PROGRESS" and task["result"].startswith("epoch "), task
    finally:
        if job_id:
            cluster.medq("cancel", job_id)
        flower.terminate()
        try:
            output = flower.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            flower.kill()
            output = flower.communicate()[0]
    assert auth[1] not in output  # the password is never printed
