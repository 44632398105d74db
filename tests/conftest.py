"""Shared fixtures: real servers on free loopback ports.

A server that cannot be had skips its tests on a developer's machine, but fails them when
CI=true (as dramatiq's suite does): CI must never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the servers and tools the tests use are required)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server on a loopback port, persisting nothing; it can be killed outright
    and started again on the same port (every message it held is then gone)."""

    def __init__(self, workdir, password: str = ""):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            unavailable("redis-server is not installed")
        self.port, self.workdir, self.proc, self.password = free_port(), workdir, None, password

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> "RedisServer":
        import redis

        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir),
                                      *(["--requirepass", self.password] if self.password else [])],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password or None)
        for _ in range(100):
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.proc.kill()
        unavailable("redis-server did not start")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A private redis-server on a free loopback port, persisting nothing."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_server(tmp_path_factory):
    """A redis-server of the test's own, for tests that kill the broker."""
    server = RedisServer(tmp_path_factory.mktemp("redis-own")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh database on the PostgreSQL server at MEDQ_TEST_POSTGRES_URL, dropped afterwards."""
    admin = os.environ.get("MEDQ_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    name = f"medq_test_{uuid.uuid4().hex[:8]}"
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        unavailable(f"PostgreSQL not reachable at {admin}: {exc.__class__.__name__}")
    yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store(request, tmp_path):
    """The store, once on a SQLite file and once on a fresh PostgreSQL database: one contract."""
    from medq.common.store import Store
    from medq.common.store.models import Base

    url = f"sqlite:///{tmp_path / 'store.sqlite'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    store = Store(url)
    store.ensure_schema()
    yield store
    if request.param == "postgresql":
        Base.metadata.drop_all(store.engine)
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    store.dispose()


# --- shared by the end-to-end and fault tests --------------------------------------------------

TINY = ["--epochs-head", "1", "--image-size", "64", "--batch-size", "8"]  # a chest member in seconds


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """36 synthetic chest radiographs (`medq data synth-chest`)."""
    from tests.integration.harness import Cluster

    out = tmp_path_factory.mktemp("chest") / "data"
    done = Cluster(out.parent / "home").medq("data", "synth-chest", str(out), "--n", "36", "--seed", "3")
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture
def cluster(tmp_path, redis_url):
    """An empty broker database and a fresh MEDQ_HOME; the workers it started are stopped after."""
    import redis

    from tests.integration.harness import Cluster

    redis.Redis.from_url(redis_url).flushall()
    c = Cluster(tmp_path / "home", broker_url=f"{redis_url}/0")
    yield c
    c.stop()


@contextmanager
def tmpfs(path, megabytes: int):
    """A tmpfs of ``megabytes`` mounted at ``path`` (root may mount one; CI runs as root)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                          capture_output=True)
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory):
    """120 synthetic radiographs: an epoch of a few seconds on a CPU worker."""
    from medq.common.families.chest.synth import synth_chest

    folder = tmp_path_factory.mktemp("chest120")
    synth_chest(folder, n=120, seed=3)
    return folder
