"""`medq`: submit jobs, watch them, read results, run workers. Never imports torch."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click


from medq.common.specs import INFER_KIND, REPORT_KIND
from medq.common.errors import MedqError
from medq.common.settings import load_settings
from medq.scheduler.cli_support import (complete_job, current_store, print_infer_summary, reading_store, resolve_job,
                                         resume_training, server_problem)

ENDED = {"succeeded", "failed", "cancelled"}


class MedqGroup(click.Group):
    """One error style for medq's errors and click's alike: ``error: ...`` on stderr and exit
    code 2 (a usage error also shows the usage line first); a server that cannot be reached (or
    refuses the password) gets a message naming it, password masked, and exit code 3. No
    traceback for any of them."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Abort as exc:  # a question declined (1), or Ctrl-C (130, as shells count it)
            click.echo("aborted", err=True)
            sys.exit(130 if isinstance(exc.__context__, KeyboardInterrupt) else 1)
        except click.ClickException as exc:
            if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):  # `medq`, `medq db`: the help
                exc.show()
                sys.exit(exc.exit_code)
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                click.echo(f"{exc.ctx.get_usage()}\nTry '{exc.ctx.command_path} --help' for help.\n", err=True)
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(2)
        sys.exit(code if isinstance(code, int) else 0)  # ctx.exit(n) comes back as n

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MedqError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, BrokenPipeError):
            raise  # a closed pipe (`| head`): click's own quiet exit, not a broker that went away
        except Exception as exc:
            problem = server_problem(exc)
            if problem is None:
                raise
            click.echo(f"error: {problem}", err=True)
            sys.exit(3)


@click.group(cls=MedqGroup)
@click.version_option(package_name="medq")
def main() -> None:
    """medq: a job queue for training and inference of medical-imaging models.

    With no server configured it runs on this machine (SQLite broker and store under
    MEDQ_HOME). Set MEDQ_BROKER_URL=redis://... and MEDQ_DATABASE_URL=postgresql+psycopg://...
    to run distributed.
    """


@main.command()
@click.argument("job", shell_complete=complete_job)
def resume(job) -> None:
    """Go on with a job: an inference job's remaining studies now (lifting its window, retrying
    failed chunks); a training job's failed or cancelled members from their last checkpoints."""

    from medq.common.store import inference
    from medq.common.store.views import find_job
    from medq.tasks.app import app
    from medq.tasks.send import send_chunk

    store = current_store()
    job_id = resolve_job(store, job)
    if find_job(store, job_id)["kind"] != INFER_KIND:
        resume_training(job_id)
        return
    reopened = inference.resume_job(store, job_id)
    sent = inference.dispatch_chunks(store, load_settings().local_time(), lambda cid, prio: send_chunk(app, cid, prio),
                                     job_id=job_id)
    click.echo(f"job {job_id}: {reopened} chunk(s) reopened, {sent} queued")


# -- status, watch, results, cancel ----------------------------------------------------------
@main.command()
@click.argument("job", required=False, shell_complete=complete_job)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--limit", default=20, show_default=True)
def status(job, as_json, limit) -> None:
    """Jobs, or one job's members: state, epoch, loss, validation error, worker, device."""
    from medq.common.store.views import find_job, list_jobs

    store = reading_store()
    if job:
        view = find_job(store, job)
        if view is None:
            raise click.ClickException(f"no job {job!r}")
        if view["kind"] == INFER_KIND:
            from medq.common.store.views import infer_view

            view = infer_view(store, view["job_id"])
            if as_json:
                click.echo(json.dumps(view, indent=2))
            else:
                print_infer_summary(store, view["job_id"])
            return
        if as_json:
            click.echo(json.dumps(view, indent=2))
            return
        if view["kind"] == REPORT_KIND:  # no members: where its page is, or why not yet
            from medq.common.store.views import job_results
            from medq.scheduler.render import console, print_results

            print_results(console(), job_results(store, view["job_id"]))
            return
        from medq.common.store.history import validation_curves
        from medq.scheduler.render import console, members_table

        with store.session() as s:
            curves = validation_curves(s, view["job_id"])
        console().print(members_table(view, curves or None))
        if view["error"]:
            click.echo(f"error: {view['error']}")
        return
    views = list_jobs(store, limit)
    if as_json:
        click.echo(json.dumps(views, indent=2))
        return
    from medq.scheduler.render import console, jobs_table

    console().print(jobs_table(views))


