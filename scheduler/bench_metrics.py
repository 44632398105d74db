"""`medq bench metrics`: what Prometheus scrapes cost a working worker. One CPU worker launcher
serves MEDQ_METRICS_PORT while it runs bulk inference jobs of the same archive, alternately
left alone and scraped ``--scrapes`` times over the job (spread evenly over the quiet run's
duration), in the same run; the ratio of studies per second is the cost. Also each scrape's
latency and the launcher's CPU seconds per scrape (from its own process_cpu_seconds_total)."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import click


@click.command("metrics")
@click.option("--images", default=800, show_default=True)
@click.option("--image-size", default=128, show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--scrapes", default=200, show_default=True, help="scrapes during each scraped job")
@click.option("--rounds", default=3, show_default=True, help="pairs of jobs (quiet, scraped)")
def bench_metrics(images: int, image_size: int, batch_size: int, scrapes: int, rounds: int) -> None:
    """Worker throughput (bulk inference, studies/s) left alone vs scraped --scrapes times per job."""
    from medq.scheduler.local import LocalPool

    root = Path(tempfile.mkdtemp(prefix="medq-bench-metrics-"))
    click.echo(json.dumps(run(root, images, image_size, batch_size, scrapes, rounds, LocalPool(cpu=1)), indent=2))


def _scrape(port: int) -> tuple[float, str]:
    start = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return time.perf_counter() - start, text


def _launcher_cpu(port: int) -> float:
    for line in _scrape(port)[1].splitlines():
        if line.startswith("process_cpu_seconds_total "):
            return float(line.split()[1])
    raise RuntimeError("the endpoint has no process_cpu_seconds_total")


def run(root: Path, images: int, image_size: int, batch_size: int, scrapes: int, rounds: int, pool) -> dict:
    from medq.common.families.chest.synth import synth_chest
    from medq.common.settings import load_settings
    from medq.common.store import open_store
    from medq.scheduler.bench import _untrained_checkpoint
    from medq.scheduler.infer_plan import submit_infer
    from medq.scheduler.local import local_workers, wait_for_job

    synth_chest(root / "data", n=images, seed=2)
    archive = root / "data" / "images"
    checkpoint = _untrained_checkpoint(root / "best.pt", image_size)
    port = _free_port()
    env = {"MEDQ_HOME": str(root / "home"), "MEDQ_METRICS_PORT": str(port)}
    settings = load_settings({**os.environ, **env})
    quiet: list[float] = []
    scraped: list[float] = []
    latencies: list[float] = []
    cpu_per_scrape: list[float] = []

    def job(scrape_every: float | None) -> tuple[float, float]:
        """(studies per second, the launcher's CPU seconds) of one job, scraped every ``scrape_every`` s."""
        stop = threading.Event()

        def scrape_loop() -> None:
            for _ in range(scrapes):
                if stop.wait(scrape_every):
                    return
                latencies.append(_scrape(port)[0])

        cpu_before = _launcher_cpu(port)
        thread = threading.Thread(target=scrape_loop, daemon=True) if scrape_every else None
        start = time.perf_counter()
        job_id, _, _ = submit_infer(settings, archive, str(checkpoint), chunk=images, batch_size=batch_size,
                                    loader_workers=0)
        if thread:
            thread.start()
        done = wait_for_job(open_store(settings), job_id, timeout=3600, poll=0.2)
        seconds = time.perf_counter() - start
        stop.set()
        if thread:
            thread.join()
        if done["state"] != "succeeded":
            raise click.ClickException(f"bench job {job_id} ended {done['state']}")
        return images / seconds, _launcher_cpu(port) - cpu_before

    with local_workers(pool, root / "logs", env, ready_timeout=300):
        _wait_for(port)
        job(None)  # warm-up: the model loaded, the file cache filled
        for _ in range(rounds):
            rate, cpu_quiet = job(None)
            quiet.append(rate)
            before = len(latencies)
            rate, cpu_scraped = job(images / quiet[-1] / (scrapes + 1))
            scraped.append(rate)
            done_scrapes = len(latencies) - before
            cpu_per_scrape.append(max(0.0, cpu_scraped - cpu_quiet) / max(1, done_scrapes))
    q, sc = statistics.mean(quiet), statistics.mean(scraped)
    return {
        "images": images, "image_size": image_size, "batch_size": batch_size, "scrapes_per_job": scrapes,
        "rounds": rounds, "device": "cpu",
        "quiet_studies_per_s": [round(r, 2) for r in quiet],
        "scraped_studies_per_s": [round(r, 2) for r in scraped],
        "ratio_scraped_vs_quiet": round(sc / q, 4),
        "throughput_cost_percent": round(100 * (1 - sc / q), 2),
        "scrape_ms_median": round(1000 * statistics.median(latencies), 1),
        "scrape_ms_max": round(1000 * max(latencies), 1),
        "launcher_cpu_ms_per_scrape": round(1000 * statistics.mean(cpu_per_scrape), 2),
    }


def _wait_for(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _scrape(port)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
