"""Operations commands: `medq metrics` (Prometheus), `medq doctor` (is this host ready?),
`medq flower` (the Celery dashboard, authenticated). Never imports torch (doctor does, to see
what torch sees, unless --probe)."""

from __future__ import annotations

import json
import sys
import time

import click

from medq.common.secrets import scrub, secret_values
from medq.common.settings import load_settings


@click.command()
@click.option("--port", type=int, default=None, help="serve on this port until stopped (default: print once)")
@click.option("--address", default=None, help="address to bind (default MEDQ_METRICS_ADDRESS, 127.0.0.1)")
def metrics(port, address) -> None:
    """Prometheus metrics of the whole cluster from the store and the broker, and this host's
    GPUs: printed once in Prometheus's text format, or served with --port (for a host without
    workers; every `medq worker` serves them too on MEDQ_METRICS_PORT). /healthz and /readyz
    answer probes."""
    from prometheus_client import generate_latest

    from medq.common.store.db import Store
    from medq.tasks.app import app
    from medq.workers.metrics import MedqCollector, make_registry, serve

    import logging

    from medq.common.secrets import install_log_scrubbing

    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    install_log_scrubbing(settings)
    store = Store(settings.resolved_database_url)  # read only: never migrates
    collector = MedqCollector(store, app, settings, cluster=True)
    registry = make_registry(collector)
    if port is None:
        sys.stdout.write(scrub(generate_latest(registry).decode(), secret_values(settings)))
        return

    def ready():
        return (bool(collector.store_ok), "the store answered the last scrape" if collector.store_ok else
                "the store did not answer the last scrape" if collector.store_ok is False else "not scraped yet")

    if collector.store_ok is None:
        list(collector.collect())  # one read now, so that readiness means something before the first scrape
    server = serve(registry, address or settings.metrics_address, port, lambda: (True, "serving"), ready)
    click.echo(f"metrics on http://{server.server_address[0]}:{server.server_address[1]}/metrics", err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()


@click.command()
@click.option("--gpus", default="", help="GPU indices this host's workers will use (e.g. 0,1): each must be visible")
@click.option("--probe", is_flag=True, help="the fast checks a container probe runs (no torch import)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def doctor(gpus, probe, as_json) -> None:
    """Check this host: broker and store reachable, migrations current, artifact root writable
    and shared with the live workers' hosts, GPUs visible, versions. Exit 0 when nothing failed,
    1 otherwise (for probes and scripts). Secrets are masked."""
    from medq.scheduler.doctor import FAIL, run_checks
    from medq.tasks.app import app

    settings = load_settings()
    wanted = tuple(int(g) for g in gpus.split(",") if g.strip())
    checks = run_checks(settings, app, wanted, probe=probe)
    secrets = secret_values(settings)
    if as_json:
        click.echo(scrub(json.dumps([c.__dict__ for c in checks], indent=2), secrets))
    else:
        width = max(len(c.name) for c in checks)
        for check in checks:
            click.echo(scrub(f"{check.status:<4}  {check.name:<{width}}  {check.detail}", secrets))
    failed = [c.name for c in checks if c.status == FAIL]
    if failed and not as_json:
        click.echo(f"{len(failed)} check(s) failed: {', '.join(failed)}", err=True)
    sys.exit(1 if failed else 0)


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def flower(ctx) -> None:
    """Flower, the live Celery dashboard, on medq's broker (e.g. --port 5555; options go to
    Flower). Loopback unless --address says otherwise, and then only with authentication:
    MEDQ_FLOWER_BASIC_AUTH=user:password (or _FILE), or OAuth (MEDQ_FLOWER_AUTH, MEDQ_FLOWER_OAUTH2_*)."""
    import importlib.util
    import os

    from medq.scheduler.flower import check_exposure, flower_args, flower_env

    if importlib.util.find_spec("flower") is None:
        raise click.UsageError("Flower is not installed: pip install 'medq[flower]'")
    settings = load_settings()
    args = flower_args(ctx.args)
    env = {**os.environ, **flower_env(settings)}  # Flower's own FLOWER_* variables count too
    check_exposure(args, env)
    os.execvpe(sys.executable, [sys.executable, "-m", "celery", "-A", "medq.tasks.app", "flower", *args], env)


@click.command("config")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def config(as_json) -> None:
    """The settings in effect: each MEDQ_* variable's value (passwords masked) and where it
    came from (the environment, the MEDQ_CONFIG file, or the default). MEDQ_* variables that
    name no setting are listed as ignored.

    \b
    Examples:
      medq config
      MEDQ_CONFIG=/etc/medq.toml medq config --json
    """
    import os

    from medq.common.settings import PREFIX, source_of, unknown_variables

    settings = load_settings()
    rows = [{"variable": PREFIX + name.upper(), "value": str(value), "source": source_of(name)}
            for name, value in settings.shown().items()]
    ignored = unknown_variables(os.environ)
    if as_json:
        click.echo(json.dumps({"settings": rows, "ignored": ignored, "timezone": settings.timezone_label}, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    from medq.scheduler.render import console

    table = Table(title=f"medq settings (time windows in {escape(settings.timezone_label)})")
    for column in ("variable", "value", "source"):
        table.add_column(column)
    for row in rows:
        style = "" if row["source"] == "default" else "bold"
        table.add_row(row["variable"], escape(row["value"]), escape(row["source"]), style=style)
    console().print(table)


@click.command("gc")
@click.option("--older-than", "days", type=click.FloatRange(min=0), default=None,
              help="days since a job ended before its resume checkpoints go  [default: MEDQ_RETENTION_DAYS, else 7]")
@click.option("--orphans", is_flag=True, help="also job folders whose job is not in the store")
@click.option("--dry-run", is_flag=True, help="say what would go and what it would free; remove nothing")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def gc(days, orphans, dry_run, as_json) -> None:
    """Free the artifact root: the resume checkpoints (last.pt) of succeeded members of jobs
    that ended long enough ago, half-written files, and with --orphans the folders of jobs the
    store no longer has. Every weights file (best, top-k, init) stays, and so does whatever
    `medq resume` needs.

    \b
    Examples:
      medq gc --dry-run
      medq gc --older-than 30 --orphans
    """
    from datetime import timedelta

    from medq.common.store import retention
    from medq.scheduler.cli_support import current_store

    settings = load_settings()
    days = days if days is not None else (settings.retention_days or 7.0)
    store = current_store()
    removals = retention.plan(store, settings.artifacts, timedelta(days=days), orphans=orphans)
    freed = 0 if dry_run else retention.remove(store, removals)
    total = sum(r.bytes for r in removals)
    if as_json:
        click.echo(json.dumps({"artifacts": str(settings.artifacts), "dry_run": dry_run, "older_than_days": days,
                               "bytes": total if dry_run else freed,
                               "removed": [{"path": str(r.path), "bytes": r.bytes, "why": r.why} for r in removals]},
                              indent=2))
        return
    for r in removals:
        click.echo(f"{'would remove' if dry_run else 'removed'} {retention.human(r.bytes):>10}  {r.path}  ({r.why})")
    verb = "would free" if dry_run else "freed"
    click.echo(f"{verb} {retention.human(total if dry_run else freed)} in {len(removals)} item(s) under "
               f"{settings.artifacts} (jobs ended over {days:g} days ago)")
