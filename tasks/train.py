"""Thin tasks of training jobs, for every model family: ids in, the family of the job's kind
(common/families/registry.py) trains a member or evaluates the job, the outcome is recorded,
errors map to retry or fail.

Errors: a job error (bad data, a diverged loss, a checkpoint of another spec) fails the member
at once with its message; a transient fault (the database, the broker or a file system away)
gives the member back and retries it with backoff, at most ``TRANSIENT_RETRY_DELAYS`` times,
then fails it naming the fault; anything else is a bug or an environment fault, logged with its
traceback, and fails the member.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from medq.common import subjects
from medq.common.errors import JobError, brief, describe, is_transient, transient_reason
from medq.common.families.base import MemberCheckpoint
from medq.common.families.registry import family
from medq.common.store import State, evaluation
from medq.tasks import names
from medq.tasks.app import app
from medq.tasks.runtime import MemberRun, claim_job_task, failure_reason, interrupted
from medq.tasks.send import send_evaluation
from medq.tasks.store_retry import StoreUnavailable, recorded, retry_later

log = logging.getLogger("medq.worker")
TRANSIENT_RETRY_DELAYS = (10, 60, 300)  # seconds between the retries of a member after a transient fault


@app.task(name=names.TRAIN_MEMBER, bind=True, max_retries=len(TRANSIENT_RETRY_DELAYS))
def train_member(self, member_id: int, admission: int | None = None, job: str = "", kind: str = "",
                 seed: int | None = None, **_readable) -> str:
    """``admission``: the store's admission this message carries (common/store/admission.py);
    ``job``, ``kind`` and ``seed`` (and any other keyword a newer sender adds) are for people
    reading Flower or ``celery inspect``: the member is loaded by its id."""
    settings = app.conf.medq_settings
    try:
        run = MemberRun(self, member_id, settings, admission)
    except StoreUnavailable as exc:
        return retry_later(self, exc)
    with run:
        claim = run.claim
        if not claim.run:
            _dispatch_evaluation(claim.job_id, claim.dispatch_evaluation)
            return f"skipped: {claim.reason}"
        from medq.common.training.kit import TrainHooks

        workdir = settings.artifacts / claim.job_id / subjects.member_folder(claim.seed)
        try:
            kind = family(claim.kind)
            trained = kind.train(kind.spec_from_dict(claim.spec), claim.plan, claim.seed, workdir,
                                 TrainHooks(progress=run.progress, should_stop=run.should_stop))
        except Exception as exc:
            if interrupted(exc):
                raise
            if is_transient(exc):
                return _transient(self, run, member_id, exc)
            if not isinstance(exc, JobError):  # a bug or an environment fault: fail this member, keep the worker
                log.exception("member %s (seed %s) crashed", member_id, claim.seed)
            last = run.finish(State.FAILED, error=describe(exc) if isinstance(exc, JobError)
                              else f"{type(exc).__name__}: {exc}")
        else:
            if run.lease_lost.is_set() and not run.cancelled.is_set():
                return "stood down: lease lost"
            if trained.cancelled and run.preempted.is_set() and not _job_cancelled(run):
                return _yield(run, member_id, claim.job_id)
            state = State.CANCELLED if trained.cancelled else State.SUCCEEDED
            artifacts = {subjects.artifact(claim.seed, name): str(path) for name, path in trained.checkpoints.items()}
            last = run.finish(state, artifacts=artifacts, resumed_from_epoch=trained.resumed_from_epoch,
                              **trained.fields)
        finally:
            _release_memory()
    _dispatch_evaluation(claim.job_id, last)
    return "done"


def _job_cancelled(run: MemberRun) -> bool:
    from medq.common.store import jobs

    return bool(recorded("check the job's cancellation", lambda: jobs.cancel_requested(run.store, run.claim.job_id),
                         "the member yields as asked"))


def _yield(run: MemberRun, member_id: int, job_id: str) -> str:
    """Preempted: the checkpoint of the step it stopped at is written; the member waits in the
    store again, and a launcher's dispatcher admits it when the sharing policy says so."""
    yielded = run.yield_worker()
    if yielded is None:
        return "stood down: lease lost while yielding"
    if not yielded.queued:  # the job was cancelled while it stopped
        _dispatch_evaluation(job_id, yielded.dispatch_evaluation)
        return "cancelled"
    log.info("member %s (seed %s) yielded its worker at epoch %s step %s; it waits to be admitted again",
             member_id, run.claim.seed, run.progress_fields.get("epoch"), run.progress_fields.get("step"))
    return "preempted"


def _transient(task, run: MemberRun, member_id: int, exc: BaseException) -> str:
    """Give the member back and retry it later, or, past the last retry, fail it with the fault."""
    tries = task.request.retries
    reason = f"transient fault {tries + 1} of {len(TRANSIENT_RETRY_DELAYS) + 1}: {transient_reason(exc)}"
    if tries >= len(TRANSIENT_RETRY_DELAYS):
        log.error("member %s: %s; giving up", member_id, reason)
        _dispatch_evaluation(run.claim.job_id, run.finish(
            State.FAILED, error=f"gave up after {tries + 1} transient faults: {transient_reason(exc)}"))
        return "failed: transient faults"
    delay = TRANSIENT_RETRY_DELAYS[tries]
    log.warning("member %s: %s; it goes back to the queue and runs again in %d s from its checkpoint",
                member_id, reason, delay)
    run.release(reason, retry_in=delay)
    raise task.retry(exc=exc, countdown=delay)


def _evaluate(self, job_id: str) -> str:
    taken = claim_job_task(self, job_id, f"the evaluation of job {job_id}")
    if isinstance(taken, str):
        return taken
    store, owner, claim, beat = taken
    members = [MemberCheckpoint(member_id, seed, val_loss, Path(best))
               for member_id, seed, val_loss, best in claim.members]
    with beat:
        try:
            kind = family(claim.kind)
            results = kind.evaluate(kind.spec_from_dict(claim.spec), claim.plan, members)
        except Exception as exc:
            if interrupted(exc):
                raise
            reason = failure_reason(exc, f"evaluation of job {job_id}")
            return _record_evaluation(job_id, lambda: evaluation.fail_evaluation(store, job_id, owner, reason))
        finally:
            _release_memory()
    if beat.lease_lost.is_set():  # its worker died, or another took the lapsed evaluation over
        return "stood down: the evaluation's lease was lost"
    member_ids = {subjects.member(m.seed): m.member_id for m in members}
    return _record_evaluation(job_id, lambda: evaluation.record_results(store, job_id, owner, results, member_ids))


@app.task(name=names.EVALUATE_JOB, bind=True)
def evaluate_job(self, job_id: str) -> str:
    """The evaluation of a training job of any family, once its last member has ended."""
    return _evaluate(self, job_id)


@app.task(name=names.EVALUATE_ENSEMBLE, bind=True)
def evaluate_ensemble(self, job_id: str) -> str:
    """The evaluation task's name before families shared it: messages queued by an older medq."""
    return _evaluate(self, job_id)


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
