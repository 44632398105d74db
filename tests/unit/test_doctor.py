"""`medq doctor` as a new user runs it, on the embedded default (no servers): what it finds,
what it says to do, and an exit code a probe can use."""

from __future__ import annotations

import json

from medq.common.store import Store, admission
from tests.integration.harness import Cluster


def _checks(done) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(done.stdout)}


def test_a_fresh_store_fails_until_migrated_and_doctor_changes_nothing(tmp_path):
    cluster = Cluster(tmp_path / "home")
    first = cluster.medq("doctor", "--probe")
    assert first.returncode == 1
    assert "FAIL  store" in first.stdout and "no store there yet: run `medq db upgrade`" in first.stdout
    assert "2 check(s) failed: store, migrations" in first.stderr
    assert not (tmp_path / "home" / "medq.sqlite").exists(), "doctor must not make a store"
    assert Store(cluster.database_url).schema_version() is None  # now an empty SQLite file: no schema
    assert "the store has no schema yet" in cluster.medq("doctor", "--probe").stdout
    assert Store(cluster.database_url).schema_version() is None, "doctor must not migrate"
    assert cluster.medq("db", "upgrade").returncode == 0
    second = cluster.medq("doctor", "--probe", "--json")
    assert second.returncode == 0, second.stdout
    checks = _checks(second)
    assert {"broker", "store", "migrations", "artifacts", "gpus (NVML)", "versions"} <= set(checks)
    assert all(c["status"] != "FAIL" for c in checks.values())
    assert "medq 0.1.0" in checks["versions"]["detail"] and "celery" in checks["versions"]["detail"]


def test_gpus_asked_for_but_not_visible_and_an_unshared_artifact_root_fail(tmp_path):
    cluster = Cluster(tmp_path / "home")
    assert cluster.medq("db", "upgrade").returncode == 0
    store = Store(cluster.database_url)
    admission.register_workers(store, "L1", [("gpu0-1@far-host", "w.gpu0-1@far-host", "gpu")])
    store.dispose()
    done = cluster.medq("doctor", "--probe", "--gpus", "0", "--json")
    assert done.returncode == 1
    checks = _checks(done)
    assert checks["gpus (NVML)"]["status"] == "FAIL" and "--gpus asks for some" in checks["gpus (NVML)"]["detail"]
    assert checks["workers"]["status"] == "ok" and checks["workers"]["detail"] == "1 live (far-host: 1 gpu)"
    shared = checks["shared artifacts"]
    assert shared["status"] == "FAIL" and "workers on far-host" in shared["detail"]
    (tmp_path / "home" / "artifacts" / ".medq-hosts").mkdir(parents=True)
    (tmp_path / "home" / "artifacts" / ".medq-hosts" / "far-host").write_text("1\n")  # far-host's launcher's mark
    assert _checks(cluster.medq("doctor", "--probe", "--json"))["shared artifacts"]["status"] == "ok"


def test_an_artifact_root_that_is_not_there_is_named_and_not_made(tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    cluster = Cluster(tmp_path / "home", artifact_root=str(blocked / "artifacts"))
    checks = _checks(cluster.medq("doctor", "--probe", "--json"))
    assert checks["artifacts"]["status"] == "FAIL"
    assert str(blocked / "artifacts") in checks["artifacts"]["detail"] and "MEDQ_ARTIFACT_ROOT" in checks["artifacts"]["detail"]
    assert "mounted" in checks["artifacts"]["detail"]
