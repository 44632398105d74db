"""The morning report of an inference job, on SQLite and a real PostgreSQL: its numbers are those
of `medq results JOB --json`, failures are counted by reason, the review list names studies by
key and UID only, and the distributions are the histograms of the stored results."""

from __future__ import annotations

from datetime import datetime, time, timezone
from html.parser import HTMLParser

import numpy as np
import pytest

from medq.common.report import render
from medq.common.report.build import build_page
from medq.common.report.inference import histogram, study_value
from medq.common.report.page import format_value
from medq.common.store import inference as ops
from medq.common.store.views import infer_view

OPEN = time(23, 0)
UNREADABLE, TOO_SMALL = "unreadable DICOM: no pixel data", "image smaller than 64 px"


def _path(i: int) -> str:  # as hospital exports name files: after the patient
    return f"exports/DOE^JANE_{i:03d}/chest_{i:03d}.dcm"


def _landmarks(rng, flagged: bool) -> dict:
    spread = rng.uniform(0.5, 3.0, 15)
    if flagged:
        spread[4] = 40.0
    reasons = ["ensemble spread above 9.0 px at landmark 4"] if flagged else []
    return {"landmarks_px": rng.uniform(0, 299, (15, 2)).tolist(), "landmarks_mm": None,
            "spread_px": spread.tolist(), "qc_reasons": reasons}


def night_job(store, job_id="night0000001", n=40, chunk=8, family="ensemble", result=None):
    """An inference job as the chunk tasks leave it: 2 files refused at enumeration (skipped),
    studies done (every 7th flagged), failed for two reasons, skipped by the predictor, and its
    last chunk failed as a whole (its studies left pending)."""
    rng = np.random.default_rng(0)
    result = result or _landmarks
    ops.create_infer_job(store, job_id, {"archive": "/exports", "checkpoints": ["/m/best.pt"], "aggregation": "mean",
                                         "tta": "none", "chunk": chunk}, {"family": family}, "normal", None)
    planned = [ops.PlannedStudy(_path(i)) for i in range(n)]
    planned += [ops.PlannedStudy(_path(n), "skipped", "not a DICOM or image file"),
                ops.PlannedStudy(_path(n + 1), "skipped", "not a DICOM or image file")]
    _, n_chunks = ops.add_studies(store, job_id, iter(planned), chunk)
    sent: list[int] = []
    ops.dispatch_chunks(store, OPEN, lambda chunk_id, priority: sent.append(chunk_id), job_id)
    for index, chunk_id in enumerate(sorted(sent)):
        assert ops.claim_chunk(store, chunk_id, f"o{index}", "gpu0@host", "cuda:0", 600, 3, OPEN).run
        if index == n_chunks - 1:
            ops.finish_chunk(store, chunk_id, f"o{index}", "failed", "gave up after 3 attempts (worker lost)")
            continue
        records = []
        for study_id, *_ in ops.pending_studies(store, job_id, index):
            i = study_id % 10
            uids = {"study_uid": f"1.2.826.0.1.{study_id}", "series_uid": f"1.2.826.0.2.{study_id}",
                    "sop_uid": f"1.2.826.0.3.{study_id}"}
            if i == 3:
                records.append({"study_id": study_id, "state": "failed", "reason": UNREADABLE})
            elif i in (5, 8):
                records.append({"study_id": study_id, "state": "failed", "reason": TOO_SMALL, **uids})
            elif i == 9:
                records.append({"study_id": study_id, "state": "skipped", "reason": "not a chest radiograph"})
            else:
                flagged = study_id % 7 == 0
                records.append({"study_id": study_id, "state": "done", "result": result(rng, flagged),
                                "qc_flag": flagged, "width": 299, "height": 299, **uids})
        ops.record_studies(store, records)
        ops.finish_chunk(store, chunk_id, f"o{index}", "succeeded")
    return job_id


class _Cells(HTMLParser):
    """Every table cell of the page: (data-path or None, text); figures by caption title."""

    def __init__(self):
        super().__init__()
        self.cells, self.tables, self.images, self._cell, self._text = [], [], [], None, ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag == "td":
            self._cell, self._text = attrs, ""
        elif tag == "img":
            self.images.append(attrs.get("alt"))

    def handle_data(self, data):
        if self._cell is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append((self._cell, self._text))
            self.tables[-1][-1].append(self._text)
            self._cell = None


