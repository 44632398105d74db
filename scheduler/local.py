"""Local worker processes for `medq demo` and `medq bench`: started, waited for, stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from medq.tasks.names import POOL_READY


@dataclass(frozen=True)
class LocalPool:
    """Which local workers to start: one per listed GPU, else ``cpu`` CPU processes."""

    cpu: int = 0
    gpus: tuple[int, ...] = ()

    @property
    def labels(self) -> list[str]:
        return [f"gpu{g}" for g in self.gpus] or [f"cpu{i}" for i in range(self.cpu)]

    @property
    def args(self) -> list[str]:
        return ["--gpus", ",".join(map(str, self.gpus))] if self.gpus else ["--cpu", str(self.cpu)]

    def describe(self) -> str:
        return f"GPU {','.join(map(str, self.gpus))}" if self.gpus else f"{self.cpu} local CPU workers"


@contextmanager
def local_workers(pool: LocalPool, log_dir: Path, env: dict[str, str] | None = None,
                  ready_timeout: float | None = None) -> Iterator[subprocess.Popen]:
    """`medq worker --cpu N` (or `--gpus ...`) in its own process group; stopped (warm, then
    hard) on exit. With ``ready_timeout``, waits until every worker has logged that it is ready."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out = open(log_dir / "launcher.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "medq.scheduler", "worker", *pool.args, "--logs", str(log_dir)],
                            env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        if ready_timeout is not None:
            wait_ready(log_dir, pool.labels, proc, ready_timeout)
        yield proc
    finally:
        stop_group(proc)
        out.close()


def wait_ready(log_dir: Path, labels: list[str], proc: subprocess.Popen, timeout: float) -> None:
    """Until each worker's pool process has logged that it is ready (engines imported, CUDA
    context made); a launcher that dies first is an error."""
    deadline = time.monotonic() + timeout
    logs = [log_dir / f"{label}.log" for label in labels]
    while not all(log.exists() and POOL_READY in log.read_text(errors="replace") for log in logs):
        if proc.poll() is not None:
            raise RuntimeError(f"the local workers exited with code {proc.returncode}; see {log_dir}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not ready after {timeout:.0f}s; see {log_dir}")
        time.sleep(0.2)


def stop_group(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGTERM to the launcher alone, which stops each Celery worker warmly (a SIGTERM to the
    whole group would also hit the pool processes directly, and Celery would start new ones
    in the middle of its shutdown); whatever is left after ``timeout`` gets SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def wait_for_job(store, job_id: str, timeout: float, poll: float = 0.5) -> dict:
    from medq.common.store.views import find_job

    deadline = time.monotonic() + timeout
    while True:
        job = find_job(store, job_id)
        if job["state"] in {"succeeded", "failed", "cancelled"}:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:.0f}s")
        time.sleep(poll)
