"""The ledger of DICOM outputs stored on a PACS (``--send-to``): one ``sends`` row per study and
DICOM output, pending from the moment its study is recorded done (the same transaction), then
``accepted`` with the PACS's answer, or ``failed`` with the reason after the retries.

A chunk sends what its studies left pending, including what a killed worker recorded but did
not send; an accepted row is never sent again; ``medq resume`` turns failed rows pending again
and reopens their chunks. The objects carry UIDs derived from the study, so a send repeated
after a crash between the PACS's answer and this ledger stores the same instance again, not a
second one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from sqlalchemy import func, select, update

from medq.common.store.db import Store
from medq.common.store.models import Send, Study, utcnow

SEND_STATES = ("pending", "accepted", "failed")


@dataclass(frozen=True)
class PendingSend:
    id: int
    study_id: int
    output: str
    path: str  # relative to the job's --out
    sop_uid: str
    attempts: int


def add_sends(s, job_id: str, study_id: int, result: dict[str, Any] | None) -> None:
    """Inside the session recording a done study: a pending row per DICOM output it wrote."""
    result = result or {}
    files, dicom = result.get("outputs") or {}, result.get("dicom") or {}
    for output, sop_uid in dicom.items():
        s.add(Send(job_id=job_id, study_id=study_id, output=output, path=files[output], sop_uid=sop_uid,
                   state="pending", attempts=0, updated_at=utcnow()))


def pending_sends(store: Store, job_id: str, chunk_index: int) -> list[PendingSend]:
    with store.session() as s:
        rows = s.execute(select(Send.id, Send.study_id, Send.output, Send.path, Send.sop_uid, Send.attempts)
                         .join(Study, Study.id == Send.study_id)
                         .where(Send.job_id == job_id, Study.chunk_index == chunk_index, Send.state == "pending")
                         .order_by(Send.id)).all()
    return [PendingSend(*row) for row in rows]


def record_send(store: Store, send_id: int, state: str, answer: str, attempts: int) -> None:
    """The PACS's answer (or why there was none) to one send; an accepted row stays accepted."""
    if state not in SEND_STATES:
        raise ValueError(f"send state must be one of {', '.join(SEND_STATES)}, got {state!r}")
    with store.session() as s:
        s.execute(update(Send).where(Send.id == send_id, Send.state != "accepted")
                  .values(state=state, answer=answer[:2000], attempts=Send.attempts + attempts, updated_at=utcnow())
                  .execution_options(synchronize_session=False))


def send_counts(store: Store, job_id: str) -> dict[str, int]:
    with store.session() as s:
        return dict(s.execute(select(Send.state, func.count()).where(Send.job_id == job_id)
                              .group_by(Send.state)).all())


def failed_sends(s, job_id: str) -> tuple[int, str | None]:
    """(how many sends of the job failed, the first one's answer), inside a session."""
    n = s.scalar(select(func.count()).select_from(Send).where(Send.job_id == job_id, Send.state == "failed"))
    first = s.scalar(select(Send.answer).where(Send.job_id == job_id, Send.state == "failed").order_by(Send.id)
                     .limit(1)) if n else None
    return int(n or 0), first


def retry_failed(s, job_id: str) -> set[int]:
    """Failed sends pending again (``medq resume``); the chunk indices they belong to."""
    chunks = {i for (i,) in s.execute(select(Study.chunk_index).join(Send, Send.study_id == Study.id)
                                      .where(Send.job_id == job_id, Send.state.in_(("failed", "pending")))
                                      .distinct()).all()}
    s.execute(update(Send).where(Send.job_id == job_id, Send.state == "failed")
              .values(state="pending", updated_at=utcnow()).execution_options(synchronize_session=False))
    return chunks


def sends_of(store: Store, study_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """Each study's sends (output, state, answer, sop_uid), for its CSV row and `medq results`."""
    ids = list(study_ids)
    if not ids:
        return {}
    found: dict[int, list[dict[str, Any]]] = {}
    with store.session() as s:
        for study_id, output, state, answer, sop in s.execute(
                select(Send.study_id, Send.output, Send.state, Send.answer, Send.sop_uid)
                .where(Send.study_id.in_(ids)).order_by(Send.id)).all():
            found.setdefault(study_id, []).append({"output": output, "state": state, "answer": answer,
                                                   "sop_uid": sop})
    return found