def _at(view, path: str):
    for part in path.split("."):
        view = view[int(part)] if isinstance(view, list) else view[part]
    return view


def _page(store, job_id):
    page, _ = build_page(store, [job_id], datetime.now(timezone.utc))
    parsed = _Cells()
    text = render.html(page)
    parsed.feed(text)
    return page, parsed, text


def test_the_morning_report_says_what_medq_results_says(store, monkeypatch):
    job_id = night_job(store)
    # its throughput counts to now while studies remain: one "now" for the view and the page
    from medq.common.store import models

    now = models.utcnow()
    monkeypatch.setattr(models, "utcnow", lambda: now)
    view = infer_view(store, job_id)
    assert view["studies"] == {"total": 42, "done": 20, "failed": 9, "skipped": 5, "remaining": 8, "review": 3}
    page, parsed, text = _page(store, job_id)

    checked = {attrs["data-path"] for attrs, _ in parsed.cells if attrs.get("data-path")}
    for attrs, shown in parsed.cells:
        if attrs.get("data-path"):
            assert shown == format_value(_at(view, attrs["data-path"]), int(attrs["data-digits"])), attrs
    assert {f"studies.{k}" for k in view["studies"]} | {"state", "studies_per_s", "failed_chunks.0.studies"} <= checked

    tables = [[row for row in table if row] for table in parsed.tables]  # body rows
    by_reason = {}
    for table in tables:
        if table and table[0][0] in (UNREADABLE, TOO_SMALL):
            by_reason = {row[0]: int(row[1]) for row in table}
    assert by_reason == {TOO_SMALL: 6, UNREADABLE: 3}
    assert "not a DICOM or image file" in text and "not a chest radiograph" in text

    flagged = [row for table in tables for row in table if row[0].isalnum() and len(row[0]) == 32]
    assert len(flagged) == 3 and all(row[1].split()[0].startswith("1.2.826.0.1.") for row in flagged)
    assert all(len(row[1].split()) == 3 and "spread above" in row[2] for row in flagged)
    assert "DOE^JANE" not in text and ".dcm" not in text and "exports/" not in text  # no study path anywhere

    titles = [f.title for s in page.sections for f in s.blocks if hasattr(f, "src")]
    assert {"Throughput over the night", "Chunk durations"} <= set(titles)
    assert any("landmark spread" in t for t in titles)
    assert len(parsed.images) == len(titles)


def test_distributions_are_histograms_of_the_stored_results(store):
    lesion = iter(np.random.default_rng(1).gamma(2.0, 30.0, 100))

    def segmentation(rng, flagged):  # some studies without a spacing: no millilitres
        ml = next(lesion)
        return {"lesion_total_ml": None if ml < 10 else float(ml), "lung_involvement_pct": float(ml / 3)}

    job_id = night_job(store, family="segment", result=segmentation)
    from sqlalchemy import select

    from medq.common.store.models import Study

    with store.session() as s:
        stored = [r["lesion_total_ml"] for (r,) in s.execute(select(Study.result).where(
            Study.job_id == job_id, Study.state == "done"))]
        h = histogram(s, study_value(s, job_id, "lesion_total_ml"), (Study.job_id == job_id, Study.state == "done"))
        spread = study_value(s, job_id, "no_such_key")
    values = np.array([v for v in stored if v is not None])
    counts, edges = np.histogram(values, bins=len(h.counts))
    assert h.n == len(values) < len(stored)
    assert list(h.counts) == counts.tolist() and np.allclose(h.edges, edges)
    assert h.mean == pytest.approx(values.mean()) and h.high == values.max()
    assert spread is None

    page, parsed, text = _page(store, job_id)
    titles = [f.title for s in page.sections for f in s.blocks if hasattr(f, "src")]
    assert any(t.startswith("Lesion volume") for t in titles) and any(t.startswith("Lung involved") for t in titles)


def test_largest_spread_per_study_in_sql(store):
    job_id = night_job(store, n=24, chunk=8)
    from sqlalchemy import select

    from medq.common.store.models import Study

    with store.session() as s:
        expected = [max(r["spread_px"]) for (r,) in s.execute(select(Study.result).where(
            Study.job_id == job_id, Study.state == "done"))]
        got = sorted(s.scalars(select(study_value(s, job_id, "spread_px")).where(
            Study.job_id == job_id, Study.state == "done")))
    assert got == pytest.approx(sorted(expected)) and max(got) == 40.0
