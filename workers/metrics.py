"""Prometheus metrics (prometheus-client): a collector read at scrape time, and the HTTP
endpoint every worker launcher serves on ``MEDQ_METRICS_PORT`` and `medq metrics --port` serves
on a host without workers.

Two parts. The cluster-wide one (``MEDQ_METRICS_CLUSTER``, on by default) comes from the store
and the broker and is the same from every endpoint: queue depths and the age of the oldest
waiting item, jobs by kind and state, what runs where with its progress, inference studies by
outcome and per second, live workers, and the store's event counters. The local one is this
host's GPUs through NVML (absent without one) and, in a launcher, its live worker processes.
Labels carry job ids (``job_id``: Prometheus keeps ``job`` for its own), seeds, worker node names, queue and device names: never a patient, a
study or a file name; their number is bounded by the workers and the open jobs.

``/healthz`` answers 200 while the process's loop runs, ``/readyz`` 200 when it can do its work
(a launcher: a live worker and a working store; `medq metrics`: a reachable store); anything
else is the metrics.
"""

from __future__ import annotations

import logging
import socketserver
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from medq.common.errors import brief
from medq.common.gpus import read_gpus
from medq.common.store.counters import COUNTERS
from medq.common.store.ops_view import ADMISSION_QUEUE, STUDY_OUTCOMES, snapshot
from medq.tasks import names

log = logging.getLogger("medq.metrics")
MIN_READ_INTERVAL = 1.0  # seconds: the store and broker are read at most this often
RATE_WINDOW = 10.0  # seconds at least between the two reads a studies-per-second figure comes from
SHARED_QUEUES = (names.GPU_QUEUE, names.CPU_QUEUE, names.REPORT_QUEUE, *names.INFER_QUEUES.values())


def _medq_version() -> str:
    try:
        return version("medq")
    except PackageNotFoundError:
        return "unknown"