@main.command()
@click.argument("job", shell_complete=complete_job)
@click.option("--every", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="when stdout is not a terminal: seconds between progress lines (also one at each change of state)")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.1),
              help="seconds between reads of the store")
def watch(job, every, interval) -> None:
    """Follow a job until it ends: on a terminal, a bar for the whole job and one per member
    (elapsed time since it started, ETA, speed); in a log or a pipe, time-stamped lines every
    --every seconds. Ends with a line saying how the job ended; exit code 0 if it succeeded.

    \b
    Examples:
      medq watch 3f2a
      medq watch 3f2a --every 300 >> /var/log/medq-night.log
    """
    from medq.scheduler.render import console
    from medq.scheduler.watch import watch_job

    store = reading_store()
    state = watch_job(store, resolve_job(store, job), console(), interval=interval, every=every)
    sys.exit(0 if state == "succeeded" else 1)


@main.command()
@click.argument("job", shell_complete=complete_job)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "jsonl", "csv", "parquet"]), default=None,
              help="table (default), json (the whole record), or one record per study (inference) or per "
                   "member, combination and evaluation set (training): jsonl, csv, parquet (needs pyarrow)")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="write to this file instead of standard output (needed for parquet)")
@click.option("--json", "as_json", is_flag=True, help="the same as --format json")
@click.option("--csv", "as_csv", is_flag=True, help="the same as --format csv")
@click.option("--failed", is_flag=True, help="inference: each failed or skipped study with its reason, and each whose outputs the PACS did not accept")
def results(job, fmt, output, as_json, as_csv, failed) -> None:
    """Metrics of a training job; per-study records of an inference job.

    \b
    Examples:
      medq results 3f2a                       # tables
      medq results 3f2a --format csv > metrics.csv
      medq results 7c1d --format jsonl | jq .qc_reasons
      medq results 7c1d --failed              # the studies that failed, with why
      medq results 7c1d --format parquet -o studies.parquet
    """
    from medq.common.store.views import job_results
    from medq.scheduler.results_out import check_format

    chosen = [f for f, on in ((fmt, fmt is not None), ("json", as_json), ("csv", as_csv)) if on]
    if len(set(chosen)) > 1:
        raise click.UsageError(f"give one format, not {' and '.join(sorted(set(chosen)))}")
    fmt = chosen[0] if chosen else ("csv" if failed else "table")
    if fmt == "parquet" and output is None:
        raise click.UsageError("--format parquet writes a binary file: give -o FILE")
    store = reading_store()
    job_id = resolve_job(store, job)
    view = job_results(store, job_id)
    check_format(view["kind"], fmt, failed, INFER_KIND, REPORT_KIND)

    def write(out) -> None:
        if view["kind"] == INFER_KIND:
            _infer_results(store, job_id, fmt, failed, out)
        elif fmt == "json":
            out.write(json.dumps(view, indent=2) + "\n")
        elif fmt == "table":
            from medq.scheduler.render import console, print_results

            print_results(console() if output is None else _file_console(out), view)
        else:
            from medq.scheduler.results_out import training_records, write_records

            columns, records = training_records(view)
            write_records(fmt, columns, records, out)

    _emit(output, fmt == "parquet", write)


def _infer_results(store, job_id: str, fmt: str, failed: bool, out) -> None:
    from medq.common.store import inference
    from medq.common.store.views import infer_view

    if fmt == "json":
        out.write(json.dumps(infer_view(store, job_id), indent=2) + "\n")
        return
    if fmt == "table":  # (--failed with a table is refused by check_format)
        print_infer_summary(store, job_id, out)
        out.write(f"per-study rows: medq results {job_id} --format csv|jsonl|parquet; "
                  f"failures: medq results {job_id} --failed\n")
        return
    from medq.common.inference.study_paths import named_columns
    from medq.common.store.sends import sends_of
    from medq.scheduler.infer_views import job_family, study_rows
    from medq.scheduler.results_out import study_records, write_records

    spec, plan = inference.job_spec_and_plan(store, job_id)
    family = job_family(spec, plan)
    studies = inference.iter_unsuccessful(store, job_id) if failed else inference.iter_studies(store, job_id)
    columns = named_columns(family.inference.csv_columns(plan), plan)  # path, pseudonymised_path or path_withheld
    rows = study_rows(studies, family, lambda ids: sends_of(store, ids))
    write_records(fmt, columns, study_records(columns, rows), out)


def _file_console(out):
    from rich.console import Console

    return Console(file=out, width=120, no_color=True)


