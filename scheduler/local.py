"""Local worker processes for `medq demo` and `medq bench`: started, waited for, stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def local_workers(n: int, log_dir: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """`medq worker --cpu n` in its own process group; stopped (warm, then hard) on exit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out = open(log_dir / "launcher.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "scheduler", "worker", "--cpu", str(n), "--logs", str(log_dir)],
                            env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc)
        out.close()


def stop_group(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def wait_for_job(store, job_id: str, timeout: float, poll: float = 0.5) -> dict:
    from common.store.views import find_job

    deadline = time.monotonic() + timeout
    while True:
        job = find_job(store, job_id)
        if job["state"] in {"succeeded", "failed", "cancelled"}:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:.0f}s")
        time.sleep(poll)
