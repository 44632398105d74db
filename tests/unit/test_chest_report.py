"""The chest-landmark ensemble's report: what evaluation stores for it (per test image), the
page's sections, every number on it against `medq results --json`, the gallery of the worst
images, and two jobs side by side with a paired test. Real jobs, trained in-process on the
family's example data (tests/report_jobs.py)."""

from __future__ import annotations

import dataclasses
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from medq.common.families.chest import report
from medq.common.families.chest.family import FAMILY
from medq.common.families.chest.metrics import landmark_report, per_image
from medq.common.report.data import load_job
from medq.common.report.job import render_job
from medq.common.specs import AGGREGATIONS
from medq.common.store import views
from medq.common.store.db import Store
from tests.report_jobs import finished_job


class Page(HTMLParser):
    """What a reader sees on a rendered page: headings, table cells (with their data-path),
    figures (image source and title)."""

    def __init__(self, text: str):
        super().__init__()
        self.headings: list[str] = []
        self.cells: list[dict] = []
        self.tables: list[dict] = []  # {title, rows: [[text]]}
        self.figures: list[dict] = []
        self._text: list[str] | None = None
        self._tag = None
        self._attrs: dict = {}
        self._in_data = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("h2", "h3", "td", "b"):
            self._tag, self._attrs, self._text = tag, attrs, []
        if tag == "table":
            self._in_data = "data" in (attrs.get("class") or "")
            if self._in_data:
                self.tables.append({"title": self.headings[-1] if self.headings else "", "rows": []})
        if tag == "tr" and self._in_data:
            self.tables[-1]["rows"].append([])
        if tag == "img":
            self.figures.append({"src": attrs.get("src", ""), "alt": attrs.get("alt", "")})

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag != self._tag or self._text is None:
            return
        text = "".join(self._text).strip()
        if tag in ("h2", "h3"):
            self.headings.append(text)
        elif tag == "td":
            self.cells.append({**self._attrs, "text": text})
            if self._in_data:
                self.tables[-1]["rows"][-1].append(text)
        elif tag == "b" and self.figures:
            self.figures[-1]["title"] = text
        self._tag, self._text = None, None

    def table(self, starts: str) -> dict:
        return next(t for t in self.tables if t["title"].startswith(starts))


