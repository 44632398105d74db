"""Drives medq as a user does: the real `medq` CLI and real worker processes, in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from medq.common.store import Attempt, Member, Store

ROOT = Path(__file__).resolve().parents[2]


class Cluster:
    def __init__(self, home: Path, broker_url: str = "", database_url: str = "", **settings: str):
        self.home = home
        self.env = {**os.environ, "MEDQ_HOME": str(home), "PYTHONUNBUFFERED": "1",
                    "MEDQ_LEASE_SECONDS": "6", "MEDQ_REAPER_INTERVAL": "1", "MEDQ_PROGRESS_INTERVAL": "0.5",
                    "MEDQ_CANCEL_CHECK_INTERVAL": "0.5", "MEDQ_LOG_LEVEL": "INFO"}
        self.env.pop("MEDQ_BROKER_URL", None)
        self.env.pop("MEDQ_DATABASE_URL", None)
        if broker_url:
            self.env["MEDQ_BROKER_URL"] = broker_url
        if database_url:
            self.env["MEDQ_DATABASE_URL"] = database_url
        self.env.update({f"MEDQ_{k.upper()}": v for k, v in settings.items()})
        self.launchers: list[subprocess.Popen] = []

    @property
    def database_url(self) -> str:
        return self.env.get("MEDQ_DATABASE_URL") or f"sqlite:///{self.home / 'medq.sqlite'}"

    def medq(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "medq.scheduler", *args], env=self.env, cwd=ROOT, text=True,
                              capture_output=True, timeout=timeout)

    def start_workers(self, n: int, name: str, name_prefix: str | None = None) -> subprocess.Popen:
        """`medq worker --cpu n` in its own process group, logging under home/logs-<name>. Its node
        names are ``<name>-cpu0@host``: the launchers of a test stand for launchers of several
        hosts, and may run at the same time (``name_prefix=""``: the real default, ``cpu0@host``)."""
        logs = self.home / f"logs-{name}"
        logs.mkdir(parents=True, exist_ok=True)
        prefix = name if name_prefix is None else name_prefix
        proc = subprocess.Popen([sys.executable, "-m", "medq.scheduler", "worker", "--cpu", str(n), "--logs", str(logs),
                                 *(["--name-prefix", prefix] if prefix else [])],
                                env=self.env, cwd=ROOT, stdout=open(logs / "launcher.log", "ab"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.launchers.append(proc)
        deadline = time.monotonic() + 90
        while not all((logs / f"cpu{i}.log").exists() and " ready." in (logs / f"cpu{i}.log").read_text()
                      for i in range(n)):
            assert proc.poll() is None, (logs / "launcher.log").read_text()
            assert time.monotonic() < deadline, "workers did not become ready in 90 s"
            time.sleep(0.3)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL the launcher and its workers at once: no clean-up, no ack, no goodbye."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.launchers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # the launcher stops its workers warmly
        for proc in self.launchers:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def status(self, job_id: str) -> dict:
        out = self.medq("status", job_id, "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def wait(self, job_id: str, until, timeout: float = 300, poll: float = 0.5) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            view = self.status(job_id)
            if until(view):
                return view
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; last status: {json.dumps(view, indent=1)}\n{self.logs()}")
            time.sleep(poll)

    def logs(self) -> str:
        return "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted(self.home.glob("logs-*/*.log")))

    def full_logs(self) -> str:
        """Every worker and launcher log, whole (logs() keeps the tail of each, for messages)."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.home.glob("logs-*/*.log")))

    def worker_queues(self, n: int, timeout: float = 60) -> list[str]:
        """The own queues of the workers the launchers registered, once ``n`` have."""
        from medq.common.store.models import Worker

        deadline = time.monotonic() + timeout
        store = Store(self.database_url)
        try:
            while True:
                try:
                    with store.session() as s:
                        queues = sorted(s.scalars(select(Worker.queue)))
                except Exception:  # the store is not created yet
                    queues = []
                if len(queues) >= n or time.monotonic() > deadline:
                    return queues
                time.sleep(0.2)
        finally:
            store.dispose()

    def attempts(self, job_id: str, seed: int) -> list[Attempt]:
        store = Store(self.database_url)
        try:
            with store.session() as s:
                member = s.scalar(select(Member).where(Member.job_id == job_id, Member.seed == seed))
                return list(s.scalars(select(Attempt).where(Attempt.member_id == member.id).order_by(Attempt.number)))
        finally:
            store.dispose()


def ended(view: dict) -> bool:
    return view["state"] in {"succeeded", "failed", "cancelled"}
