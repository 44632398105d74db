"""`medq watch`: one progress bar per member, read from the store, until the job ends."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from medq.common.specs import INFER_KIND
from medq.common.store.views import find_job, infer_view

ENDED = {"succeeded", "failed", "cancelled"}


def _fraction(m: dict) -> float:
    if m["state"] == "succeeded":
        return 1.0
    total = max(1, m["total_epochs"])
    done = max(0, m["epoch"] - 1) + (m["step"] / m["steps_per_epoch"] if m["steps_per_epoch"] else 0)
    return min(1.0, done / total)


def _label(m: dict) -> str:
    text = f"seed {m['seed']} {m['state']}"
    if m.get("val_score") is not None:
        text += f" val Dice {m['val_score']:.3f}"
    elif m["val_error_px"] is not None:
        text += f" val {m['val_error_px']:.2f}px"
    if m["worker"]:
        text += f" \\[{escape(m['worker'].split('@')[0])}]"
    return text


def watch_job(store, job_id: str, console: Console, interval: float = 1.0) -> str:
    """Follow a job; returns its final state."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        bars: dict[int, int] = {}
        while True:
            job = find_job(store, job_id)
            if job["kind"] == INFER_KIND:
                _infer_bar(store, job_id, progress, bars)
            for m in job["members"]:
                if m["seed"] not in bars:
                    bars[m["seed"]] = progress.add_task(_label(m), total=1.0)
                progress.update(bars[m["seed"]], completed=_fraction(m), description=_label(m))
            if job["state"] in ENDED:
                return job["state"]
            time.sleep(interval)


def _infer_bar(store, job_id: str, progress: Progress, bars: dict[int, int]) -> None:
    view = infer_view(store, job_id)
    s = view["studies"]
    total = max(1, s["total"])
    text = f"{s['done']} done, {s['failed']} failed, {s['skipped']} skipped, {s['remaining']} left"
    if view["studies_per_s"]:
        text += f" ({view['studies_per_s']:.1f}/s)"
    if -1 not in bars:
        bars[-1] = progress.add_task(text, total=total)
    progress.update(bars[-1], completed=total - s["remaining"], total=total, description=text)
