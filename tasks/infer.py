"""The thin task of bulk inference: one chunk of an archive through the trained model."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from pathlib import Path

from medq.common.errors import JobError
from medq.common.store import open_store
from medq.common.store import inference as store_ops
from medq.common.store.jobs import cancel_requested
from medq.tasks import names
from medq.tasks.app import app
from medq.tasks.runtime import Heartbeat, interrupted
from medq.tasks.store_retry import StoreUnavailable, recorded, retry_later, retrying

log = logging.getLogger("medq.worker")
_PREDICTOR: dict[tuple, object] = {}  # one model set per worker process, kept between chunks


@app.task(name=names.INFER_CHUNK, bind=True)
def infer_chunk(self, chunk_id: int) -> str:
    settings = app.conf.medq_settings
    store = open_store(settings)
    owner = uuid.uuid4().hex
    try:
        claim = retrying(f"claim chunk {chunk_id}", lambda: store_ops.claim_chunk(
            store, chunk_id, owner, self.request.hostname or settings.worker_label, settings.device,
            settings.lease_seconds, settings.max_attempts, datetime.now().time()))
    except StoreUnavailable as exc:
        return retry_later(self, exc)
    if not claim.run:
        return f"skipped: {claim.reason}"
    from medq.common.inference.archive import open_archive
    from medq.common.specs import InferSpec

    spec = InferSpec.from_dict(claim.spec)
    beat = Heartbeat(settings, f"chunk {chunk_id}",
                     renew=lambda: store_ops.renew_chunk_lease(store, chunk_id, owner, settings.lease_seconds),
                     cancelled=lambda: cancel_requested(store, claim.job_id))
    with beat:
        try:
            from medq.common.inference.predict import run_chunk

            items = retrying("read the chunk's studies", lambda: store_ops.pending_studies(store, claim.job_id,
                                                                                           claim.index))
            predictor, archive = _predictor(spec), open_archive(Path(spec.archive), settings.max_study_bytes)

            def record(outcomes) -> None:
                rows = [study_row(o) for o in outcomes]
                retrying("record studies", lambda: store_ops.record_studies(store, rows))

            if hasattr(predictor, "run_chunk"):  # a segmenter: masks and measurements per volume
                stats = predictor.run_chunk(items, archive, spec.batch_size, spec.loader_workers, record,
                                            should_stop=beat.should_stop,
                                            out_dir=Path(spec.out_dir) if spec.out_dir else None)
            else:
                overlays = Path(spec.out_dir) / "overlays" if spec.out_dir else None
                stats = run_chunk(items, archive, predictor, spec.batch_size, spec.loader_workers, record,
                                  should_stop=beat.should_stop, overlay_dir=overlays)
        except StoreUnavailable as exc:
            log.error("chunk %s of job %s: %s; its lease will lapse and its remaining studies run again",
                      claim.index, claim.job_id, exc)
            return "stood down: store unavailable"
        except JobError as exc:
            return _finish(store, chunk_id, owner, "failed", str(exc))
        except Exception as exc:
            if interrupted(exc):
                raise
            log.exception("chunk %s of job %s crashed", claim.index, claim.job_id)
            return _finish(store, chunk_id, owner, "failed", f"{type(exc).__name__}: {exc}")
    if beat.lease_lost.is_set():
        return "stood down: lease lost"
    state = _finish(store, chunk_id, owner, "cancelled" if beat.cancelled.is_set() else "succeeded")
    log.info("chunk %s of job %s: %s done, %s failed, %s skipped, %.1f images/s", claim.index, claim.job_id,
             stats.done, stats.failed, stats.skipped, stats.images_per_s)
    return state


def _finish(store, chunk_id: int, owner: str, state: str, error: str | None = None) -> str:
    written = recorded(f"record the end of chunk {chunk_id}",
                       lambda: store_ops.finish_chunk(store, chunk_id, owner, state, error),
                       "its lease will lapse and its remaining studies run again")
    return "stood down: store unavailable" if written is None else state


def _predictor(spec):
    from medq.common.inference.predict import build_predictor

    key = (spec.checkpoints, spec.aggregation, spec.tta)
    if key not in _PREDICTOR:
        _PREDICTOR.clear()
        _PREDICTOR[key] = build_predictor([Path(p) for p in spec.checkpoints], aggregation=spec.aggregation,
                                          tta=None if spec.tta == "none" else spec.tta)
    return _PREDICTOR[key]


def study_row(outcome) -> dict:
    """A StudyOutcome as the columns of its study row."""
    r = outcome.to_record()
    uids = r.get("uids") or {}
    size = r.get("image_size") or (None, None)
    result = None
    if r["state"] == "done":
        result = r["measures"] if r.get("measures") is not None else {
            key: r.get(key) for key in ("landmarks_px", "landmarks_mm", "spread_px", "qc_reasons")}
    return {"study_id": r["study_id"], "state": r["state"], "reason": r.get("reason"),
            "study_uid": uids.get("StudyInstanceUID"), "series_uid": uids.get("SeriesInstanceUID"),
            "sop_uid": uids.get("SOPInstanceUID"), "source_format": r.get("source_format"),
            "width": size[0], "height": size[1], "result": result,
            "qc_flag": r.get("qc_flag") if r["state"] == "done" else None}