class MedqCollector:
    """Reads the store, the broker and NVML when scraped. ``launcher_workers`` (a launcher's):
    a function giving its live worker processes by device."""

    def __init__(self, store, app, settings, cluster: bool = True,
                 launcher_workers: Callable[[], dict[str, int]] | None = None, gpus=read_gpus):
        self.store, self.app, self.settings, self.cluster = store, app, settings, cluster
        self.launcher_workers, self.gpus = launcher_workers, gpus
        self._done: dict[str, tuple[float, int, float]] = {}  # job -> (monotonic time, studies ended, per s)
        self.store_ok: bool | None = None  # the last scrape's view, for /readyz

    def describe(self):
        return []  # collected at scrape time only (no collection at registration)

    def collect(self):
        yield self._build_info()
        if self.cluster:
            yield from self._cluster()
        yield from self._gpus()
        if self.launcher_workers is not None:
            alive = GaugeMetricFamily("medq_launcher_workers_alive", "This launcher's live worker processes",
                                      labels=["device"])
            for device, count in sorted(self.launcher_workers().items()):
                alive.add_metric([device], count)
            yield alive

    def _build_info(self):
        info = GaugeMetricFamily("medq_build_info", "medq's version (always 1)", labels=["version"])
        info.add_metric([_medq_version()], 1)
        return info

    # --- cluster-wide: store and broker ---
    def _cluster(self):
        store_up = GaugeMetricFamily("medq_store_up", "Whether the results store answered this scrape")
        broker_up = GaugeMetricFamily("medq_broker_up", "Whether the broker answered this scrape")
        try:
            snap = snapshot(self.store, self.settings.worker_ttl)
        except Exception as exc:
            self._fault("store", exc)
            self.store_ok = False
            store_up.add_metric([], 0)
            yield store_up
            snap = None
        else:
            self.store_ok = True
            store_up.add_metric([], 1)
            yield store_up
        queues = [*SHARED_QUEUES, *(snap.worker_queues if snap else [])]
        try:
            from medq.tasks.send import queue_depths

            depths = queue_depths(self.app, queues)
        except Exception as exc:
            self._fault("broker", exc)
            depths = None
        broker_up.add_metric([], 0 if depths is None else 1)
        yield broker_up
        yield from self._queues(snap, depths)
        if snap is not None:
            yield from self._store_series(snap)

    def _fault(self, what: str, exc: Exception) -> None:
        log.warning("metrics: the %s did not answer (%s)", what, brief(exc))

    def _queues(self, snap, depths):
        messages = GaugeMetricFamily(
            "medq_queue_messages", "Messages waiting on a broker queue; queue=\"admission\": members waiting in "
            "the store for a worker", labels=["queue"])
        oldest = GaugeMetricFamily("medq_queue_oldest_age_seconds",
                                   "Age of the oldest item the store has waiting on a queue (0: none)", labels=["queue"])
        waiting = snap.waiting if snap else {}
        now = snap.taken_at if snap else None
        for queue, depth in sorted((depths or {}).items()):
            messages.add_metric([queue], depth)
        if snap is not None:
            messages.add_metric([ADMISSION_QUEUE], waiting.get(ADMISSION_QUEUE, (0, None))[0])
            for queue in sorted({*(depths or {}), *waiting, ADMISSION_QUEUE}):
                _, at = waiting.get(queue, (0, None))
                oldest.add_metric([queue], max(0.0, (now - _aware(at)).total_seconds()) if at else 0.0)
        yield messages
        yield oldest

    def _store_series(self, snap):
        jobs = GaugeMetricFamily("medq_jobs", "Jobs by kind and state", labels=["kind", "state"])
        for (kind, state), count in sorted(snap.jobs.items()):
            jobs.add_metric([kind, state], count)
        yield jobs
        online = GaugeMetricFamily("medq_workers_online", "Workers whose launcher said they are alive within "
                                   "MEDQ_WORKER_TTL", labels=["device"])
        for device in ("gpu", "cpu"):
            online.add_metric([device], snap.workers_online.get(device, 0))
        yield online
        running = GaugeMetricFamily("medq_members_running", "Training members running, by worker",
                                    labels=["worker", "device"])
        progress = GaugeMetricFamily("medq_member_progress_ratio", "A running member's progress through its "
                                     "epochs (0..1)", labels=["worker", "device", "job_id", "seed"])
        chunks = GaugeMetricFamily("medq_chunks_running", "Inference chunks running, by worker",
                                   labels=["worker", "device"])
        per_worker = {key: 0 for key in snap.live}  # an idle live worker reads 0, not nothing
        for member in snap.running:
            per_worker[(member.worker, member.device)] = per_worker.get((member.worker, member.device), 0) + 1
            progress.add_metric([member.worker, member.device, member.job, str(member.seed)], member.progress)
        for (worker, device), count in sorted(per_worker.items()):
            running.add_metric([worker, device], count)
        for (worker, device), count in sorted({**{key: 0 for key in snap.live}, **snap.chunks_running}.items()):
            chunks.add_metric([worker, device], count)
        yield running
        yield progress
        yield chunks
        yield from self._studies(snap)
        for name, (help_text, kinds) in COUNTERS.items():
            counter = CounterMetricFamily(f"medq_{name}", help_text, labels=["kind"] if len(kinds) > 1 else None)
            for kind in kinds:
                counter.add_metric([kind] if len(kinds) > 1 else [], snap.counters.get((name, kind), 0))
            yield counter

    def _studies(self, snap):
        total = CounterMetricFamily("medq_studies", "Studies of an inference job by outcome (open jobs and those "
                                    "ended in the last hour)", labels=["job_id", "outcome"])
        pending = GaugeMetricFamily("medq_studies_pending", "Studies of an inference job not yet done", labels=["job_id"])
        rate = GaugeMetricFamily("medq_studies_per_second", "Studies an inference job ended per second over the "
                                 "last 10 s or more (the first read: since the job started)", labels=["job_id"])
        now = time.monotonic()
        samples = {}
        for job in snap.infer_jobs:
            for outcome in STUDY_OUTCOMES:
                total.add_metric([job.job, outcome], job.studies.get(outcome, 0))
            pending.add_metric([job.job], job.studies.get("pending", 0))
            ended = sum(job.studies.get(o, 0) for o in STUDY_OUTCOMES)
            before = self._done.get(job.job)
            if before is not None and now - before[0] < RATE_WINDOW:  # too short a gap: the figure stands
                samples[job.job] = before
            elif before is not None:
                samples[job.job] = (now, ended, (ended - before[1]) / (now - before[0]))
            else:
                elapsed = (snap.taken_at - _aware(job.started_at)).total_seconds() if job.started_at else 0.0
                samples[job.job] = (now, ended, ended / elapsed if elapsed > 0 else 0.0)
            rate.add_metric([job.job], max(0.0, samples[job.job][2]))
        self._done = samples
        yield total
        yield pending
        yield rate

    # --- local: this host's GPUs ---
    def _gpus(self):
        families = {
            "utilization": GaugeMetricFamily("medq_gpu_utilization_ratio", "GPU busy time over NVML's last sample "
                                             "period (0..1)", labels=["gpu", "model"]),
            "memory_used": GaugeMetricFamily("medq_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu", "model"]),
            "memory_total": GaugeMetricFamily("medq_gpu_memory_total_bytes", "GPU memory in all",
                                              labels=["gpu", "model"]),
            "temperature": GaugeMetricFamily("medq_gpu_temperature_celsius", "GPU core temperature",
                                             labels=["gpu", "model"]),
            "power": GaugeMetricFamily("medq_gpu_power_watts", "GPU power draw", labels=["gpu", "model"]),
        }
        try:
            readings = self.gpus()
        except Exception as exc:  # never an error: a GPU that cannot be read is one not shown
            log.debug("metrics: GPUs not read (%s)", brief(exc))
            readings = []
        for gpu in readings:
            for key, family in families.items():
                value = getattr(gpu, key)
                if value is not None:
                    family.add_metric([str(gpu.index), gpu.model], value)
        for family in families.values():
            if family.samples:
                yield family


