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
    own_queue: str = ""  # the queue only this worker consumes: the dispatcher admits members onto it

    @property
    def device(self) -> str:
        return "gpu" if self.label.startswith("gpu") else "cpu"


def node_name(label: str, host: str, prefix: str = "") -> str:
    """A worker's Celery node name, by its slot and host (``gpu0@node7``, ``cpu1@node7``): the
    same every time a launcher starts there, so Flower, the Prometheus series and the store's
    worker registry keep one name per slot. ``prefix`` (``medq worker --name-prefix b``:
    ``b-gpu0@node7``) sets apart a second launcher on the same host; without one, the second is
    refused while the first is alive (workers/supervisor.py)."""
    return f"{prefix}-{label}@{host}" if prefix else f"{label}@{host}"


def plan_workers(gpus: list[int], cpu: int, host: str | None = None, extra_queues: tuple[str, ...] = (),
                 prefix: str = "") -> list[WorkerPlan]:
    """One process per GPU (CUDA_VISIBLE_DEVICES=k, so inside it the device is cuda:0), or
    ``cpu`` CPU processes sharing the cores. Each consumes a queue of its own (the admission
    dispatcher sends members there), the shared queues of inference and reports, and the
    shared ``gpu`` queue (members sent by a medq from before admission)."""
    host = host or socket.gethostname()
    plans = []
    for index in gpus:
        nodename = node_name(f"gpu{index}", host, prefix)
        plans.append(WorkerPlan(
            label=f"gpu{index}",
            queues=(*names.consume_order((names.worker_queue(nodename),)), *extra_queues),
            nodename=nodename,
            # PCI bus order: --gpus k is the GPU nvidia-smi and NVML (the metrics' gpu label) call k
            env={"CUDA_VISIBLE_DEVICES": str(index), "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "MEDQ_DEVICE": "cuda:0",
                 "MEDQ_WORKER_LABEL": f"gpu{index}"},
            own_queue=names.worker_queue(nodename),
        ))
    threads = str(max(1, (os.cpu_count() or 1) // max(1, cpu))) if cpu else "1"
    for index in range(cpu):
        nodename = node_name(f"cpu{index}", host, prefix)
        plans.append(WorkerPlan(
            label=f"cpu{index}",
            queues=(*names.consume_order((names.worker_queue(nodename), names.CPU_QUEUE)), *extra_queues),
            nodename=nodename,
            env={"CUDA_VISIBLE_DEVICES": "", "MEDQ_DEVICE": "cpu", "MEDQ_WORKER_LABEL": f"cpu{index}",
                 "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
            own_queue=names.worker_queue(nodename),
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
