"""Which worker processes to start, and the exact command and environment of each."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field

from medq.common.settings import Settings
from medq.tasks import names


@dataclass(frozen=True)
class WorkerPlan:
    label: str  # "gpu3" or "cpu0"
    queues: tuple[str, ...]
    nodename: str
    env: dict[str, str] = field(default_factory=dict)


def plan_workers(gpus: list[int], cpu: int, host: str | None = None, extra_queues: tuple[str, ...] = ()) -> list[WorkerPlan]:
    """One process per GPU (CUDA_VISIBLE_DEVICES=k, so inside it the device is cuda:0), or
    ``cpu`` CPU processes sharing the cores. All consume the shared ``gpu`` queue (the
    training queue) and a queue of their own."""
    host = host or socket.gethostname()
    tag = os.getpid()  # several launchers on one host get distinct node names
    plans = []
    for index in gpus:
        plans.append(WorkerPlan(
            label=f"gpu{index}",
            queues=(*names.consume_order((names.device_queue(host, index),)), *extra_queues),
            nodename=f"gpu{index}-{tag}@{host}",
            env={"CUDA_VISIBLE_DEVICES": str(index), "MEDQ_DEVICE": "cuda:0", "MEDQ_WORKER_LABEL": f"gpu{index}"},
        ))
    threads = str(max(1, (os.cpu_count() or 1) // max(1, cpu))) if cpu else "1"
    for index in range(cpu):
        plans.append(WorkerPlan(
            label=f"cpu{index}",
            queues=(*names.consume_order((names.device_queue(host, index, "cpu"), names.CPU_QUEUE)), *extra_queues),
            nodename=f"cpu{index}-{tag}@{host}",
            env={"CUDA_VISIBLE_DEVICES": "", "MEDQ_DEVICE": "cpu", "MEDQ_WORKER_LABEL": f"cpu{index}",
                 "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
        ))
    return plans


def worker_command(plan: WorkerPlan, settings: Settings) -> list[str]:
    """Prefork with one child: the parent never touches CUDA, the child runs the task, and a
    child killed outright is noticed (its message is rejected back to the queue)."""
    cmd = [
        sys.executable, "-m", "celery", "-A", "medq.tasks.app", "worker",
        "--pool", "prefork", "--concurrency", "1", "--prefetch-multiplier", "1",
        "--queues", ",".join(plan.queues), "--hostname", plan.nodename,
        "--loglevel", settings.log_level, "--task-events", "--without-mingle", "--without-gossip",
    ]
    if settings.worker_max_tasks_per_child:
        cmd += ["--max-tasks-per-child", str(settings.worker_max_tasks_per_child)]
    return cmd
