"""Fixtures of the end-to-end tests: a medq cluster (CLI, workers) on the session's Redis."""

from __future__ import annotations

import pytest

from tests.integration.harness import Cluster


@pytest.fixture
def cluster(tmp_path, redis_url):
    """An empty broker database and a fresh MEDQ_HOME; the workers it started are stopped after."""
    import redis

    redis.Redis.from_url(redis_url).flushall()
    c = Cluster(tmp_path / "home", broker_url=f"{redis_url}/0")
    yield c
    c.stop()
