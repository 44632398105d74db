"""A report job in the real SQLite and PostgreSQL stores: created dispatched, leased like an
evaluation, sent again to the report task (not the evaluation) when its worker dies, and its
outputs read back as `medq results --json` gives them."""

from __future__ import annotations

from datetime import timedelta

from medq.common import subjects
from medq.common.store import evaluation, recovery, views
from medq.common.store.models import Job, utcnow
from medq.tasks import names
from medq.tasks.send import send_evaluation


def test_a_report_whose_worker_died_is_sent_again_to_the_report_queue(store):
    report_id = evaluation.create_report_job(store, {"jobs": ["abc"], "out_dir": "/r", "pdf": False}, {})
    assert evaluation.claim_evaluation(store, report_id, "worker-a", 60)
    assert evaluation.claim_evaluation(store, report_id, "worker-b", 60) is None  # the lease is live
    with store.session() as s:
        s.get(Job, report_id).eval_lease_expires_at = utcnow() - timedelta(seconds=1)  # worker-a died
    sent = []

    class App:
        def send_task(self, name, args, **options):
            sent.append((name, args, options))

    assert recovery.redispatch_evaluations(store, lambda job_id, kind: send_evaluation(App(), job_id, kind)) \
        == [report_id]
    assert sent == [(names.RENDER_REPORT, [report_id], {"queue": names.REPORT_QUEUE})]
    assert evaluation.claim_evaluation(store, report_id, "worker-b", 60)
    evaluation.start_report(store, report_id)
    outputs = {"html": "/r/report.html", "pdf": None, "as_of": "now", "jobs": ["abc"], "running": []}
    assert not evaluation.record_results(store, report_id, "worker-a", {subjects.REPORT: outputs})  # stood down
    assert evaluation.record_results(store, report_id, "worker-b", {subjects.REPORT: outputs})
    view = views.job_results(store, report_id)
    assert view["state"] == "succeeded" and view["html"] == "/r/report.html" and view["jobs"] == ["abc"]


def test_a_failed_report_says_why(store):
    report_id = evaluation.create_report_job(store, {"jobs": ["abc"], "out_dir": "/r", "pdf": True}, {})
    assert evaluation.claim_evaluation(store, report_id, "w", 60)
    assert evaluation.fail_evaluation(store, report_id, "w", "--pdf needs headless Chromium", what="report")
    view = views.job_results(store, report_id)
    assert view["state"] == "failed" and view["error"] == "report failed: --pdf needs headless Chromium"


def test_a_report_not_on_the_broker_is_sent_again_only_when_the_report_queue_is_empty(store):
    report_id = evaluation.create_report_job(store, {"jobs": ["abc"], "out_dir": "/r", "pdf": False}, {})
    later = utcnow() + timedelta(seconds=1)  # a queue seen empty since after it was dispatched
    sent = []
    assert recovery.redispatch_evaluations(store, lambda job_id, kind: sent.append(job_id),
                                           queue_empty_since=later, reports=False) == []  # the training queue
    assert recovery.redispatch_evaluations(store, lambda job_id, kind: sent.append(job_id),
                                           queue_empty_since=later, reports=True) == [report_id]
    assert sent == [report_id]


def test_cancelling_a_report_ends_it_and_a_render_under_way_stands_down(store):
    from medq.common.store import jobs

    report_id = evaluation.create_report_job(store, {"jobs": ["abc"], "out_dir": "/r", "pdf": False}, {})
    assert evaluation.claim_evaluation(store, report_id, "w", 60)
    jobs.request_cancel(store, report_id)
    assert not evaluation.record_results(store, report_id, "w", {subjects.REPORT: {"html": "/r/x.html"}})
    view = views.job_results(store, report_id)
    assert view["state"] == "cancelled" and "html" not in view
