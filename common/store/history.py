"""The training history: one row per finished epoch of a member, written by the member's lease
owner in the same transaction as its heartbeat or its end (``jobs.renew_lease``,
``jobs.finish_member``), and read back per member for ``medq results --json`` and reports.

An epoch finished again (a redelivered message, a resume that repeats a cut epoch) overwrites
its row: an upsert on (member, epoch), so the history never doubles an epoch.
"""

from __future__ import annotations

from typing import Any, Iterable

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from medq.common.store.models import EpochRecord, Member, utcnow

FIELDS = ("phase", "train_loss", "val_loss", "metrics", "lrs", "images_per_s", "wall_s", "attempt")
_INSERT = {"postgresql": pg_insert, "sqlite": sqlite_insert}


def write_epochs(s, member_id: int, job_id: str, epochs: Iterable[dict[str, Any]]) -> int:
    """Upsert ``epochs`` (dicts with ``epoch`` and FIELDS) of one member inside session ``s``."""
    rows = [{"job_id": job_id, "member_id": member_id, "epoch": int(e["epoch"]), "recorded_at": utcnow(),
             **{name: e.get(name) for name in FIELDS}} for e in epochs]
    for row in rows:
        row["metrics"], row["lrs"] = row["metrics"] or {}, row["lrs"] or {}
        row["attempt"] = row["attempt"] or 1
    if not rows:
        return 0
    insert = _INSERT.get(s.bind.dialect.name)
    if insert is None:  # another backend: read, then write
        for row in rows:
            found = s.scalar(select(EpochRecord).where(EpochRecord.member_id == member_id,
                                                       EpochRecord.epoch == row["epoch"]))
            if found is None:
                s.add(EpochRecord(**row))
            else:
                for name in (*FIELDS, "recorded_at"):
                    setattr(found, name, row[name])
        return len(rows)
    statement = insert(EpochRecord).values(rows)
    s.execute(statement.on_conflict_do_update(
        index_elements=["member_id", "epoch"],
        set_={name: getattr(statement.excluded, name) for name in (*FIELDS, "recorded_at")}))
    return len(rows)


def epoch_view(row: EpochRecord) -> dict[str, Any]:
    return {"epoch": row.epoch, "phase": row.phase, "train_loss": row.train_loss, "val_loss": row.val_loss,
            "metrics": row.metrics, "lrs": row.lrs, "images_per_s": row.images_per_s, "wall_s": row.wall_s,
            "attempt": row.attempt, "recorded_at": row.recorded_at.isoformat() if row.recorded_at else None}


def job_history(s, job_id: str) -> dict[int, list[dict[str, Any]]]:
    """member id -> its epochs in order, for one job."""
    history: dict[int, list[dict[str, Any]]] = {}
    for row in s.scalars(select(EpochRecord).where(EpochRecord.job_id == job_id)
                         .order_by(EpochRecord.member_id, EpochRecord.epoch)):
        history.setdefault(row.member_id, []).append(epoch_view(row))
    return history


def validation_curves(s, job_id: str) -> dict[int, list[float | None]]:
    """seed -> its validation loss per finished epoch, in order (what `medq status JOB` draws)."""
    curves: dict[int, list[float | None]] = {}
    for seed, val_loss in s.execute(select(Member.seed, EpochRecord.val_loss)
                                    .join(EpochRecord, EpochRecord.member_id == Member.id)
                                    .where(EpochRecord.job_id == job_id).order_by(Member.seed, EpochRecord.epoch)):
        curves.setdefault(seed, []).append(val_loss)
    return curves
