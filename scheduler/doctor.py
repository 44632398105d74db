"""`medq doctor`: is this host ready to run medq? Each check says what it found and, when it
fails, what to do. Nothing is changed: the store is read, not migrated; the artifact check
writes and removes one file of its own.

Checks: the broker and the store answer, the store's schema is this medq's, the artifact root
is writable and shared with the hosts whose workers are live, GPUs are visible (those given
with ``--gpus``, through NVML, and to torch), and the versions that matter. ``probe``: the fast
subset a container probe runs (no torch import).
"""

from __future__ import annotations

import os
import platform
import time
import uuid
from pathlib import Path
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from medq.common.errors import brief

from medq.workers.supervisor import HOSTS_DIR

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, warn, FAIL
    detail: str


def run_checks(settings, app, gpus: tuple[int, ...] = (), probe: bool = False) -> list[Check]:
    checks = [_broker(app, settings), *_store(settings), _artifacts(settings)]
    checks += _gpus(gpus, probe)
    checks.append(_versions(probe))
    return checks


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - start) * 1000


def _broker(app, settings) -> Check:
    where = settings.describe()["broker"]
    try:
        def reach():
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=5)
        _, ms = _timed(reach)
    except Exception as exc:
        return Check("broker", FAIL, f"{where}: {brief(exc)}")
    return Check("broker", OK, f"{where} answered in {ms:.0f} ms")


def _store(settings) -> list[Check]:
    from sqlalchemy import text

    from medq.common.store.db import Store
    from medq.common.store.models import SCHEMA_HEAD

    from sqlalchemy.engine import make_url

    where = settings.describe()["database"]
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        return [Check("store", FAIL, f"{where}: no store there yet: run `medq db upgrade` (or submit a job)"),
                Check("migrations", FAIL, "not checked: there is no store")]
    store = Store(settings.resolved_database_url)
    try:
        def reach():
            with store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        _, ms = _timed(reach)
    except Exception as exc:
        store.dispose()
        return [Check("store", FAIL, f"{where}: {brief(exc)}"),
                Check("migrations", FAIL, "not checked: the store did not answer")]
    current = store.schema_version()
    checks = [Check("store", OK, f"{where} answered in {ms:.0f} ms")]
    if current == SCHEMA_HEAD:
        checks.append(Check("migrations", OK, f"schema at {current}, this medq's newest"))
    elif current is None:
        checks.append(Check("migrations", FAIL, "the store has no schema yet: run `medq db upgrade` "
                                                "(or any command that writes, once)"))
    elif current < SCHEMA_HEAD:
        checks.append(Check("migrations", FAIL, f"schema at {current}, this medq needs {SCHEMA_HEAD}: "
                                                f"run `medq db upgrade`"))
    else:
        checks.append(Check("migrations", FAIL, f"schema at {current} is newer than this medq's {SCHEMA_HEAD}: "
                                                f"upgrade medq on this host"))
    if current == SCHEMA_HEAD:
        checks += [_workers(settings, store), _shared(settings, store)]
    else:
        checks.append(Check("shared artifacts", WARN, "not checked: the schema is not current"))
    store.dispose()
    return checks


def _artifacts(settings) -> Check:
    root = settings.artifacts
    if not root.is_dir():
        if settings.artifact_root:  # set on purpose: a shared file system that is not mounted?
            return Check("artifacts", FAIL, f"{root} does not exist (is the shared file system mounted here?); "
                                            f"MEDQ_ARTIFACT_ROOT must be a folder every worker host sees")
        return Check("artifacts", WARN, f"{root} does not exist yet; it is made on first use")
    probe = root / f".medq-doctor-{uuid.uuid4().hex}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"medq")
            fh.flush()
            os.fsync(fh.fileno())
        if probe.read_bytes() != b"medq":
            return Check("artifacts", FAIL, f"{root}: a file written there read back different")
        free = os.statvfs(root)
    except OSError as exc:
        return Check("artifacts", FAIL, f"{root}: not writable ({exc.strerror}); set MEDQ_ARTIFACT_ROOT to a "
                                        f"folder this user can write (shared by every worker host)")
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:  # the root itself is not there: nothing was written
            pass
    gib = free.f_bavail * free.f_frsize / 1024**3
    return Check("artifacts", OK if gib >= 1 else WARN, f"{root} writable, {gib:.1f} GiB free")


