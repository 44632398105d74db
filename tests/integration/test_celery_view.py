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