def _emit(path: str | None, binary: bool, write) -> None:
    """``write(stream)`` to standard output, or to the file given with -o: written whole, or
    not at all (a stopped export leaves no half file)."""
    if path is None:
        write(sys.stdout.buffer if binary else sys.stdout)
        return
    import io

    from medq.common.atomic_files import write_atomic

    def to_file(handle) -> None:
        if binary:
            write(handle)
            return
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        write(text)
        text.flush()
        text.detach()

    write_atomic(Path(path), to_file)


@main.command()
@click.argument("job", shell_complete=complete_job)
def cancel(job) -> None:
    """Stop a job: queued members now, running ones within an epoch. Survives restarts."""
    from medq.common.store import jobs

    store = current_store()
    row = jobs.request_cancel(store, resolve_job(store, job))
    click.echo(f"job {row.id}: cancellation requested" if row.cancel_requested else f"job {row.id} already {row.state}")


# -- workers ---------------------------------------------------------------------------------
@main.command()
@click.option("--gpus", default="", help="comma-separated GPU indices: one worker process each")
@click.option("--cpu", "cpu", default=0, help="number of CPU worker processes")
@click.option("--queues", default="", help="extra queues to consume, comma-separated")
@click.option("--logs", type=click.Path(path_type=Path), default=None, help="write each worker's log here")
@click.option("--name-prefix", default="", help="node names PREFIX-gpu0@host (default gpu0@host): only for a "
              "second launcher on the same host with the same slots")
def worker(gpus, cpu, queues, logs, name_prefix) -> None:
    """Start workers: one Celery process per GPU (CUDA_VISIBLE_DEVICES=k), or N CPU ones, named
    gpu0@host, cpu1@host: the same names every start."""
    import logging

    from medq.common.secrets import install_log_scrubbing
    from medq.tasks.app import app
    from medq.workers.plan import plan_workers
    from medq.workers.supervisor import Supervisor

    indices = [int(g) for g in gpus.split(",") if g.strip()]
    if not indices and cpu <= 0:
        raise click.UsageError("give --gpus 0,1,... or --cpu N")
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    install_log_scrubbing(settings)
    extra = tuple(q for q in queues.split(",") if q)
    if name_prefix and not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", name_prefix):
        raise click.BadParameter("letters, digits, '.', '_' and '-' only (at most 40)", param_hint="--name-prefix")
    plans = plan_workers(indices, cpu, extra_queues=extra, prefix=name_prefix)
    for key, value in settings.describe().items():
        click.echo(f"{key}: {value}", err=True)
    sys.exit(Supervisor(plans, settings, app, log_dir=logs).run())


# -- demo, bench, db -------------------------------------------------------------------------
@main.command()
@click.option("--seeds", default=3, show_default=True)
@click.option("--workers", "n_workers", default=2, show_default=True)
@click.option("--images", default=300, show_default=True)
@click.option("--epochs", default=20, show_default=True)
@click.option("--image-size", default=96, show_default=True)
@click.option("--gpus", default="", help="GPU indices (e.g. 0,1): one GPU worker each instead of CPU workers")
def demo(seeds, n_workers, images, epochs, image_size, gpus) -> None:
    """Synthetic data, local workers, a small ensemble, the metrics table; then stop."""
    from medq.scheduler.demo import run_demo
    from medq.scheduler.local import LocalPool

    indices = tuple(int(g) for g in gpus.split(",") if g.strip())
    pool = LocalPool(gpus=indices) if indices else LocalPool(cpu=n_workers)
    sys.exit(run_demo(load_settings(), seeds=seeds, pool=pool, n_images=images, epochs=epochs,
                      image_size=image_size))


from medq.scheduler.bench import bench  # noqa: E402  (a command group of its own)
from medq.scheduler.cli_data import data  # noqa: E402
from medq.scheduler.cli_submit import submit  # noqa: E402

from medq.scheduler.cli_queue import queue  # noqa: E402
from medq.scheduler.cli_ops import config, doctor, flower, gc, metrics  # noqa: E402
from medq.scheduler.cli_db import db  # noqa: E402

main.add_command(data)
main.add_command(submit)
main.add_command(queue)
main.add_command(db)
for command in (config, doctor, flower, gc, metrics):
    main.add_command(command)

from medq.scheduler.bench_admit import bench_admit  # noqa: E402
from medq.scheduler.bench_metrics import bench_metrics  # noqa: E402
from medq.scheduler.bench_preempt import bench_preempt  # noqa: E402

bench.add_command(bench_admit)
bench.add_command(bench_metrics)
bench.add_command(bench_preempt)
main.add_command(bench)
