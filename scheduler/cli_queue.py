"""`medq queue`: per project and priority, what runs, what waits and why, and the expected start."""

from __future__ import annotations

import json
from datetime import datetime

import click


@click.command("queue")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def queue(as_json) -> None:
    """What runs and what waits, per project and priority, and why (quota, window, priority).

    The reasons are the admission dispatcher's: what its next round will do. Shares and quotas
    come from MEDQ_SHARES and MEDQ_QUOTAS."""
    from medq.common.settings import load_settings
    from medq.common.store.queue_view import queue_view
    from medq.scheduler.cli_support import reading_store

    settings = load_settings()
    view = queue_view(reading_store(), settings.sharing, settings.local_time(), settings.worker_ttl)
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    from rich.table import Table

    from medq.scheduler.render import console

    title = f"{view['workers']} live worker(s), {view['free']} free; windows in {settings.timezone_label}"
    if view["yielding"]:
        title += f", {view['yielding']} yielding"
    table = Table(title=title)
    for column in ("project", "priority", "running", "waiting", "next waits because", "expected start"):
        table.add_column(column, justify="right" if column in ("running", "waiting") else "left")
    for group in view["groups"]:
        nxt = group["next"] or {}
        waiting = str(group["waiting"]) + (f" (+{group['held']} held)" if group["held"] else "")
        running = str(group["running"]) + (f" ({group['borrowed']} borrowed)" if group["borrowed"] else "")
        table.add_row(group["project"], group["priority"], running, waiting, nxt.get("why", ""),
                      _when(nxt.get("expected_start")))
    out = console()
    out.print(table)
    limits = [f"shares {_pairs(view['shares'])}" if view["shares"] else "equal shares",
              f"quotas {_pairs(view['quotas'])}" if view["quotas"] else "no quotas"]
    out.print(", ".join(limits), markup=False)


def _pairs(values: dict) -> str:
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _when(iso: str | None) -> str:
    if not iso:
        return "unknown"
    at = datetime.fromisoformat(iso)
    local = at.astimezone() if at.tzinfo else at
    return local.strftime("%H:%M:%S")
