"""`medq watch`: one progress bar per member, read from the store, until the job ends."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from common.store.views import find_job

ENDED = {"succeeded", "failed", "cancelled"}


def _fraction(m: dict) -> float:
    if m["state"] == "succeeded":
        return 1.0
    total = max(1, m["total_epochs"])
    done = max(0, m["epoch"] - 1) + (m["step"] / m["steps_per_epoch"] if m["steps_per_epoch"] else 0)
    return min(1.0, done / total)


def _label(m: dict) -> str:
    text = f"seed {m['seed']} {m['state']}"
    if m["val_error_px"] is not None:
        text += f" val {m['val_error_px']:.2f}px"
    if m["worker"]:
        text += f" [{m['worker'].split('@')[0]}]"
    return text


def watch_job(store, job_id: str, console: Console, interval: float = 1.0) -> str:
    """Follow a job; returns its final state."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        bars: dict[int, int] = {}
        while True:
            job = find_job(store, job_id)
            for m in job["members"]:
                if m["seed"] not in bars:
                    bars[m["seed"]] = progress.add_task(_label(m), total=1.0)
                progress.update(bars[m["seed"]], completed=_fraction(m), description=_label(m))
            if job["state"] in ENDED:
                return job["state"]
            time.sleep(interval)
