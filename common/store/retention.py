"""What `medq gc` (and, with ``MEDQ_RETENTION_DAYS``, every launcher once an hour) may remove
from the artifact root, and removing it.

Kept, always: every weights file (``best.pt``, the top-k ``best-NNNN.pt``, ``init.pt``): what
inference, evaluation and reports load; the ``last.pt`` of every member that did not succeed
(``medq resume`` goes on from it); every file an inference job names as its model (``--model
.../last.pt`` is allowed, and a failed or windowed job goes on later); everything of a job that
has not ended; anything that is not a job's folder (the CT slice cache, a folder of the user's own).

Removable:
- ``last.pt`` of a succeeded member of a job that ended more than ``older_than`` ago: the
  resume state (weights, optimiser and scheduler state, random states; about three times the
  weights) of a run that will not be resumed. Its weights stay in ``best.pt``.
- ``*.tmp`` in a job's folder: a write that a killed process left half done (older than an
  hour, so that no running write is touched).
- with ``orphans``: a job's folder whose job is not in the store (a job deleted from it, or a
  store made anew), older than ``older_than``. Off unless asked for: a worker pointed at the
  wrong database would see every folder as an orphan.

Torch-free.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select

from medq.common import subjects
from medq.common.store.db import Store
from medq.common.store.models import ENDED, Artifact, Job, Member, utcnow

log = logging.getLogger("medq.retention")

LAST_NAME = "last.pt"  # common/training/checkpoint.py's resume state
PARTIAL_AGE = timedelta(hours=1)
JOB_FOLDER = re.compile(r"^[0-9a-f]{12}$")  # common/store/jobs.new_job_id


@dataclass(frozen=True)
class Removal:
    path: Path
    bytes: int
    why: str
    job_id: str | None = None
    artifact: str | None = None  # the store's artifact row that names the file ("seed-2/last")


def plan(store: Store, root: Path, older_than: timedelta, *, orphans: bool = False,
         now: datetime | None = None) -> list[Removal]:
    """What may go, with why; nothing is removed here."""
    now = now or utcnow()
    if not root.is_dir():
        return []
    removals = _resume_states(store, root, now - older_than)
    removals += _partial_files(root, now)
    models = _models_of_inference_jobs(store)
    removals = [r for r in removals if str(r.path.resolve()) not in models]
    if orphans:
        removals += _orphan_folders(store, root, now - older_than)
    return removals


def _resume_states(store: Store, root: Path, ended_before: datetime) -> list[Removal]:
    ended = [state.value for state in ENDED]
    with store.read_session() as s:
        rows = s.execute(select(Member.job_id, Member.seed).join(Job, Job.id == Member.job_id).where(
            Job.state.in_(ended), Job.finished_at < ended_before, Member.state == "succeeded")).all()
    removals = []
    for job_id, seed in rows:
        path = root / job_id / subjects.member_folder(seed) / LAST_NAME
        size = _size(path)
        if size is not None:
            removals.append(Removal(path, size, "resume state of a succeeded member (its weights stay in best.pt)",
                                    job_id, subjects.artifact(seed, "last")))
    return removals


def _models_of_inference_jobs(store: Store) -> set[str]:
    """Every checkpoint an inference job (of any state: a failed one may be resumed) predicts with."""
    from medq.common.specs import INFER_KIND

    with store.read_session() as s:
        specs = s.scalars(select(Job.spec).where(Job.kind == INFER_KIND))
        return {str(Path(p).resolve()) for spec in specs for p in (spec or {}).get("checkpoints", [])}


def _partial_files(root: Path, now: datetime) -> list[Removal]:
    removals = []
    cutoff = (now - PARTIAL_AGE).timestamp()
    for path in (tmp for folder in _job_folders(root) for tmp in folder.rglob("*.tmp")):
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.is_file() and stat.st_mtime < cutoff:
            removals.append(Removal(path, stat.st_size, "half-written file left by a killed process"))
    return removals


def _orphan_folders(store: Store, root: Path, older: datetime) -> list[Removal]:
    folders = _job_folders(root)
    if not folders:
        return []
    with store.read_session() as s:
        known = set(s.scalars(select(Job.id).where(Job.id.in_([p.name for p in folders]))))
    removals = []
    for folder in folders:
        if folder.name in known or folder.stat().st_mtime >= older.timestamp():
            continue
        removals.append(Removal(folder, _tree_size(folder), "no such job in the store"))
    return removals


def _job_folders(root: Path) -> list[Path]:
    """The folders of the artifact root named like a job (nothing else there is touched)."""
    return [p for p in root.iterdir() if p.is_dir() and JOB_FOLDER.match(p.name)]


def remove(store: Store, removals: list[Removal]) -> int:
    """Removes each (a file or a job's folder); drops the store's artifact rows that named a
    removed file. Returns the bytes freed. A file already gone is not an error (another
    launcher's round took it)."""
    freed = 0
    for item in removals:
        try:
            if item.path.is_dir():
                shutil.rmtree(item.path)
            else:
                item.path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("could not remove %s (%s)", item.path, exc.strerror or exc)
            continue
        freed += item.bytes
        if item.artifact:
            with store.session() as s:
                s.execute(delete(Artifact).where(Artifact.job_id == item.job_id, Artifact.name == item.artifact))
    return freed


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _tree_size(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            total += _size(Path(dirpath) / name) or 0
    return total


def human(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
