"""Typed SQLAlchemy models: jobs, member runs and their attempts, results, artifacts."""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, false, DateTime, ForeignKey, Index, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

SCHEMA_HEAD = "0011"  # the newest Alembic revision; a test checks it against the scripts

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class State(str, enum.Enum):
    """States of a job and of a member run."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in ENDED


ENDED = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})


class EvalState(str, enum.Enum):
    """Where the ensemble evaluation of a job stands; driven by the store, not by a chord."""

    PENDING = "pending"  # members still running
    DISPATCHED = "dispatched"  # every member ended; the evaluate task was sent
    RUNNING = "running"
    DONE = "done"
    SKIPPED = "skipped"  # nothing to evaluate (cancelled, or no member succeeded)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A moment: ``timestamptz`` on PostgreSQL (psql shows it with its zone), UTC text on SQLite;
    aware UTC in Python on both."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use common.store.models.utcnow()")
        value = value.astimezone(timezone.utc)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


# JSON documents: jsonb on PostgreSQL (indexable, queryable with ->>), JSON text on SQLite
JSONDocument = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONDocument, datetime: UTCDateTime}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default=State.QUEUED.value, index=True)
    spec: Mapped[dict[str, Any]]
    plan: Mapped[dict[str, Any]]  # data folder, split, seeds: what every member and the evaluation share
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    eval_state: Mapped[str] = mapped_column(String(16), default=EvalState.PENDING.value)
    eval_lease_expires_at: Mapped[datetime | None]
    eval_lease_owner: Mapped[str | None] = mapped_column(String(64))  # the attempt holding the evaluation
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Inference jobs: the queue's priority, a nightly window ("22:00-06:00"), and whether
    # `medq resume` lifted the window.
    priority: Mapped[str | None] = mapped_column(String(8))
    window: Mapped[str | None] = mapped_column("run_window", String(16))  # "window" is a reserved word
    window_lifted: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Who the job is for (--project, MEDQ_PROJECT or the user): the unit of fair share and quotas.
    project: Mapped[str | None] = mapped_column(String(64))

    members: Mapped[list[Member]] = relationship(back_populates="job", order_by="Member.seed")
    results: Mapped[list[Result]] = relationship(back_populates="job", order_by="Result.subject")


class Member(Base):
    """One seed of an ensemble: the unit a worker runs."""

    __tablename__ = "members"
    __table_args__ = (UniqueConstraint("job_id", "seed"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    seed: Mapped[int]
    state: Mapped[str] = mapped_column(String(16), default=State.QUEUED.value, index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    epoch: Mapped[int] = mapped_column(default=0)
    total_epochs: Mapped[int] = mapped_column(default=0)
    phase: Mapped[str | None] = mapped_column(String(16))
    step: Mapped[int] = mapped_column(default=0)
    steps_per_epoch: Mapped[int] = mapped_column(default=0)
    train_loss: Mapped[float | None]
    val_loss: Mapped[float | None]
    val_error_px: Mapped[float | None]
    val_score: Mapped[float | None]  # a higher-is-better validation score (segmentation: lesion Dice)
    images_per_s: Mapped[float | None]
    worker: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(64))
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    # Preemption: how often it yielded its worker to more urgent work, and a pending request to
    # yield (set by a launcher, read by the member's heartbeat, cleared when it is claimed again).
    preemptions: Mapped[int] = mapped_column(default=0, server_default="0")
    preempt_requested_at: Mapped[datetime | None]
    preempt_reason: Mapped[str | None] = mapped_column(Text)
    # Admission (common/store/admission.py): a queued member waits in the store until a
    # launcher's dispatcher gives it a free worker; ``admission`` numbers those decisions, and a
    # message carrying an older number is stale. ``borrowed``: admitted beyond its project's quota.
    admission: Mapped[int] = mapped_column(default=0, server_default="0")
    admitted_to: Mapped[str | None] = mapped_column(String(255))  # the worker's own queue
    admitted_at: Mapped[datetime | None]
    borrowed: Mapped[bool] = mapped_column(default=False, server_default=false())
    preempt_for: Mapped[str | None] = mapped_column(String(16))  # what a pending yield is for: inference, training

    job: Mapped[Job] = relationship(back_populates="members")
    attempt_rows: Mapped[list[Attempt]] = relationship(order_by="Attempt.number")


class Worker(Base):
    """A worker process a launcher runs, seen alive at ``seen_at`` (the launcher's heartbeat).
    The dispatcher admits members only onto live workers with nothing to do."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # its Celery node name
    queue: Mapped[str] = mapped_column(String(255))  # the queue only it consumes
    launcher: Mapped[str] = mapped_column(String(64), index=True)
    device: Mapped[str] = mapped_column(String(16))  # "gpu" or "cpu"
    seen_at: Mapped[datetime]


class Counter(Base):
    """How often something operations watch has happened, cluster-wide and since the store was
    made (lease reaps, redeliveries, re-sends, transient retries, preemptions): bumped in the
    same transaction as the event, read by the metrics endpoint (common/store/counters.py)."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # member, chunk, evaluation
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class Attempt(Base):
    """One try at a member: a redelivery or a re-enqueue after a lapsed lease adds one."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("member_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), index=True)
    number: Mapped[int]
    state: Mapped[str] = mapped_column(String(16))  # running, succeeded, failed, cancelled, lost, retried, preempted
    worker: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(64))
    start_epoch: Mapped[int] = mapped_column(default=0)  # > 0: resumed from a checkpoint
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)


