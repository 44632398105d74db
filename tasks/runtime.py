"""What runs beside a task: a heartbeat that renews its lease, and the member run around it.

The training or inference loop never waits on the database: progress is handed to a
heartbeat thread, which renews the lease with the latest numbers every few seconds and turns a
cancellation request (or a lost lease) into a flag the loop reads.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any, Callable

from medq.common.errors import brief
from medq.common.settings import Settings
from medq.common.store import State, open_store
from medq.common.store import jobs, preemption
from medq.tasks.store_retry import recorded, retrying

log = logging.getLogger("medq.worker")


class Heartbeat:
    """Renews a lease with ``renew()`` (False: the lease is gone) and polls ``cancelled()``."""

    def __init__(self, settings: Settings, label: str, renew: Callable[[], bool], cancelled: Callable[[], bool]):
        self.settings, self.label, self._renew, self._cancelled = settings, label, renew, cancelled
        self.cancelled = threading.Event()
        self.lease_lost = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()  # beat now (an epoch ended), not at the next interval
        self._parent = os.getppid()  # the Celery worker that forked this pool process
        self._thread = threading.Thread(target=self._run, name=f"medq-heartbeat-{label}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.lease_lost.is_set()

    def poke(self) -> None:
        """Beat now rather than at the next interval."""
        self._wake.set()

    def _run(self) -> None:
        interval = max(0.2, min(self.settings.progress_interval, self.settings.lease_seconds / 3))
        last_cancel_check, failures = 0.0, 0
        while True:
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            if os.getppid() != self._parent:  # the worker (or its launcher) died: this process is orphaned
                log.error("%s: the worker process that ran this task is gone; stopping so that the lease "
                          "lapses and another worker resumes it", self.label)
                self.lease_lost.set()
                return
            try:
                if not self._renew() and not self._stop.is_set():
                    log.warning("%s: lease lost; stopping this attempt", self.label)
                    self.lease_lost.set()
                    return
                now = time.monotonic()
                if now - last_cancel_check >= self.settings.cancel_check_interval:
                    last_cancel_check = now
                    if self._cancelled():
                        self.cancelled.set()
            except Exception as exc:  # a database hiccup: the lease has slack, try again next beat
                failures += 1
                if failures == 1 or failures % 20 == 0:  # one line per outage, not one per beat
                    log.warning("%s: heartbeat failed %d time(s) (%s); trying again", self.label, failures, brief(exc))
                continue
            if failures:
                log.info("%s: heartbeat back after %d failure(s)", self.label, failures)
                failures = 0


class ProgressEvents:
    """Progress as Celery ``task-progress`` events, at most one per MEDQ_PROGRESS_INTERVAL unless
    ``now``. Flower turns the event into the task's state (PROGRESS) but its task view and API
    show only Celery's own task fields, so a one-line summary travels in ``result``, which both
    show beside the args and kwargs (the task's real result replaces it when it ends); the
    numbers travel as fields of their own for other event consumers. No result backend needed."""

    def __init__(self, task, interval: float):
        self.task, self.interval, self._last = task, interval, 0.0

    def send(self, summary: str, now: bool = False, **fields: Any) -> None:
        moment = time.monotonic()
        if not now and moment - self._last < self.interval:
            return
        self._last = moment
        try:
            self.task.send_event("task-progress", result=summary, **fields)
        except Exception:  # events are a convenience; never fail the work over them
            log.debug("could not send a progress event", exc_info=True)


def member_summary(p) -> str:
    """A member's progress in one line: 'epoch 3/20 (finetune), step 40/125, train loss 0.0123, 45.2 images/s'."""
    parts = [f"epoch {p.epoch}/{p.total_epochs}" + (f" ({p.phase})" if p.phase else "")]
    if p.steps_per_epoch:
        parts.append(f"step {p.step}/{p.steps_per_epoch}")
    if _finite(p.train_loss) is not None:
        parts.append(f"train loss {p.train_loss:.4g}")
    if p.epoch_done and _finite(p.val_loss) is not None:
        parts.append(f"val loss {p.val_loss:.4g}")
    if _finite(p.images_per_s):
        parts.append(f"{p.images_per_s:.1f} images/s")
    return ", ".join(parts)


class MemberRun:
    """One attempt at an ensemble member: claim, heartbeat with progress, finish."""

    def __init__(self, task, member_id: int, settings: Settings, admission: int | None = None):
        self.task, self.member_id, self.settings = task, member_id, settings
        self.store = open_store(settings)
        self.owner = uuid.uuid4().hex
        self.worker = task.request.hostname or settings.worker_label or "worker"
        self.claim = retrying(f"claim member {member_id}", lambda: jobs.claim_member(
            self.store, member_id, self.owner, self.worker, settings.device, settings.lease_seconds,
            settings.max_attempts, admission))
        self._latest: dict[str, Any] = {}
        self._epochs: list[dict[str, Any]] = []  # finished epochs the store has not taken yet
        self._epochs_lock = threading.Lock()
        self.events = ProgressEvents(task, settings.progress_interval)
        self.preempted = threading.Event()  # asked to yield its worker: it stops and goes back to the queue
        self.heartbeat = Heartbeat(settings, f"member {member_id}", renew=self._renew, cancelled=self._stop_asked)

    def _stop_asked(self) -> bool:
        """A cancellation of the job, or a request that this attempt yield its worker."""
        if jobs.cancel_requested(self.store, self.claim.job_id):
            return True
        if preemption.preempt_requested(self.store, self.member_id, self.owner):
            self.preempted.set()
            return True
        return False

    def _renew(self) -> bool:
        """The heartbeat: the lease, the latest progress and the epochs finished since the last
        beat, in one transaction; the epochs are dropped here only once the store has them."""
        with self._epochs_lock:
            epochs = list(self._epochs)
        ours = jobs.renew_lease(self.store, self.member_id, self.owner, self.settings.lease_seconds,
                                epochs=epochs, **self._latest)
        if ours and epochs:
            with self._epochs_lock:
                del self._epochs[:len(epochs)]
        return ours

    @property
    def cancelled(self) -> threading.Event:
        return self.heartbeat.cancelled

    @property
    def lease_lost(self) -> threading.Event:
        return self.heartbeat.lease_lost

    def __enter__(self) -> "MemberRun":
        if self.claim.run:
            self.heartbeat.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.heartbeat.stop()
        with self._epochs_lock:
            epochs, self._epochs = list(self._epochs), []
        if epochs:  # the lease was lost, or the end was not recorded: the history keeps them anyway
            recorded(f"record the history of member {self.member_id}",
                     lambda: jobs.record_epochs(self.store, self.member_id, epochs),
                     f"epochs {epochs[0]['epoch']}-{epochs[-1]['epoch']} stay out of its training history")

    def progress(self, p) -> None:
        """TrainHooks.progress: remember the latest numbers; send a Celery event now and then."""
        self._latest = {
            "epoch": p.epoch, "total_epochs": p.total_epochs, "phase": p.phase, "step": p.step,
            "steps_per_epoch": p.steps_per_epoch, "train_loss": _finite(p.train_loss),
            "images_per_s": _finite(p.images_per_s),
            **({"val_loss": _finite(p.val_loss), "val_error_px": _finite(p.val_error_px),
                "val_score": _finite(p.val_score)} if p.epoch_done else {}),
        }
        if p.epoch_done:
            with self._epochs_lock:
                self._epochs.append(epoch_record(p, self.claim.attempt))
            self.heartbeat.poke()  # into the store within milliseconds, beside its checkpoint
        self.events.send(member_summary(p), now=p.epoch_done, member_id=self.member_id, job_id=self.claim.job_id,
                         seed=self.claim.seed, **self._latest)

    def should_stop(self) -> bool:
        return self.heartbeat.should_stop()

    @property
    def progress_fields(self) -> dict[str, Any]:
        return dict(self._latest)

    def finish(self, state: State, *, error: str | None = None, artifacts: dict[str, str] | None = None,
               **fields: Any) -> bool:
        self.heartbeat.stop()
        fields = {**self._latest, **fields}
        with self._epochs_lock:
            epochs = list(self._epochs)
        return bool(recorded(f"record the end of member {self.member_id}", lambda: jobs.finish_member(
            self.store, self.member_id, self.owner, state, error=error, artifacts=artifacts, epochs=epochs,
            **fields),
            "its lease will lapse and the reaper will resume it from its checkpoint"))

    def yield_worker(self):
        """After a preemption stopped the training (its checkpoint written): the member back to
        the queue, its progress and finished epochs kept (``preemption.Yielded``; None: the lease
        was lost, or the store stayed away)."""
        self.heartbeat.stop()
        with self._epochs_lock:
            epochs = list(self._epochs)
        done = recorded(f"yield member {self.member_id}", lambda: preemption.yield_member(
            self.store, self.member_id, self.owner, epochs=epochs, **self._latest),
            "its lease will lapse and the reaper will resume it from its checkpoint")
        if done:
            with self._epochs_lock:
                del self._epochs[:len(epochs)]  # in the store with the yield
        return done

    def release(self, reason: str, retry_in: float = 0.0) -> None:
        """Give the member back for the task's own retry in ``retry_in`` seconds."""
        self.heartbeat.stop()
        with self._epochs_lock:
            epochs = list(self._epochs)
        recorded(f"give member {self.member_id} back", lambda: jobs.release_member(
            self.store, self.member_id, self.owner, reason, epochs=epochs, retry_in=retry_in),
            "its lease will lapse and the reaper will send it again")


def claim_job_task(task, job_id: str, what: str):
    """Take a job's one task (its evaluation, or a report's rendering) under the job's evaluation
    lease, with a heartbeat that renews it. Returns (store, owner, claim, heartbeat), or the
    string the task returns when the claim is not ours (or the store is away: a retry later)."""
    from medq.common.store import evaluation
    from medq.tasks.store_retry import StoreUnavailable, retry_later

    settings = task.app.conf.medq_settings
    store, owner = open_store(settings), uuid.uuid4().hex
    try:
        claim = retrying(f"claim {what}",
                         lambda: evaluation.claim_evaluation(store, job_id, owner, settings.lease_seconds))
    except StoreUnavailable as exc:
        return retry_later(task, exc)
    if claim is None:
        return "skipped: not ours"
    beat = Heartbeat(settings, what, cancelled=lambda: False,
                     renew=lambda: evaluation.renew_evaluation_lease(store, job_id, owner, settings.lease_seconds))
    return store, owner, claim, beat


def failure_reason(exc: BaseException, what: str) -> str:
    """Why a job's one task failed, for the store: a JobError in its own words; anything else is
    a bug or an environment fault, logged with its traceback (call it inside ``except``)."""
    from medq.common.errors import JobError

    if isinstance(exc, JobError):
        return str(exc)
    log.exception("%s failed", what)
    return f"{type(exc).__name__}: {exc}"


def epoch_record(p, attempt: int) -> dict[str, Any]:
    """A finished epoch (a Progress with epoch_done) as the history stores it."""
    return {"epoch": p.epoch, "phase": p.phase, "train_loss": _finite(p.train_loss), "val_loss": _finite(p.val_loss),
            "metrics": {name: _finite(value) for name, value in (p.metrics or {}).items()},
            "lrs": {str(name): _finite(lr) for name, lr in (p.lrs or {}).items()},
            "images_per_s": _finite(p.images_per_s), "wall_s": _finite(p.wall_s), "attempt": attempt}


def interrupted(exc: BaseException) -> bool:
    """True when ``exc`` was raised because this process is being stopped: billiard turns the
    SIGTERM of a cold shutdown into a SystemExit wherever the task happens to be, and code in
    the middle of a write (torch.save) may raise its own error on the way out. Not the job's
    fault: the caller re-raises, records nothing, and the lease lapses so the work resumes."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _finite(value: float | None) -> float | None:
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return float(value)
