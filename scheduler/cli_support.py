"""What the `medq` commands share: the store, job lookup, following a job, requeueing a
training job. Never imports torch."""

from __future__ import annotations

import sys

import click

from medq.common.secrets import scrub, secret_values
from medq.common.settings import load_settings


def server_problem(exc: BaseException) -> str | None:
    """A sentence for an unreachable or refusing server (which one, at which address, why),
    with every password masked; None for any other error."""
    import redis.exceptions
    from kombu.exceptions import OperationalError as BrokerError
    from sqlalchemy.exc import InterfaceError, OperationalError as DatabaseError

    settings = load_settings()
    if isinstance(exc, (DatabaseError, InterfaceError)):
        what, url, cause = "database", settings.describe()["database"], getattr(exc, "orig", None) or exc
    elif isinstance(exc, (BrokerError, redis.exceptions.RedisError, ConnectionError)):
        what, url, cause = "broker", settings.describe()["broker"], exc
    else:
        return None
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    reason = scrub(reason, secret_values(settings))
    return f"cannot use the {what} at {url}: {reason}"


def current_store():
    """The store for a command that writes (submit, cancel, resume): migrated on first use."""
    from medq.common.store import open_store

    return open_store(load_settings())


def reading_store():
    """The store for a command that only reads (status, results, watch, queue): never migrated.
    A schema that is not this medq's newest is refused naming `medq db upgrade` (exit code 2); a
    new user's embedded store is made (see open_store)."""
    from medq.common.store import open_store

    return open_store(load_settings(), migrate=False)


def resolve_job(store, job: str) -> str:
    from medq.common.store.views import find_job

    found = find_job(store, job)
    if found is None:
        raise click.ClickException(f"no job {job!r} (or the prefix matches several)")
    return found["job_id"]


def print_infer_summary(store, job_id: str, out=None) -> None:
    """`medq status JOB` of an inference job, to ``out`` (standard output by default)."""
    from medq.common.store.views import infer_view
    from medq.scheduler.infer_views import summary_lines

    for line in summary_lines(infer_view(store, job_id), load_settings().timezone_label):
        click.echo(line, file=out)


def resume_training(job: str, kind: str | None = None) -> str:
    """Requeue a training job's failed and cancelled members; progress on standard error."""
    from medq.common.store.jobs import resume_training_job
    from medq.common.store.views import find_job
    store = current_store()
    job_id = resolve_job(store, job)
    if kind and find_job(store, job_id)["kind"] != kind:
        raise click.UsageError(f"job {job_id} is not an {kind} job")
    members = resume_training_job(store, job_id)  # they wait for the launchers' admission rounds
    click.echo(f"job {job_id}: {len(members)} member(s) queued again, each from its last checkpoint"
               if members else f"job {job_id}: nothing to resume (still running, or every member succeeded)", err=True)
    return job_id


def wait_and_report(job_id: str) -> int:
    from medq.scheduler.render import console, print_results
    from medq.scheduler.watch import watch_job

    store = current_store()
    out = console()
    state = watch_job(store, job_id, console(stderr=True))
    from medq.common.store.views import job_results

    results = job_results(store, job_id)
    print_results(out, results)
    return 0 if state == "succeeded" and not results.get("pdf_error") else 1


def announce(job_id: str, wait: bool) -> None:
    """Print a submitted job's id; with ``wait``, follow it and exit 0 only if it succeeded."""
    click.echo(job_id)
    if wait:
        sys.exit(wait_and_report(job_id))


def resume_and_announce(job: str, kind: str, wait: bool) -> None:
    """``medq submit KIND --resume JOB``: the job's failed or cancelled members queued again."""
    announce(resume_training(job, kind), wait)


def complete_job(ctx, param, incomplete: str):
    """Shell completion of job ids (`medq status 3f<TAB>`): the newest jobs whose id starts so,
    with their kind and state as help. Quiet (no warning lands on the command line) and
    harmless: nothing when the store cannot be read, and no store is made or migrated."""
    import logging

    from click.shell_completion import CompletionItem

    quiet = logging.getLogger("medq.settings")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        from medq.common.store.db import Store, missing_sqlite_file
        from medq.common.store.views import find_jobs_by_prefix

        url = load_settings().resolved_database_url
        if missing_sqlite_file(url):
            return []
        store = Store(url)
        try:
            jobs = find_jobs_by_prefix(store, incomplete, limit=100)
        finally:
            store.dispose()
    except Exception:
        return []
    finally:
        quiet.level = level
    return [CompletionItem(j["job_id"], help=f"{j['kind']} {j['state']}") for j in jobs]
