"""Task and queue names, in one place. The CLI sends work by these names."""

TRAIN_MEMBER = "medq.train_member"
EVALUATE_JOB = "medq.evaluate_job"  # a training job's evaluation, for every family
EVALUATE_ENSEMBLE = "medq.evaluate_ensemble"  # its name before families shared it (old messages)
NOOP = "medq.noop"
RENDER_REPORT = "medq.render_report"  # a report job: its HTML (and PDF) from the store

# The line a pool process logs once it can run tasks at full speed (engines imported, CUDA
# context made); `medq demo` and `medq bench` wait for it before they start their clocks.
POOL_READY = "medq pool process ready"

# Queues: the shared accelerator queue, one per device, and CPU-only work.
GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"
REPORT_QUEUE = "report"  # reports: every worker takes them when free, before training


def worker_queue(nodename: str) -> str:
    """The queue only one worker consumes, named by its Celery node name (``w.gpu0@host``):
    the admission dispatcher sends a member to the worker it chose through it."""
    return f"w.{nodename}"

INFER_CHUNK = "medq.infer_chunk"
INFER_QUEUES = {"high": "infer.high", "normal": "infer.normal", "low": "infer.low"}


def consume_order(own: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The order a worker takes its queues in (strict on Redis): urgent inference, reports
    (seconds each: a report never waits behind hours of training), then training and normal
    inference, then low-priority inference when nothing else waits."""
    return (INFER_QUEUES["high"], REPORT_QUEUE, *own, GPU_QUEUE, INFER_QUEUES["normal"], INFER_QUEUES["low"])
