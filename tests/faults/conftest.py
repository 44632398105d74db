"""The fault-injection suite's own servers and its report.

- ``pg_cluster``: a PostgreSQL cluster of the suite's own (initdb on a free port, as the
  ``postgres`` user when run as root), which a test may stop with ``pg_ctl stop -m immediate``
  and start again mid-job.
- ``fault_log``: each test records the fault it survived and how long recovery took (the kill
  to the next epoch or study done); the terminal summary prints them, with the bad inputs tried
  and refused cleanly. The README's figures come from that summary.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port, unavailable

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/faults/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.faults)


# --- a PostgreSQL cluster of our own -----------------------------------------------------------


class PostgresCluster:
    def __init__(self):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        initdb = found[-1] if found else shutil.which("initdb")
        if initdb is None:
            unavailable("PostgreSQL's initdb is not installed")
        self.bin = Path(initdb).parent
        self.dir = Path(tempfile.mkdtemp(prefix="medq-pg-"))
        self.data, self.port = self.dir / "data", free_port()
        self.user = None
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                unavailable("running as root and there is no postgres user to own a cluster")
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        done = self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                         "--no-sync", "-E", "UTF8")
        if done.returncode != 0:
            unavailable(f"initdb failed: {done.stderr.strip()[-300:]}")

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        if self.user is not None:
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    def start(self) -> "PostgresCluster":
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        done = self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                         str(self.dir / "server.log"), "-w", "start")
        assert done.returncode == 0, done.stderr + (self.dir / "server.log").read_text()[-2000:]
        return self

    def stop_immediately(self) -> None:
        """As a crash would: no checkpoint, every connection cut."""
        done = self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        assert done.returncode == 0, done.stderr

    def database(self, name: str) -> str:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def remove(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster():
    cluster = PostgresCluster().start()
    yield cluster
    cluster.remove()


# --- the report --------------------------------------------------------------------------------


@dataclass
class FaultLog:
    """What each fault test tried and whether it survived (set from the test's own outcome), and
    how many bad inputs each tried and saw refused cleanly (counted by the test, then asserted)."""

    faults: dict[str, dict] = field(default_factory=dict)  # test id -> name, survived, recovery_s, note
    inputs: dict[str, tuple[int, int]] = field(default_factory=dict)  # what -> (tried, refused cleanly)


class TestFaults:
    def __init__(self, log: FaultLog, test_id: str):
        self.log, self.test_id = log, test_id

    def trying(self, name: str) -> None:
        """Declare the fault first: if the test fails later, the summary says it was not survived."""
        self.log.faults[self.test_id] = {"name": name, "survived": None, "recovery_s": None, "note": ""}

    def survived(self, recovery_s: float | None = None, note: str = "") -> None:
        self.log.faults[self.test_id].update(recovery_s=recovery_s, note=note)

    def bad_inputs(self, what: str, tried: int, clean: int) -> None:
        self.log.inputs[what] = (tried, clean)


_LOG = FaultLog()


@pytest.fixture
def fault_log(request) -> TestFaults:
    return TestFaults(_LOG, request.node.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    entry = _LOG.faults.get(item.nodeid)
    if entry is not None and report.when == "call":
        entry["survived"] = report.passed


def pytest_terminal_summary(terminalreporter):
    if not (_LOG.faults or _LOG.inputs):
        return
    write = terminalreporter.write_line
    terminalreporter.section("medq faults")
    for entry in _LOG.faults.values():
        seconds = entry["recovery_s"]
        recovery = f"{seconds:6.1f} s" if seconds is not None else "      -"
        verdict = "survived" if entry["survived"] else "NOT SURVIVED"
        write(f"  {verdict:12} {recovery}  {entry['name']}" + (f"  ({entry['note']})" if entry["note"] else ""))
    if _LOG.inputs:
        for what, (tried, clean) in _LOG.inputs.items():
            write(f"  bad inputs, {what}: {clean} of {tried} refused cleanly")
        tried = sum(t for t, _ in _LOG.inputs.values())
        clean = sum(c for _, c in _LOG.inputs.values())
        write(f"  bad inputs in all: {clean} of {tried} refused cleanly")
    survived = sum(1 for e in _LOG.faults.values() if e["survived"])
    write(f"  faults survived: {survived} of {len(_LOG.faults)} tried (recovery: the fault to the next epoch, "
          f"study or result; lease 6 s, reaper every 1 s)")


# --- processes ---------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid`` (Linux /proc)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            found.append(int(stat.split("/")[2]))
    return found


def pool_process(launcher_pid: int, timeout: float = 30) -> int:
    """The Celery pool process (it runs the tasks) under a one-worker launcher."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in children(launcher_pid):
            pool = children(worker)
            if pool:
                return pool[0]
        time.sleep(0.2)
    raise AssertionError(f"no pool process under launcher {launcher_pid}")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
