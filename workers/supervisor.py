"""Starts the planned worker processes, restarts any that die, and runs the lease reaper.

The supervisor itself never imports torch, so it can never initialise CUDA before a fork.
Ctrl-C or SIGTERM: a warm shutdown (running members finish their step and are requeued by
Celery, or finish outright); a second signal: a cold one.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field

from medq.common.errors import brief
from medq.common.settings import Settings
from medq.common.store import admission, open_store, preemption
from medq.workers.dispatch import dispatch_once
from medq.workers.plan import WorkerPlan, worker_command
from medq.workers.reaper import reap_once

log = logging.getLogger("medq.supervisor")
RESTART_BACKOFF = (1, 2, 5, 10, 30)
HOSTS_DIR = ".medq-hosts"  # under the artifact root: one marker per host whose launcher uses it (medq doctor)
HEALTHY_RUN_S = 60.0  # a worker that ran this long before it exited starts again at the shortest delay


def _die_with_parent() -> None:
    """Linux: a worker stops at once when its launcher dies (SIGKILL, out of memory) rather than
    running on orphaned beside the launcher that replaces it. SIGQUIT is Celery's cold shutdown:
    the pool process and its task end now; the member's lease lapses and another launcher's
    reaper sends it again, to resume from its checkpoint. (A warm SIGTERM would let an
    hour-long member run on, holding its GPU.)"""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGQUIT)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def launcher_id() -> str:
    """A launcher's id in the worker registry: its host and process id (a launcher restarted on
    the same host tells a dead predecessor's rows at once) and a random part."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:16]}"


def launcher_gone(launcher: str) -> bool:
    """True when ``launcher`` (a ``launcher_id``) was a process of this host that no longer runs."""
    host, _, rest = launcher.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname()[:32] or not pid.isdigit():
        return False  # another host's (or an older medq's id): only its silence tells
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