def at_path(results: dict, path: str):
    value = results
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One store with a finished 2-seed chest job (MSE), its rendered page, its results."""
    folder = tmp_path_factory.mktemp("chest-report")
    store = Store(f"sqlite:///{folder / 'store.sqlite'}")
    store.ensure_schema()
    job = finished_job(store, FAMILY.kind, folder / "a", seeds=(0, 1))
    html = Path(render_job(store, {"jobs": [job], "out_dir": str(folder / "out")}, "single")["html"])
    yield {"store": store, "job": job, "folder": folder, "results": views.job_results(store, job),
           "page": Page(html.read_text())}
    store.dispose()


def test_results_hold_each_test_images_errors_for_every_seed_and_ensemble(lab):
    results = lab["results"]
    test_stems = load_job(lab["store"], lab["job"]).plan["split"]["test"]
    assert [e["aggregation"] for e in results["ensemble"]] == sorted(AGGREGATIONS)
    for _, _, metrics in report.subjects(results):
        per = metrics["per_image"]
        assert per["stems"] == test_stems  # the split's order
        assert np.asarray(per["errors_px"]).shape == (len(test_stems), 15)
        np.testing.assert_allclose(per["mean_error_px"], np.mean(per["errors_px"], axis=1), atol=1e-3)
        # the pooled mean the tables show is the mean of the per-image errors
        assert metrics["mean_error_px"] == pytest.approx(np.mean(per["errors_px"]), abs=1e-3)
        assert ("pred_px" in per) == (metrics is report.headline_model(results)[1])
    assert np.asarray(report.headline_model(results)[1]["per_image"]["pred_px"]).shape == (len(test_stems), 15, 2)


def test_per_image_data_of_300_images_and_8_subjects_stays_small():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 299, (300, 15, 2))
    stems = [f"Normal-{i}" for i in range(300)]
    subjects = []
    for k in range(8):
        pred = truth + rng.normal(0, 6, truth.shape)
        subjects.append({**landmark_report(pred, truth, np.full((300, 2), 299.0), ["Normal"] * 300),
                         "per_image": per_image(pred, truth, stems, with_points=k == 5)})
    size = len(json.dumps(subjects))
    assert size < 600_000, f"{size} bytes of JSON"


def test_a_finished_job_gets_every_chest_section(lab):
    headings = lab["page"].headings
    for title in ("Test results: seeds and ensemble", "Test split: each seed and each ensemble",
                  "Ensemble (mean) against its 2 seeds", "Cumulative error distribution",
                  "Quality buckets: fraction of test landmarks per error range", "Per landmark and per category",
                  "Per landmark, ensemble (mean)", "Per image category (test split)", "Worst test images"):
        assert title in headings, title
    models = [row[0] for row in lab["page"].table("Test split")["rows"] if row]
    assert models == ["seed 0", "seed 1", "ensemble (mean)", "ensemble (median)", "ensemble (weighted)"]
    figures = {f.get("title", "") for f in lab["page"].figures}
    assert {"Cumulative error distribution (test split)", "Per-landmark error, ensemble (mean)"} <= figures
    assert [row[0] for row in lab["page"].table("Per landmark,")["rows"] if row] == [f"L{i}" for i in range(1, 16)]


def test_every_number_with_a_path_is_the_number_in_the_results(lab):
    cells = [c for c in lab["page"].cells if c.get("data-path")]
    assert len(cells) > 100
    paths = {c["data-path"] for c in cells}
    assert {"ensemble.0.metrics.mean_error_px", "members.1.metrics.p95_error_px",
            "ensemble.0.metrics.quality_buckets.3.fraction",
            "ensemble.0.metrics.per_landmark.14.std_error_px"} <= paths
    for c in cells:
        assert c["data-job"] == lab["job"]
        value = at_path(lab["results"], c["data-path"])
        expected = f"{value:.{int(c['data-digits'])}f}" if isinstance(value, float) else str(value)
        assert c["text"] == expected, c["data-path"]


def test_the_gallery_draws_the_worst_test_images_in_order(lab):
    per = report.headline_model(lab["results"])[1]["per_image"]
    order = sorted(range(len(per["stems"])), key=lambda k: -per["mean_error_px"][k])[:report.GALLERY_SIZE]
    expected = [f"#{rank} {per['stems'][k]}" for rank, k in enumerate(order, start=1)]
    tiles = [f for f in lab["page"].figures if f.get("title", "").startswith("#")]
    assert [t["title"] for t in tiles] == expected
    assert all(t["src"].startswith("data:image/png;base64,") and len(t["src"]) > 2000 for t in tiles)
    assert [row[1] for row in lab["page"].table("The ")["rows"] if row] == [per["stems"][k] for k in order]


def test_a_gone_data_folder_leaves_a_note_instead_of_the_images(lab, tmp_path):
    data = load_job(lab["store"], lab["job"])
    gone = dataclasses.replace(data, job={**data.job, "plan": {**data.plan, "data_dir": str(tmp_path / "gone")}})
    worst = next(s for s in report.sections(gone) if s.title == "Worst test images")
    notes = [b.text for b in worst.blocks if hasattr(b, "text")]
    assert any("cannot be read any more" in text for text in notes)
    assert not any(hasattr(b, "src") for b in worst.blocks)  # no tile, the table still there
    assert any(hasattr(b, "rows") for b in worst.blocks)


def test_a_job_not_evaluated_yet_says_so(lab):
    data = load_job(lab["store"], lab["job"])
    results = {**data.results, "evaluation": "pending", "ensemble": [],
               "members": [{**m, "metrics": None} for m in data.results["members"]]}
    (section,) = report.sections(dataclasses.replace(data, results=results))
    assert "evaluation not run yet" in section.blocks[0].text
    assert FAMILY.report_errors(results) is None and FAMILY.report_curves(results) is None
    assert [m.value for m in FAMILY.report_headline(results)] == [None] * 5


def test_two_losses_side_by_side_with_a_paired_test_over_the_test_images(lab):
    store, folder = lab["store"], lab["folder"]
    first = load_job(store, lab["job"])
    spec = FAMILY.spec_from_dict(first.job["spec"])
    wing = finished_job(store, FAMILY.kind, folder / "b", spec=dataclasses.replace(spec, loss="wing"),
                        data_dir=Path(first.plan["data_dir"]), seeds=(0, 1))
    html = render_job(store, {"jobs": [lab["job"], wing], "out_dir": str(folder / "out")}, "pair")["html"]
    page = Page(Path(html).read_text())
    (row,) = [r for r in page.table("Paired test")["rows"] if r]
    assert row[0] == f"{wing} vs {lab['job']}"
    assert int(row[1]) == len(first.plan["split"]["test"])
    headline = page.table("Headline metrics")
    assert [r[0] for r in headline["rows"] if r][0] == "ensemble (mean): mean error (px)"
    assert any(f.get("title") == "Cumulative error distribution (test split)" for f in page.figures)
    results = {lab["job"]: lab["results"], wing: views.job_results(store, wing)}
    for c in (c for c in page.cells if c.get("data-path")):
        value = at_path(results[c["data-job"]], c["data-path"])
        assert c["text"] == (f"{value:.{int(c['data-digits'])}f}" if isinstance(value, float) else str(value))


def test_results_evaluated_before_per_image_data_still_render(lab):
    data = load_job(lab["store"], lab["job"])

    def old(metrics):
        return {k: v for k, v in metrics.items() if k not in ("per_image", "quality_buckets")} if metrics else metrics

    results = {**data.results, "members": [{**m, "metrics": old(m["metrics"])} for m in data.results["members"]],
               "ensemble": [{**e, "metrics": old(e["metrics"])} for e in data.results["ensemble"]]}
    sections = {s.title: s for s in report.sections(dataclasses.replace(data, results=results))}
    assert "Cumulative error distribution" not in sections and "Quality buckets" in sections
    (note,) = sections["Worst test images"].blocks
    assert "evaluate the job again" in note.text
    assert FAMILY.report_errors(results) is None and FAMILY.report_curves(results) is None
