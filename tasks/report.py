"""The thin task of a report job: claim it (the evaluation lease, renewed by a heartbeat), build
and write the page (common/report/job.py), record the paths, or fail the job with the reason.

A report job has no members; its one task runs on the report queue, which every worker
consumes before training, so a report never waits behind hours of training.
"""

from __future__ import annotations

from medq.common import subjects
from medq.common.store import evaluation
from medq.tasks import names
from medq.tasks.app import app
from medq.tasks.runtime import claim_job_task, failure_reason, interrupted
from medq.tasks.store_retry import recorded


@app.task(name=names.RENDER_REPORT, bind=True)
def render_report(self, job_id: str) -> str:
    taken = claim_job_task(self, job_id, f"report {job_id}")
    if isinstance(taken, str):
        return taken
    store, owner, claim, beat = taken
    recorded(f"mark report {job_id} running", lambda: evaluation.start_report(store, job_id),
             "it shows as queued until its result is written")
    with beat:
        try:
            from medq.common.report.job import render_job

            outputs = render_job(store, claim.spec, claim.job_id)
        except Exception as exc:
            if interrupted(exc):
                raise
            reason = failure_reason(exc, f"report {job_id}")
            return _record(job_id, lambda: evaluation.fail_evaluation(store, job_id, owner, reason, what="report"))
    if beat.lease_lost.is_set():
        return "stood down: the report's lease was lost"
    return _record(job_id, lambda: evaluation.record_results(store, job_id, owner, {subjects.REPORT: outputs}))


def _record(job_id: str, write) -> str:
    written = recorded(f"record report {job_id}", write, "its lease will lapse and it will be rendered again")
    if written is None:
        return "stood down: store unavailable"
    return "done" if written else "stood down: the report's lease was lost"