def _workers(settings, store) -> Check:
    """The live workers in the registry, by host and device: what the dispatcher can admit onto."""
    from medq.common.store.admission import live_workers
    from medq.common.store.models import utcnow

    try:
        with store.read_session() as s:
            workers = live_workers(s, utcnow(), settings.worker_ttl)
    except Exception as exc:
        return Check("workers", WARN, f"could not read the workers registry ({brief(exc)})")
    if not workers:
        return Check("workers", WARN, f"none live (none said so within MEDQ_WORKER_TTL, {settings.worker_ttl:.0f} s)")
    by_host: dict[str, dict[str, int]] = {}
    for worker in workers:
        host = by_host.setdefault(worker.name.rpartition("@")[2], {})
        host[worker.device] = host.get(worker.device, 0) + 1
    listed = "; ".join(f"{host}: " + ", ".join(f"{n} {device}" for device, n in sorted(devices.items()))
                       for host, devices in sorted(by_host.items()))
    return Check("workers", OK, f"{len(workers)} live ({listed})")


def _shared(settings, store) -> Check:
    """Every host with live workers has marked the artifact root this host sees: it is shared."""
    from medq.common.store.admission import live_workers
    from medq.common.store.models import utcnow

    try:
        with store.read_session() as s:
            hosts = sorted({w.name.rpartition("@")[2] for w in live_workers(s, utcnow(), settings.worker_ttl)})
    except Exception as exc:
        return Check("shared artifacts", WARN, f"could not read the workers registry ({brief(exc)})")
    if not hosts:
        return Check("shared artifacts", WARN, "no live workers to compare with (start `medq worker` somewhere)")
    folder = settings.artifacts / HOSTS_DIR
    missing = [h for h in hosts if not (folder / h).exists()]
    if missing:
        return Check("shared artifacts", FAIL,
                     f"{settings.artifacts} is not the artifact root of the workers on {', '.join(missing)}: every "
                     f"worker host and this one need the same shared MEDQ_ARTIFACT_ROOT")
    return Check("shared artifacts", OK, f"the same root as the live workers on {', '.join(hosts)}")


def _gpus(wanted: tuple[int, ...], probe: bool) -> list[Check]:
    from medq.common.gpus import read_gpus

    readings = read_gpus()
    checks = []
    if readings:
        listed = "; ".join(f"{g.index}: {g.model}"
                           + (f", {g.memory_used / 1024**3:.1f}/{g.memory_total / 1024**3:.1f} GiB used"
                              if g.memory_total else "") for g in readings)
        checks.append(Check("gpus (NVML)", OK, f"{len(readings)} visible, driver {readings[0].driver}: {listed}"))
    else:
        checks.append(Check("gpus (NVML)", FAIL if wanted else OK,
                            "none visible (no NVIDIA driver or device)" + (": --gpus asks for some" if wanted else
                                                                            "; CPU workers only")))
    missing = [i for i in wanted if i >= len(readings)]
    if wanted and readings:
        checks.append(Check("--gpus", FAIL if missing else OK,
                            f"{', '.join(map(str, missing))} not on this host ({len(readings)} GPU(s))" if missing
                            else f"{', '.join(map(str, wanted))} visible"))
    if not probe:
        try:
            import torch

            available = torch.cuda.is_available()
            count = torch.cuda.device_count() if available else 0
            checks.append(Check("gpus (torch)", OK if available or not (wanted or readings) else FAIL,
                                f"CUDA available, {count} device(s) (CUDA_VISIBLE_DEVICES="
                                f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})" if available
                                else "CUDA not available to torch" + (" although NVML sees GPUs: a CPU-only torch, "
                                                                      "or a driver too old for its CUDA" if readings
                                                                      else "")))
        except Exception as exc:
            checks.append(Check("gpus (torch)", FAIL, f"torch cannot be imported ({brief(exc)})"))
    return checks


def _package(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _versions(probe: bool) -> Check:
    parts = [f"medq {_package('medq')}", f"python {platform.python_version()}"]
    if not probe:
        try:
            import torch

            parts.append(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}, cuDNN "
                         f"{torch.backends.cudnn.version() or 'none'})")
        except Exception:
            parts.append("torch not importable")
    parts += [f"{name} {_package(name)}" for name in ("celery", "kombu", "sqlalchemy", "alembic", "flower")]
    return Check("versions", OK, ", ".join(parts))

