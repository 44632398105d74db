"""`medq submit report`: check the jobs (common/report/plan.py), create the report job and send
its one task to the report queue. Nothing is created when a check fails."""

from __future__ import annotations

import os
from pathlib import Path

from medq.common.errors import SpecError
from medq.common.report.plan import check_report
from medq.common.settings import Settings
from medq.common.sharing.projects import default_project
from medq.common.specs import REPORT_KIND, ReportSpec
from medq.common.store import evaluation, jobs, open_store


def submit_report(settings: Settings, job_ids: list[str], out_dir: Path | None, pdf: bool,
                  project: str | None = None) -> tuple[str, Path]:
    """The report job's id and where its HTML will be."""
    from medq.common.report.job import report_paths

    store = open_store(settings)
    resolved, kind = check_report(store, job_ids)
    job_id = jobs.new_job_id()
    folder = (Path(out_dir) if out_dir else settings.artifacts / job_id).resolve()
    if out_dir:  # the worker writes there: say now, not after the queue, when it cannot
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpecError(f"--out {out_dir}: cannot create it ({exc.strerror})") from None
        if not os.access(folder, os.W_OK):
            raise SpecError(f"--out {out_dir}: not writable")
    spec = ReportSpec(tuple(resolved), str(folder), pdf)
    evaluation.create_report_job(store, spec.to_dict(), {"kind": kind, "out_dir": str(folder)}, job_id=job_id,
                                 project=project or default_project(settings.project))
    from medq.tasks.app import app_for
    from medq.tasks.send import send_evaluation

    try:
        send_evaluation(app_for(settings), job_id, REPORT_KIND)
    except Exception as exc:
        from medq.scheduler.submit import describe_enqueue_error

        jobs.fail_job(store, job_id, f"could not enqueue: {describe_enqueue_error(exc)}")
        raise
    return job_id, report_paths(folder, job_id)[0]
