"""The page of a report: one way for every job kind. A training job gets the part every
training job shares (``training.py``) and its family's own sections
(``Family.report_sections``); several training jobs of one family get the comparison
(``compare.py``) first; an inference job gets the morning report (``inference.py``)."""

from __future__ import annotations

from datetime import datetime

from medq.common import __version__
from medq.common.families.registry import family
from medq.common.report import training
from medq.common.report.data import JobData, load_job
from medq.common.report.page import Note, Page, Section
from medq.common.specs import INFER_KIND
from medq.common.store.db import Store


def build_page(store: Store, job_ids: list[str], now: datetime) -> tuple[Page, list[str]]:
    """The page, and the ids of the jobs still running (rendered "as of" now)."""
    jobs = [load_job(store, job_id) for job_id in job_ids]
    running = [data.id for data in jobs if data.running]
    as_of = now.strftime("%Y-%m-%d %H:%M:%S")
    banners = tuple(Note(f"Job {job_id} is still {data.job['state']}: this report shows it as of {as_of} UTC; "
                         "render it again for later figures.", "warn")
                    for job_id, data in ((d.id, d) for d in jobs if d.running))
    if jobs[0].kind == INFER_KIND:
        from medq.common.report.inference import inference_sections

        (data,) = jobs
        sections = inference_sections(store, data)
        title, subtitle = f"Bulk inference {data.id}", "studies done, failed and flagged; throughput; distributions"
    else:
        kind = family(jobs[0].kind)
        sections = []
        if len(jobs) > 1:
            from medq.common.report.compare import compare_sections

            sections += compare_sections(kind, jobs)
        for data in jobs:
            sections += job_sections(kind, data, prefix=len(jobs) > 1)
        name = kind.title[:1].upper() + kind.title[1:]  # "CT lesion ...", not "Ct lesion ..."
        title = f"{name} {jobs[0].id}" if len(jobs) == 1 else f"{name}: {len(jobs)} jobs side by side"
        subtitle = "training, validation and test results from the medq store"
    facts = (("jobs", ", ".join(job_ids)), ("rendered", f"{as_of} UTC"), ("medq", __version__))
    return Page(title, subtitle, now.isoformat(), banners, tuple(sections), facts), running


def job_sections(kind, data: JobData, prefix: bool = False) -> list[Section]:
    sections = training.sections(data, kind.title, kind.member_metric.column, kind.member_metric.label,
                                 kind.history_metrics)
    sections += kind.report_sections(data)
    if prefix:  # several jobs: say whose section it is
        sections = [Section(f"{data.id}: {s.title}" if data.id not in s.title else s.title, s.blocks, s.job)
                    for s in sections]
    return sections
