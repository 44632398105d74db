"""Tables and progress bars for people (rich); --json output for scripts."""

from __future__ import annotations

import re
import sys
from typing import Any

from rich.console import Console
from rich import box
from rich.markup import escape
from rich.table import Table

from medq.common.specs import REPORT_KIND

STATE_STYLE = {"queued": "dim", "running": "cyan", "succeeded": "green", "failed": "red", "cancelled": "yellow"}


def _fmt(value: Any, digits: int = 2) -> str:
    """A cell. Text from the store (errors, names, folders) is escaped: rich would read a
    ``[`` in it as markup (a data folder named ``br[/x]`` made ``medq results`` crash)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))


def console(stderr: bool = False) -> Console:
    """A console; 120 columns when the output is not a terminal (a log, a pipe)."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 120)


def _worker(name: str | None) -> str:
    """The worker's node name; one of an older medq, which carried its launcher's pid
    ('cpu1-12345@host'), shown as today's ('cpu1@host')."""
    if not name:
        return "-"
    node, _, host = name.partition("@")
    return escape(f"{re.sub(r'-[0-9]+$', '', node)}@{host}" if host else node)


def _state(state: str) -> str:
    return f"[{STATE_STYLE.get(state, '')}]{state}[/]"


def jobs_table(jobs: list[dict]) -> Table:
    table = Table(title="jobs", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("job", "kind", "state", "members", "created", "error"):
        table.add_column(col)
    for job in jobs:
        counts: dict[str, int] = {}
        for m in job.get("members", []):
            counts[m["state"]] = counts.get(m["state"], 0) + 1
        members = " ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        table.add_row(job["job_id"], job["kind"], _state(job["state"]), members, (job["created_at"] or "")[:19],
                      escape((job["error"] or "")[:60]))
    return table


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None], width: int = 16) -> str:
    """The last ``width`` values as block characters, lowest to highest (a gap for None)."""
    values = values[-width:]
    known = [v for v in values if v is not None]
    if not known:
        return ""
    low, high = min(known), max(known)
    scale = (len(SPARKS) - 1) / (high - low) if high > low else 0
    return "".join(" " if v is None else SPARKS[round((v - low) * scale)] for v in values)


def members_table(job: dict, curves: dict[int, list[float | None]] | None = None) -> Table:
    """``curves``: seed -> its validation loss per finished epoch (drawn as a sparkline)."""
    title = f"job {job['job_id']} ({job['kind']}): {job['state']}"
    if job.get("project"):
        title += f" · project {job['project']}" + (f", {job['priority']} priority" if job.get("priority") else "")
    if job.get("cancel_requested") and job["state"] == "running":
        title += " (cancelling)"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    metric = _family(job["kind"]).member_metric  # the family's validation figure: px, Dice, ...
    columns = ("seed", "state", "epoch", "loss", "val loss", *(("val loss curve",) if curves else ()), metric.label,
               "img/s", "try", *(("yielded",) if any(m.get("preemptions") for m in job["members"]) else ()),
               "worker", "device")
    for col in columns:
        table.add_column(col, justify="left" if col in ("state", "worker", "device", "val loss curve") else "right",
                         no_wrap=True)
    for m in job["members"]:
        epoch = f"{m['epoch']}/{m['total_epochs']}"
        if m["state"] == "running" and m["phase"] == "head":
            epoch += " head"
        spark = (sparkline(curves.get(m["seed"], [])),) if curves else ()
        yielded = (str(m.get("preemptions") or 0),) if "yielded" in columns else ()
        state = _state(m["state"]) + (" (yielding)" if m.get("yielding") and m["state"] == "running" else "")
        table.add_row(str(m["seed"]), state, epoch, _fmt(m["train_loss"], 4), _fmt(m["val_loss"], 4),
                      *spark, _fmt(m.get(metric.column), metric.digits), _fmt(m["images_per_s"], 1), str(m["attempt"]),
                      *yielded, _worker(m["worker"]), _fmt(m["device"]))
    return table


def _family(kind: str):
    from medq.common.families.registry import family

    return family(kind)


def result_table(data) -> Table:
    """A family's result table (plain data, ``common/families/base.py``) drawn with rich."""
    table = Table(title=escape(data.title), box=box.SIMPLE_HEAD, pad_edge=False)
    for column in data.columns:
        table.add_column(escape(column.label), justify="right" if column.numeric else "left")
    for row in data.rows:
        cells = [_state(c) if column.state and c else _fmt(c, column.digits)
                 for column, c in zip(data.columns, row.cells)]
        table.add_row(*cells, style="bold" if row.bold else None, end_section=row.end_section)
    return table


NOTE_STYLE = {"warn": "yellow", "error": "red"}


def print_results(console: Console, results: dict) -> None:
    """`medq results JOB`: the sections the job's family draws, or "no results yet"."""
    if results.get("kind") == REPORT_KIND:
        _print_report(console, results)
        return
    sections = _family(results["kind"]).result_sections(results) if results.get("kind") else []
    if not sections:
        console.print(f"job {results['job_id']}: {results['state']}; no results yet")
    for section in sections:
        if section.table is not None:
            console.print(result_table(section.table))
        if section.note is not None:
            style = NOTE_STYLE.get(section.style or "")
            console.print(f"[{style}]{escape(section.note)}[/]" if style else escape(section.note))
    if results.get("error"):
        console.print(f"[red]{escape(results['error'])}[/]")


def _print_report(console: Console, results: dict) -> None:
    if results.get("html"):
        console.print(f"report {results['job_id']} of job(s) {', '.join(results.get('jobs', []))}, "
                      f"as of {results.get('as_of', '?')}:")
        console.print(f"  html  {escape(results['html'])}")
        if results.get("pdf"):
            console.print(f"  pdf   {escape(results['pdf'])}")
        if results.get("pdf_error"):
            console.print(f"[red]  no pdf: {escape(results['pdf_error'])}[/]")
        if results.get("running"):
            console.print(f"[yellow]rendered while {', '.join(results['running'])} still ran[/]")
    else:
        console.print(f"report {results['job_id']}: {results['state']}; not rendered yet")
    if results.get("error"):
        console.print(f"[red]{escape(results['error'])}[/]")