def _aware(at):
    from datetime import timezone

    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def make_registry(collector: MedqCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)  # this process's CPU, memory and open files
    return registry


# --- the HTTP endpoint ---
class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # a scrape every 15 s is not news
        pass


def cached(app, interval: float = MIN_READ_INTERVAL):
    """The metrics app, its answer kept for ``interval`` seconds per format asked for: several
    Prometheus servers (or a dashboard's refresh) scraping at once cost one read of the store,
    and a scrape in between costs only its HTTP exchange."""
    lock, answers = threading.Lock(), {}

    def serve_cached(environ, start_response):
        from urllib.parse import parse_qs

        # what changes the answer: the format (OpenMetrics or text), gzip, and the names asked for
        accept, encoding = environ.get("HTTP_ACCEPT", ""), environ.get("HTTP_ACCEPT_ENCODING", "")
        key = ("openmetrics" in accept, "gzip" in encoding,
               tuple(sorted(parse_qs(environ.get("QUERY_STRING", "")).get("name[]", []))))
        with lock:
            for stale in [k for k, a in answers.items() if time.monotonic() - a[0] >= interval]:
                del answers[stale]  # nothing kept past its second: asking in many ways grows nothing
            answer = answers.get(key)
            if answer is None:
                seen = {}

                def keep(status, headers, exc_info=None):
                    seen.update(status=status, headers=headers)

                body = b"".join(app(environ, keep))
                answer = answers[key] = (time.monotonic(), seen["status"], seen["headers"], body)
        start_response(answer[1], answer[2])
        return [answer[3]]

    return serve_cached


def health_app(registry: CollectorRegistry, healthy: Callable[[], tuple[bool, str]],
               ready: Callable[[], tuple[bool, str]]):
    metrics = cached(make_wsgi_app(registry))
    checks = {"/healthz": healthy, "/readyz": ready}

    def app(environ, start_response):
        check = checks.get(environ.get("PATH_INFO", ""))
        if check is None:
            return metrics(environ, start_response)
        ok, why = check()
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"{'ok' if ok else 'not ok'}: {why}\n".encode()]

    return app


def serve(registry: CollectorRegistry, address: str, port: int, healthy, ready) -> _Server:
    """Serve in a daemon thread; returns the server (``server_address`` has the port taken)."""
    server = make_server(address, port, health_app(registry, healthy, ready), server_class=_Server,
                         handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="medq-metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", *server.server_address[:2])
    return server
