"""The Celery settings that keep hour-long GPU jobs safe on Redis (DESIGN.md's trap table)."""

from __future__ import annotations

from typing import Any

from medq.common.settings import Settings
from medq.tasks import broker_guard, embedded_broker, names  # noqa: F401  (registers the medq+sqlite transport)

ROUTES = {
    names.TRAIN_MEMBER: {"queue": names.GPU_QUEUE},
    names.EVALUATE_JOB: {"queue": names.GPU_QUEUE},
    names.EVALUATE_ENSEMBLE: {"queue": names.GPU_QUEUE},
    names.NOOP: {"queue": names.GPU_QUEUE},
    names.RENDER_REPORT: {"queue": names.REPORT_QUEUE},
}


def broker_url(settings: Settings) -> str:
    url = settings.resolved_broker_url
    if settings.redis_password and url.startswith(("redis://", "rediss://")) and "@" not in url:
        scheme, rest = url.split("://", 1)
        url = f"{scheme}://:{settings.redis_password}@{rest}"
    return url


def celery_config(settings: Settings) -> dict[str, Any]:
    url = broker_url(settings)
    transport_options: dict[str, Any] = {}
    if url.startswith(("redis", "sentinel")):
        # Unacked messages come back after this long: above the longest job plus its queue
        # wait, so a healthy run is never delivered twice. A dead worker is found sooner by
        # the lease reaper (workers/reaper.py), not by this timeout.
        transport_options["visibility_timeout"] = settings.visibility_timeout
        # Take queues in the order each worker lists them (urgent inference first), not
        # round robin: the priority of inference jobs is a choice of queue.
        transport_options["queue_order_strategy"] = "priority"
    return {
        "broker_url": url,
        # kombu's Redis transport with every message's envelope checked first: a malformed one
        # is set aside instead of ending the worker (tasks/broker_guard.py).
        "broker_transport": broker_guard.transport_for(url),
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "broker_use_ssl": settings.broker_use_ssl or None,
        # JSON only: pickle over the broker would be remote code execution.
        "accept_content": ["json"],
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        # Our store is the source of truth; no result keys pile up in Redis.
        "task_ignore_result": True,
        "result_backend": settings.result_backend or None,
        # A killed worker's message is requeued, not dropped; the store caps redeliveries.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_max_tasks_per_child": settings.worker_max_tasks_per_child or None,
        # A pool process imports torch and the engines at start (tasks/app.py): give it time.
        "worker_proc_alive_timeout": 120,
        "task_default_queue": names.GPU_QUEUE,
        "task_routes": ROUTES,
        "task_create_missing_queues": True,
        # Progress goes to Flower as events as well as to the store.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
    }
