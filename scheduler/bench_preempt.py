"""`medq bench preempt`: how long a training member takes to give its worker back once it is
asked (the request's time to its yield's, both as the store records them: the worker is free
then), against one bare PyTorch training step of the same model and batch measured in the same
run (a yield cannot come sooner than the step in flight)."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import click
from sqlalchemy import select


@click.command("preempt")
@click.option("--rounds", default=5, show_default=True, help="preemptions of one member, one after another")
@click.option("--image-size", default=128, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
def bench_preempt(rounds: int, image_size: int, batch_size: int) -> None:
    """Preemption latency (request -> the member's yield recorded, its worker free) on one CPU
    worker, against a bare PyTorch training step of the same model and batch. The heartbeat
    looks for requests every MEDQ_CANCEL_CHECK_INTERVAL seconds (set it to compare)."""
    from medq.scheduler.local import LocalPool

    root = Path(tempfile.mkdtemp(prefix="medq-bench-preempt-"))
    click.echo(json.dumps(run(root, rounds, image_size, batch_size, LocalPool(cpu=1)), indent=2))


def run(root: Path, rounds: int, image_size: int, batch_size: int, pool) -> dict:
    from medq.common.families.chest.bench import bare_loop_throughput
    from medq.common.families.chest.spec import EnsembleSpec
    from medq.common.families.chest.synth import synth_chest
    from medq.common.settings import load_settings
    from medq.common.store import jobs, open_store, preemption
    from medq.common.store.models import Attempt, Member
    from medq.scheduler.local import local_workers, wait_for_job
    from medq.scheduler.submit import submit_training

    data = root / "data"
    synth_chest(data, n=max(64, 8 * batch_size), seed=1)
    spec = EnsembleSpec(epochs_head=0, epochs=100_000, patience=100_000, image_size=image_size, batch_size=batch_size)
    env = {"MEDQ_HOME": str(root / "home")}
    settings = load_settings({**os.environ, **env})
    latencies: list[float] = []
    with local_workers(pool, root / "logs", env, ready_timeout=300):
        store = open_store(settings)
        job_id = submit_training(settings, spec.kind, spec, data, [0])
        with store.session() as s:
            member_id = s.scalar(select(Member.id).where(Member.job_id == job_id))

        def member() -> Member:
            with store.session() as s:
                return s.get(Member, member_id)

        for _ in range(rounds):
            since = member().epoch  # an epoch trained since it last resumed: not still loading
            _until(lambda: (m := member()).state == "running" and m.epoch > since, 600)
            with store.session() as s:
                started = s.scalar(select(Attempt.number).where(Attempt.member_id == member_id,
                                                                Attempt.state == "running"))
            asked = preemption.request_preemption(store, member_id, "medq bench preempt")
            assert asked is not None
            with store.session() as s:
                _until(lambda: _ended(store, member_id, started), 120)
                ended = s.scalar(select(Attempt.ended_at).where(Attempt.member_id == member_id,
                                                                Attempt.number == started))
            latencies.append((ended - asked).total_seconds())
        jobs.request_cancel(store, job_id)
        wait_for_job(store, job_id, timeout=300)
    step_s = batch_size / bare_loop_throughput(spec, data, steps=12)
    mean = statistics.mean(latencies)
    return {
        "rounds": rounds, "image_size": image_size, "batch_size": batch_size,
        "cancel_check_interval_s": settings.cancel_check_interval, "heartbeat_s": settings.progress_interval,
        "preemption_latency_s": {"mean": round(mean, 3), "median": round(statistics.median(latencies), 3),
                                 "max": round(max(latencies), 3)},
        "bare_step_s": round(step_s, 4),
        "latency_over_bare_step": round(mean / step_s, 1),
    }


def _ended(store, member_id: int, number: int) -> bool:
    from medq.common.store.models import Attempt

    with store.session() as s:
        return s.scalar(select(Attempt.state).where(Attempt.member_id == member_id, Attempt.number == number)) \
            == "preempted"


def _until(check, timeout: float, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the member did not get there in time; see the worker logs")
        time.sleep(poll)
