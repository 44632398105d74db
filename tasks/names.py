"""Task and queue names, in one place. The CLI sends work by these names."""

TRAIN_MEMBER = "medq.train_member"
EVALUATE_ENSEMBLE = "medq.evaluate_ensemble"
NOOP = "medq.noop"

# Queues: the shared accelerator queue, one per device, and CPU-only work.
GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"


def device_queue(host: str, index: int, kind: str = "gpu") -> str:
    """A queue only one worker consumes: ``gpu.<host>.<index>``."""
    return f"{kind}.{host}.{index}"
