"""`medq bench`: the benchmarks the README reports, each against its baseline in the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click


@click.group()
def bench() -> None:
    """Benchmarks (not tests): queue overhead, training throughput, ensemble scaling."""


def _timed_noops(send, n: int) -> dict:
    send(-1).get(timeout=60)  # warm-up: connections, worker pool
    start = time.perf_counter()
    for i in range(n):
        assert send(i).get(timeout=60) == i
    sequential = (time.perf_counter() - start) / n * 1000
    start = time.perf_counter()
    pending = [send(i) for i in range(n)]
    for p in pending:
        p.get(timeout=120)
    burst = n / (time.perf_counter() - start)
    return {"round_trip_ms": round(sequential, 2), "burst_tasks_per_s": round(burst, 1)}


@bench.command("queue")
@click.option("--redis-url", default="redis://127.0.0.1:6379/15", show_default=True)
@click.option("--n", default=200, show_default=True)
def bench_queue(redis_url: str, n: int) -> None:
    """No-op round trip through medq's Celery configuration vs plain Celery, on Redis."""
    backend = redis_url.rsplit("/", 1)[0] + "/14"
    env = {**os.environ, "MEDQ_BROKER_URL": redis_url, "MEDQ_RESULT_BACKEND": backend,
           "MEDQ_HOME": tempfile.mkdtemp(prefix="medq-bench-"), "RAW_BROKER_URL": redis_url, "RAW_BACKEND_URL": backend}
    out: dict[str, dict] = {}
    # medq: its own worker command (prefork -c 1, acks late, prefetch 1, JSON, events).
    from common.settings import load_settings
    from workers.plan import plan_workers, worker_command

    settings = load_settings(env)
    plan = plan_workers([], 1)[0]
    medq_cmd = worker_command(plan, settings)
    raw_cmd = [sys.executable, "-m", "celery", "-A", "tasks.raw_noop:raw", "worker", "--pool", "prefork",
               "--concurrency", "1", "--loglevel", "WARNING", "--without-mingle", "--without-gossip"]
    for name, cmd in (("medq", medq_cmd), ("raw_celery", raw_cmd)):
        proc = subprocess.Popen(cmd, env={**env, **plan.env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if name == "medq":
                from tasks import names
                from tasks.app import make_app

                app = make_app(settings)
                out[name] = _timed_noops(lambda i: app.send_task(names.NOOP, args=[i]), n)
            else:
                from celery import Celery

                raw = Celery("raw", broker=redis_url, backend=backend)
                out[name] = _timed_noops(lambda i: raw.send_task("raw.noop", args=[i]), n)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    out["ratio_round_trip_medq_over_raw"] = round(out["medq"]["round_trip_ms"] / out["raw_celery"]["round_trip_ms"], 3)
    click.echo(json.dumps(out, indent=2))


@bench.command("train")
@click.option("--images", default=64, show_default=True)
@click.option("--image-size", default=224, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--steps", default=24, show_default=True, help="measured steps (after warm-up)")
def bench_train(images: int, image_size: int, batch_size: int, steps: int) -> None:
    """Images/s of one ensemble member vs a bare PyTorch loop, same model, batch and data."""
    from common.landmarks.bench import bare_loop_throughput, member_throughput
    from common.landmarks.synth import synth_chest
    from common.specs import EnsembleSpec

    data_dir = Path(tempfile.mkdtemp(prefix="medq-bench-")) / "data"
    synth_chest(data_dir, n=images, seed=1)
    spec = EnsembleSpec(image_size=image_size, batch_size=batch_size, epochs_head=0, epochs=1)
    bare = bare_loop_throughput(spec, data_dir, steps)
    member = member_throughput(spec, data_dir, steps)
    click.echo(json.dumps({"image_size": image_size, "batch_size": batch_size, "bare_images_per_s": round(bare, 2),
                           "member_images_per_s": round(member, 2), "ratio": round(member / bare, 3)}, indent=2))


@bench.command("ensemble")
@click.option("--seeds", default=4, show_default=True)
@click.option("--images", default=80, show_default=True)
@click.option("--image-size", default=96, show_default=True)
@click.option("--epochs", default=3, show_default=True)
def bench_ensemble(seeds: int, images: int, image_size: int, epochs: int) -> None:
    """Wall time of an N-seed ensemble on 1 worker vs 2 workers (embedded broker unless set)."""
    from common.landmarks.synth import synth_chest
    from common.settings import load_settings
    from common.specs import EnsembleSpec
    from common.store import open_store
    from scheduler.local import local_workers, wait_for_job
    from scheduler.submit import submit_ensemble

    root = Path(tempfile.mkdtemp(prefix="medq-bench-"))
    data_dir = root / "data"
    synth_chest(data_dir, n=images, seed=1)
    spec = EnsembleSpec(epochs_head=1, epochs=epochs - 1, image_size=image_size, batch_size=16)
    out = {}
    for n_workers in (1, 2):
        env = {"MEDQ_HOME": str(root / f"home{n_workers}")}
        settings = load_settings({**os.environ, **env})
        with local_workers(n_workers, root / f"logs{n_workers}", env):
            start = time.perf_counter()
            job_id = submit_ensemble(settings, spec, data_dir, list(range(seeds)))
            job = wait_for_job(open_store(settings), job_id, timeout=3600)
            out[f"{n_workers}_worker_s"] = round(time.perf_counter() - start, 1)
            out[f"{n_workers}_worker_state"] = job["state"]
    out["speedup"] = round(out["1_worker_s"] / out["2_worker_s"], 2)
    click.echo(json.dumps({"seeds": seeds, "images": images, "image_size": image_size, "epochs": epochs, **out},
                          indent=2))
