"""Thin tasks of the training jobs: ids in, the engine of the job's kind (tasks/engines.py),
record, map errors. The task names are those of the first job type, the chest ensemble."""

from __future__ import annotations

import gc
import logging
import uuid

from medq.common.errors import JobError, TransientError, brief
from medq.common.store import State, open_store
from medq.common.store import evaluation
from medq.tasks import names
from medq.tasks.app import app
from medq.tasks.engines import EVALUATORS, TRAINERS
from medq.tasks.runtime import Heartbeat, MemberRun, interrupted
from medq.tasks.send import send_evaluation
from medq.tasks.store_retry import StoreUnavailable, recorded, retry_later, retrying

log = logging.getLogger("medq.worker")
TRANSIENT_RETRY_DELAYS = (10, 60, 300)  # seconds; bounded


@app.task(name=names.TRAIN_MEMBER, bind=True)
def train_member(self, member_id: int) -> str:
    settings = app.conf.medq_settings
    try:
        run = MemberRun(self, member_id, settings)
    except StoreUnavailable as exc:
        return retry_later(self, exc)
    with run:
        claim = run.claim
        if not claim.run:
            _dispatch_evaluation(claim.job_id, claim.dispatch_evaluation)
            return f"skipped: {claim.reason}"
        from medq.common.training.kit import TrainHooks

        workdir = settings.artifacts / claim.job_id / f"seed-{claim.seed}"
        try:
            trained = TRAINERS.get(claim.kind)(claim, workdir, TrainHooks(progress=run.progress,
                                                                         should_stop=run.should_stop))
        except TransientError as exc:
            run.release(str(exc))
            raise self.retry(exc=exc, countdown=TRANSIENT_RETRY_DELAYS[min(self.request.retries, 2)], max_retries=3)
        except JobError as exc:
            last = run.finish(State.FAILED, error=str(exc))
        except Exception as exc:  # a bug or an environment fault: fail this member, keep the worker
            if interrupted(exc):
                raise
            log.exception("member %s (seed %s) crashed", member_id, claim.seed)
            last = run.finish(State.FAILED, error=f"{type(exc).__name__}: {exc}")
        else:
            if run.lease_lost.is_set() and not run.cancelled.is_set():
                return "stood down: lease lost"
            state = State.CANCELLED if trained.cancelled else State.SUCCEEDED
            last = run.finish(state, artifacts=trained.artifacts, resumed_from_epoch=trained.resumed_from_epoch,
                              **trained.fields)
        finally:
            _release_memory()
    _dispatch_evaluation(claim.job_id, last)
    return "done"


@app.task(name=names.EVALUATE_ENSEMBLE, bind=True)
def evaluate_ensemble(self, job_id: str) -> str:
    settings = app.conf.medq_settings
    store, owner = open_store(settings), uuid.uuid4().hex
    try:
        claim = retrying(f"claim the evaluation of job {job_id}",
                         lambda: evaluation.claim_evaluation(store, job_id, owner, settings.lease_seconds))
    except StoreUnavailable as exc:
        return retry_later(self, exc)
    if claim is None:
        return "skipped: not ours"
    beat = Heartbeat(settings, f"evaluation of job {job_id}", cancelled=lambda: False,
                     renew=lambda: evaluation.renew_evaluation_lease(store, job_id, owner, settings.lease_seconds))
    with beat:
        try:
            results = EVALUATORS.get(claim.kind)(claim)
        except JobError as exc:
            reason = str(exc)
            return _record_evaluation(job_id, lambda: evaluation.fail_evaluation(store, job_id, owner, reason))
        except Exception as exc:
            if interrupted(exc):
                raise
            log.exception("evaluation of job %s failed", job_id)
            reason = f"{type(exc).__name__}: {exc}"
            return _record_evaluation(job_id, lambda: evaluation.fail_evaluation(store, job_id, owner, reason))
        finally:
            _release_memory()
    if beat.lease_lost.is_set():  # its worker died, or another took the lapsed evaluation over
        return "stood down: the evaluation's lease was lost"
    member_ids = {f"seed-{seed}": member_id for member_id, seed, _, _ in claim.members}
    return _record_evaluation(job_id, lambda: evaluation.record_results(store, job_id, owner, results, member_ids))


def _record_evaluation(job_id: str, write) -> str:
    """The evaluation's outcome, written by its owner; a store away past the retries leaves the
    lease to lapse (the reaper sends the evaluation again)."""
    written = recorded(f"record the evaluation of job {job_id}", write,
                       "the evaluation's lease will lapse and it will run again")
    if written is None:
        return "stood down: store unavailable"
    return "done" if written else "stood down: the evaluation's lease was lost"


def _dispatch_evaluation(job_id: str, needed: bool) -> None:
    """Send the evaluation the store has just marked dispatched. If the broker refuses, the
    reaper sends it again (recovery.redispatch_evaluations): say so in one line and go on."""
    if not needed:
        return
    try:
        send_evaluation(app, job_id)
    except Exception as exc:
        log.warning("job %s: could not send its evaluation (%s); the reaper will send it again", job_id, brief(exc))


def _release_memory() -> None:
    """GPU memory is not returned between tasks unless we let go of it."""
    gc.collect()
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
