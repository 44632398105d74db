"""`medq watch`: a job's progress, read from the store, until the job ends.

One model of what to show (``rows``: the whole job, then each member, or the studies of an
inference job) drawn two ways: rich's live bars with its own ETA and speed columns on a
terminal, and plain time-stamped lines every ``every`` seconds (and whenever a state changes)
when stdout is a log or a pipe, so an overnight cron log shows how the night went. Either ends
with one line saying how the job ended.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from medq.common.specs import INFER_KIND
from medq.common.store.views import find_job, infer_view

ENDED = {"succeeded", "failed", "cancelled"}
JOB = "job"


@dataclass(frozen=True)
class Row:
    """One bar: the whole job, a member, or an inference job's studies."""

    key: str
    label: str  # what it is: "job 3f2a…", "seed 2", "cephalometric HRNet", "studies"
    detail: str  # its state and latest figures, worker
    completed: float
    total: float
    unit: str  # what completed counts: "steps", "studies"
    started_at: datetime | None  # from the store: elapsed time runs from here, not from watch's start
    state: str


# -- the model: what the store says now ------------------------------------------------------
def rows(store, job_id: str, unit: str | None = None) -> tuple[dict, list[Row]]:
    """The job, and its rows: the whole job first. Pure reads of the store. ``unit``: the
    validation figure's for this job (``_unit``), else its family's."""
    job = find_job(store, job_id)
    if job["kind"] == INFER_KIND:
        return job, _infer_rows(store, job)
    family = _family(job["kind"])
    metric = family.member_metric if family else None
    unit = unit if unit is not None else (metric.unit if metric else "")
    single = len(job["members"]) == 1
    title = family.title if family else job["kind"]
    members = [_member_row(m, metric, unit, title if single else f"seed {m['seed']}") for m in job["members"]]
    done = sum(r.completed for r in members)
    total = sum(r.total for r in members) or 1.0
    states = _count(m["state"] for m in job["members"])
    started = _parse(job["started_at"])
    if single:  # a single-model job is its one member: one row, labelled by its family, not "seed 0"
        return job, [replace(members[0], key=JOB, state=job["state"], started_at=members[0].started_at or started)]
    whole = Row(JOB, f"job {job['job_id'][:8]}", f"{job['state']}: {states}", done, total, "steps", started,
                job["state"])
    return job, [whole, *members]


def _member_row(m: dict, metric, unit: str, label: str) -> Row:
    steps = max(1, m["steps_per_epoch"] or 1)
    total = max(1, m["total_epochs"]) * steps
    if m["state"] == "succeeded":
        done = total
    else:
        done = max(0, m["epoch"] - 1) * steps + (m["step"] if m["steps_per_epoch"] else 0)
    detail = f"{m['state']} epoch {m['epoch']}/{m['total_epochs']}"
    value = m.get(metric.column) if metric else None
    if value is not None:
        figure = metric.label.removesuffix(f" {unit}") if unit else metric.label
        detail += f" {figure} {value:.{metric.digits}f}" + (f" {unit}" if unit else "")
    if m.get("images_per_s"):
        detail += f" {m['images_per_s']:.0f} img/s"
    if m.get("yielding"):
        detail += " (yielding)"
    if m["worker"]:
        detail += f" [{m['worker'].split('@')[0]}]"
    return Row(f"seed {m['seed']}", label, detail, float(min(done, total)), float(total), "steps",
               _parse(m["started_at"]), m["state"])


def _infer_rows(store, job: dict) -> list[Row]:
    view = infer_view(store, job["job_id"])
    s = view["studies"]
    total = max(1, s["total"])
    detail = (f"{job['state']}: {s['done']} done, {s['failed']} failed, {s['skipped']} skipped, "
              f"{s['remaining']} left")
    if view["studies_per_s"]:
        detail += f" ({view['studies_per_s']:.1f} studies/s)"
    return [Row(JOB, f"job {job['job_id'][:8]}", detail, float(total - s["remaining"]), float(total), "studies",
                _parse(job["started_at"]), job["state"])]


def _family(kind: str):
    """The job kind's family, or None for a plug-in family this host does not load (no figure
    then, still a bar)."""
    from medq.common.families.registry import family

    try:
        return family(kind)
    except Exception:
        return None


def _count(states) -> str:
    return ", ".join(f"{n} {state}" for state, n in Counter(states).items())


def _parse(iso: str | None) -> datetime | None:
    if not iso:
        return None
    at = datetime.fromisoformat(iso)
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)  # the store keeps UTC