@dataclass
class Child:
    plan: WorkerPlan
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    log_file: object | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, plans: list[WorkerPlan], settings: Settings, app, log_dir=None):
        self.children = [Child(plan) for plan in plans]
        self.settings, self.app, self.log_dir = settings, app, log_dir
        self.store = open_store(settings)  # migrates once, before any worker starts
        self.stopping = 0
        self.failures: dict[str, int] = {}  # consecutive failed rounds, by round ("reaper", "admission")
        self.launcher_id = launcher_id()
        self.collided: list[str] = []  # node names another live launcher turned out to run
        self.ticked_at = time.monotonic()  # the loop's last turn (/healthz)
        self.admitted_at: float | None = None  # the last admission round that worked (/readyz)
        self.metrics = None

    def start(self, child: Child) -> None:
        env = {**os.environ, **child.plan.env}
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{child.plan.label}.log", "ab")
            child.log_file = out
        child.process = subprocess.Popen(worker_command(child.plan, self.settings), env=env, stdout=out,
                                         stderr=subprocess.STDOUT if out else None, preexec_fn=_die_with_parent)
        child.started_at = time.monotonic()
        log.info("started %s (pid %s) on queues %s", child.plan.nodename, child.process.pid, ",".join(child.plan.queues))

    def run(self, until=None) -> int:
        """Supervise until a signal (or ``until()`` returns True). Returns an exit code."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        refused = self.wait_for_names()
        if refused:
            log.error("%s", refused)
            return 1
        if self.settings.metrics_port:
            try:
                self.start_metrics()
            except OSError as exc:  # the port taken (another launcher on this host): no metrics, still workers
                log.error("cannot serve metrics on %s:%d (%s); set another MEDQ_METRICS_PORT per launcher",
                          self.settings.metrics_address, self.settings.metrics_port, exc.strerror)
        for child in self.children:
            self.start(child)
        self.mark_host()
        next_reap = next_admit = time.monotonic()
        try:
            while not self.stopping and not (until and until()):
                now = self.ticked_at = time.monotonic()
                for child in self.children:
                    self._check(child, now)
                if now >= next_admit:
                    next_admit = now + self.settings.admit_interval
                    self._admit()
                if now >= next_reap:
                    next_reap = now + self.settings.reaper_interval
                    self._reap()
                time.sleep(min(0.5, self.settings.admit_interval))
        finally:
            self.shutdown()
        return 1 if self.collided else 0

    def wait_for_names(self) -> str | None:
        """Our node names are stable (``gpu0@host``): another launcher alive on this host with
        the same slots would share them, and each other's queues and leases. Rows of a launcher
        of this host whose process is gone are dropped at once (a restart after a crash); any
        other holder must stop saying it is alive within MEDQ_WORKER_TTL. Returns the reason
        to refuse to start, or None."""
        nodes = [c.plan.nodename for c in self.children]
        deadline = time.monotonic() + self.settings.worker_ttl + 2 * self.settings.admit_interval
        said = False
        while True:
            try:
                held = admission.names_in_use(self.store, self.launcher_id, nodes, self.settings.worker_ttl)
                for other in {other for other, _ in held.values() if launcher_gone(other)}:
                    admission.forget_launcher(self.store, other)
                    held = {name: h for name, h in held.items() if h[0] != other}
            except Exception as exc:  # the store away: the registry's own guard catches a collision later
                log.warning("could not check that our node names are free (%s)", brief(exc))
                return None
            if not held:
                return None
            if time.monotonic() >= deadline:
                return (f"refusing to start: {', '.join(sorted(held))} already run by another launcher that is "
                        f"alive (seen {min(ago for _, ago in held.values()):.0f} s ago); stop it first, or give "
                        f"this one its own node names with `medq worker --name-prefix NAME`")
            if not said:
                log.warning("%s in use by another launcher (seen %.0f s ago); waiting up to %.0f s for it to "
                            "go silent", ", ".join(sorted(held)), min(ago for _, ago in held.values()),
                            deadline - time.monotonic())
                said = True
            time.sleep(0.5)

    def _admit(self) -> None:
        """Say which of our workers are alive (the registry the dispatcher reads), then run one
        admission round (workers/dispatch.py)."""
        alive = [(c.plan.nodename, c.plan.own_queue, c.plan.device) for c in self.children
                 if c.process is not None and c.process.poll() is None]

        def work() -> None:
            held = admission.register_workers(self.store, self.launcher_id, alive, ttl=self.settings.worker_ttl)
            if held:  # two launchers started at the same moment with the same slots: the later one stops
                log.error("another launcher runs %s too (it started at the same moment); stopping this launcher; "
                          "give one of them `medq worker --name-prefix NAME`", ", ".join(held))
                self.collided, self.stopping = held, max(self.stopping, 1)
                return
            dispatch_once(self.store, self.app, self.settings)

        if self._round("admission", work, say_every=60):
            self.admitted_at = time.monotonic()

    def mark_host(self) -> None:
        """This host's sign in the artifact root: `medq doctor` on any host checks that it sees
        the same root as every host with live workers."""
        folder = self.settings.artifacts / HOSTS_DIR
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / socket.gethostname()).write_text(f"{time.time():.0f}\n")
        except OSError as exc:
            log.warning("cannot write to the artifact root %s (%s): checkpoints will fail", self.settings.artifacts,
                        exc.strerror)

    def alive_by_device(self) -> dict[str, int]:
        alive: dict[str, int] = {}
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                alive[child.plan.device] = alive.get(child.plan.device, 0) + 1
        return alive

    def start_metrics(self):
        """The Prometheus endpoint (workers/metrics.py) on MEDQ_METRICS_ADDRESS:MEDQ_METRICS_PORT."""
        from medq.workers.metrics import MedqCollector, make_registry, serve

        collector = MedqCollector(self.store, self.app, self.settings, cluster=self.settings.metrics_cluster,
                                  launcher_workers=self.alive_by_device)
        self.metrics = serve(make_registry(collector), self.settings.metrics_address, self.settings.metrics_port,
                             self.healthy, self.ready)
        return self.metrics

    def healthy(self) -> tuple[bool, str]:
        """The supervising loop turns (it restarts dead workers and runs the rounds)."""
        idle = time.monotonic() - self.ticked_at
        limit = max(30.0, 5 * self.settings.admit_interval)
        return idle < limit, f"the launcher's loop last turned {idle:.1f} s ago (limit {limit:.0f} s)"

    def ready(self) -> tuple[bool, str]:
        """At least one worker process is alive and the last admission rounds reached the store."""
        if self.stopping:
            return False, "stopping: handing over and stopping the workers"
        alive = sum(self.alive_by_device().values())
        if not alive:
            return False, "no worker process is alive"
        since = None if self.admitted_at is None else time.monotonic() - self.admitted_at
        limit = max(30.0, 10 * self.settings.admit_interval)
        if since is None or since > limit:
            return False, (f"{alive} worker(s) alive, but no admission round has reached the store"
                           + ("" if since is None else f" for {since:.0f} s"))
        return True, f"{alive} worker(s) alive; the store answered {since:.1f} s ago"

    def _round(self, name: str, work, say_every: int) -> bool:
        """One periodic round; the store or the broker away fails it, and every round retries.
        One line for the first failure and every ``say_every``-th, and one when it works again.
        True: the round worked."""
        try:
            work()
        except Exception as exc:
            self.failures[name] = failures = self.failures.get(name, 0) + 1
            if failures == 1 or failures % say_every == 0:
                log.warning("%s round failed %d time(s) (%s); will retry", name, failures, brief(exc))
                log.debug("%s round failure", name, exc_info=True)
            return False
        if self.failures.get(name):
            log.info("%s rounds work again after %d failure(s)", name, self.failures[name])
        self.failures[name] = 0
        return True

    def _check(self, child: Child, now: float) -> None:
        if child.process is None or child.process.poll() is None:
            if child.process is None and now >= child.next_start:
                self.start(child)
            return
        code = child.process.returncode
        if now - child.started_at >= HEALTHY_RUN_S:
            child.restarts = 0  # it was healthy: this is a new fault, not a crash loop
        delay = RESTART_BACKOFF[min(child.restarts, len(RESTART_BACKOFF) - 1)]
        log.error("%s exited with code %s; restarting in %ss", child.plan.nodename, code, delay)
        child.process, child.restarts, child.next_start = None, child.restarts + 1, now + delay

    def _reap(self) -> None:
        self._round("reaper", lambda: reap_once(self.store, self.app), say_every=30)

    def _on_signal(self, signum, _frame) -> None:
        self.stopping += 1
        if self.stopping > 1:
            self._signal_all(signal.SIGQUIT)

    def _signal_all(self, sig: int) -> None:
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                try:
                    child.process.send_signal(sig)
                except ProcessLookupError:
                    pass

    def shutdown(self, timeout: float = 60.0) -> None:
        """Take our workers out of admission, ask the members they run to hand over at their next
        step (the exact checkpoint a preemption writes: another worker resumes them and repeats no
        step), and stop the workers warmly at once: Celery's warm shutdown takes no new message
        and waits for the running task, which yields. Members claimed meanwhile are asked too.
        Up to MEDQ_SHUTDOWN_YIELD_TIMEOUT for a hand-over, ``timeout`` for anything else; a
        second signal makes it a cold shutdown (the members resume from their last checkpoint)."""
        try:  # admit nothing more to our workers; what they were admitted and did not take lapses
            admission.forget_launcher(self.store, self.launcher_id)
        except Exception as exc:
            log.warning("could not take this launcher's workers out of the registry (%s); they expire in %.0f s",
                        brief(exc), self.settings.worker_ttl)
        # members on a name another launcher also runs may be that launcher's: not ours to hand over
        nodes = [c.plan.nodename for c in self.children if c.process is not None and c.process.poll() is None
                 and c.plan.nodename not in self.collided]
        hand_over = self.settings.shutdown_yield_timeout > 0
        asked = self._ask_hand_over(nodes) if hand_over else set()
        self._signal_all(signal.SIGTERM)
        start = time.monotonic()
        while any(c.process is not None and c.process.poll() is None for c in self.children):
            waited = time.monotonic() - start
            # ``timeout`` for the workers to stop; longer only while a member is still handing over
            if waited >= timeout + (self.settings.shutdown_yield_timeout if hand_over else 0):
                break
            if waited >= timeout and not (hand_over and self.stopping < 2 and self._running_on(nodes)):
                break
            if hand_over and self.stopping < 2:
                asked |= self._ask_hand_over(nodes)
            time.sleep(0.5)
        if asked:
            still = self._running_on(nodes)
            if still:
                log.warning("%d member(s) did not hand over in time; they resume from their last checkpoint", len(still))
            else:
                log.info("every member handed over (%d)", len(asked))
        for child in self.children:
            if child.process is None:
                continue
            if child.process.poll() is None:
                log.warning("%s did not stop in time; killing it", child.plan.nodename)
                child.process.kill()
            child.process.wait()
            if child.log_file is not None:
                child.log_file.close()
        if self.metrics is not None:  # served to the end: /readyz said "stopping" meanwhile
            self.metrics.shutdown()
            self.metrics.server_close()
            self.metrics = None

    def _ask_hand_over(self, nodes: list[str]) -> set[int]:
        try:
            asked = set(preemption.yield_for_shutdown(self.store, nodes))
        except Exception as exc:  # the store away: the leases lapse and the members resume as after a crash
            if not self.failures.get("hand-over"):  # once, not every half second
                log.warning("could not ask the members to hand over (%s)", brief(exc))
            self.failures["hand-over"] = self.failures.get("hand-over", 0) + 1
            return set()
        if asked:
            log.info("asked %d member(s) to hand over at their next step before stopping", len(asked))
        return asked

    def _running_on(self, nodes: list[str]) -> list[int]:
        try:
            return preemption.running_on(self.store, nodes)
        except Exception:
            return []