class EpochRecord(Base):
    """One finished epoch of a member: the training history a report draws its curves from.

    Unique per (member, epoch): a redelivered or resumed attempt that finishes an epoch again
    overwrites its row, so the history never holds an epoch twice.
    """

    __tablename__ = "epochs"
    __table_args__ = (UniqueConstraint("member_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    epoch: Mapped[int]  # 1-based
    phase: Mapped[str | None] = mapped_column(String(16))
    train_loss: Mapped[float | None]
    val_loss: Mapped[float | None]
    metrics: Mapped[dict[str, Any]]  # the family's validation metrics by name: {"val_error_px": 7.9}
    lrs: Mapped[dict[str, Any]]  # learning rate per parameter group, by name or index: {"backbone": 2e-5, "head": 2e-4}
    images_per_s: Mapped[float | None]
    wall_s: Mapped[float | None]  # the epoch's wall time: training and validation
    attempt: Mapped[int] = mapped_column(default=1)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class Result(Base):
    """Metrics of one subject of a job: a member ("seed-3") or an aggregation ("ensemble-mean")."""

    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("job_id", "subject"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    subject: Mapped[str] = mapped_column(String(64))
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="results")


class Artifact(Base):
    """A file a job produced (checkpoints), by a name unique within the job."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))  # e.g. "seed-3/best"
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Chunk(Base):
    """A slice of an inference job's archive: the unit a worker runs, leased like a member."""

    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("job_id", "chunk_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column("chunk_index")  # "index" is a reserved word
    # waiting (outside its window), queued, running, succeeded, failed, cancelled
    state: Mapped[str] = mapped_column(String(16), default="waiting")
    attempts: Mapped[int] = mapped_column(default=0)
    n_studies: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(64))
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)


class Study(Base):
    """One file of an inference archive and what became of it.

    Keys are a hash of the archive-relative path and the DICOM UIDs, never patient names or
    IDs. ``path`` is what a person may see of the archive path (MEDQ_STUDY_PATHS: the path, its
    pseudonym, or nothing); where it is not the path itself, ``sealed_path`` holds the path
    encrypted for the worker that reads the file (``common/inference/study_paths.py``). Neither
    is ever logged.
    """

    __tablename__ = "studies"
    __table_args__ = (
        UniqueConstraint("job_id", "path_hash"),
        Index("ix_studies_job_id_chunk_index", "job_id", "chunk_index"),
        Index("ix_studies_job_id_state", "job_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    chunk_index: Mapped[int]
    path: Mapped[str] = mapped_column(Text)
    sealed_path: Mapped[str | None] = mapped_column(Text)
    path_hash: Mapped[str] = mapped_column(String(32), index=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending, done, failed, skipped
    reason: Mapped[str | None] = mapped_column(Text)
    study_uid: Mapped[str | None] = mapped_column(String(64))
    series_uid: Mapped[str | None] = mapped_column(String(64))
    sop_uid: Mapped[str | None] = mapped_column(String(64))
    source_format: Mapped[str | None] = mapped_column(String(8))
    width: Mapped[int | None]
    height: Mapped[int | None]
    result: Mapped[dict[str, Any] | None]  # landmarks_px, landmarks_mm, spread_px, qc_reasons
    qc_flag: Mapped[bool | None]
    updated_at: Mapped[datetime | None]


class Send(Base):
    """One DICOM output of a study for the PACS named by its job's ``--send-to``: what was
    sent (the file relative to the job's --out, its SOP Instance UID) and the PACS's answer.

    A row is written pending in the same transaction as its study's outcome, so a worker that
    dies before sending leaves it to the chunk's next run; ``accepted`` is final, and a resumed
    job sends again only what is not."""

    __tablename__ = "sends"
    __table_args__ = (UniqueConstraint("study_id", "output"), Index("ix_sends_job_id_state", "job_id", "state"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    output: Mapped[str] = mapped_column(String(16))  # "seg", "sr"
    path: Mapped[str] = mapped_column(Text)  # relative to the job's --out
    sop_uid: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending, accepted, failed
    attempts: Mapped[int] = mapped_column(default=0)
    answer: Mapped[str | None] = mapped_column(Text)  # the PACS's answer, or why it gave none
    updated_at: Mapped[datetime | None]