def duration(seconds: float) -> str:
    """'1:02:03'."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def elapsed(started_at: datetime | None, now: datetime | None = None) -> str:
    """The time since ``started_at`` ('-:--:--' before it started)."""
    if started_at is None:
        return "-:--:--"
    return duration(((now or datetime.now(timezone.utc)) - started_at).total_seconds())


def final_line(job: dict, rows_now: list[Row]) -> str:
    """How the job ended, in one line: its state, how long it ran, what its members or studies did."""
    whole = rows_now[0]
    took = elapsed(whole.started_at, _parse(job.get("finished_at"))) if whole.started_at else "-"
    line = f"job {job['job_id']} {job['state']} after {took}: {whole.detail.split(': ', 1)[-1]}"
    if job.get("error"):
        line += f"; {job['error']}"
    return line


# -- drawing it ------------------------------------------------------------------------------
class SinceStartColumn(ProgressColumn):
    """Time since the member (or job) started, as the store says, not since watch started."""

    def render(self, task) -> Text:
        return Text(elapsed(task.fields.get("started_at")), style="progress.elapsed")


class RateColumn(ProgressColumn):
    """Rich's own speed estimate of the bar, in its unit per second."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} {task.fields.get('unit', '')}/s" if speed else "", style="progress.data.speed")


def new_progress(console: Console) -> Progress:
    # markup=False: names from the store ("[cpu0]", a folder's brackets) are text, never rich markup
    return Progress(TextColumn("{task.fields[label]}", markup=False), BarColumn(), TaskProgressColumn(),
                    SinceStartColumn(), TimeRemainingColumn(), RateColumn(),
                    TextColumn("{task.fields[detail]}", markup=False),
                    console=console, transient=False, disable=not console.is_terminal)


def _update(progress: Progress, bars: dict[str, int], rows_now: list[Row]) -> None:
    for row in rows_now:
        fields = {"label": row.label, "detail": row.detail, "started_at": row.started_at,
                  "unit": row.unit}
        if row.key not in bars:
            bars[row.key] = progress.add_task("", total=row.total, completed=row.completed, **fields)
        progress.update(bars[row.key], completed=row.completed, total=row.total, **fields)


def plain_lines(progress: Progress, bars: dict[str, int], now: datetime | None = None) -> list[str]:
    """The bars as text for a log: a time-stamped line per bar with percent, elapsed, ETA, rate."""
    now = now or datetime.now(timezone.utc)
    stamp = now.astimezone().isoformat(timespec="seconds")
    lines = []
    for key, task_id in bars.items():
        task = progress.tasks[task_id]
        f = task.fields
        pct = 100.0 * task.completed / task.total if task.total else 0.0
        eta = task.time_remaining
        speed = task.finished_speed or task.speed
        parts = [f"{stamp} {f['label']}", f"{pct:3.0f}%", f"elapsed {elapsed(f['started_at'], now)}"]
        if eta is not None and not task.finished:
            parts.append(f"eta {duration(eta)}")
        if speed:
            parts.append(f"{speed:.1f} {f['unit']}/s")
        lines.append(("" if key == JOB else "  ") + " ".join(parts) + f" {f['detail']}")
    return lines


def watch_job(store, job_id: str, console: Console, interval: float = 1.0, every: float = 60.0) -> str:
    """Follow a job until it ends; returns its final state. On a terminal: live bars; otherwise
    plain lines every ``every`` seconds and at every change of state."""
    unit = _unit(store, job_id)
    progress = new_progress(console)
    bars: dict[str, int] = {}
    last_print, last_states = 0.0, None
    with progress:
        while True:
            job, rows_now = rows(store, job_id, unit)
            _update(progress, bars, rows_now)
            states = tuple(r.state for r in rows_now) + tuple(m["state"] for m in job.get("members", []))
            ended = job["state"] in ENDED
            if not console.is_terminal and (states != last_states or time.monotonic() - last_print >= every or ended):
                for line in plain_lines(progress, bars):
                    console.print(line, markup=False, highlight=False, soft_wrap=True)
                last_print, last_states = time.monotonic(), states
            if ended:
                break
            time.sleep(interval)
    console.print(final_line(job, rows_now), markup=False, highlight=False, soft_wrap=True)
    return job["state"]


def _unit(store, job_id: str) -> str | None:
    """The unit of the family's validation figure for this job's data (mm or px for HRNet)."""
    from medq.common.store.models import Job

    with store.read_session() as s:  # watch only reads: no write lock on SQLite
        job = s.get(Job, job_id)
        kind, plan = job.kind, dict(job.plan or {})
    family = _family(kind) if kind != INFER_KIND else None
    return family.member_unit(plan) if family else None
