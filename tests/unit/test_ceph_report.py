"""The cephalometric report: what evaluation keeps per test image, the family's sections (MRE ±
SD and SDR per set, SDR curves, per landmark, best and worst images), every number on the page
against `medq results --json`, and two jobs of different specs side by side with a paired test."""

from __future__ import annotations

import dataclasses
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest

from medq.common.families.registry import family
from medq.common.report.data import load_job
from medq.common.report.job import render_job
from medq.common.specs import SplitSpec
from medq.common.store import views
from medq.common.store.db import Store
from tests.report_jobs import finished_job


class ReportHTML(HTMLParser):
    """The parts of a rendered report a test reads: table cells (attributes, text) by table
    title (the h3 before it), notes, figure captions and images."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list[list[tuple[dict, str]]]] = {}
        self.cells: list[tuple[dict, str]] = []
        self.notes: list[str] = []
        self.images: list[str] = []
        self.captions: list[str] = []
        self._h3, self._text, self._stack, self._table = "", "", [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._stack.append((tag, attrs))
        if tag in ("td", "th", "h3", "p", "figcaption"):
            self._text = ""
        if tag == "table" and "data" in (attrs.get("class") or ""):
            self._table = self.tables.setdefault(self._h3, [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_data(self, data):
        self._text += data

    def handle_endtag(self, tag):
        _, attrs = self._stack.pop() if self._stack else (tag, {})
        text = self._text.strip()
        if tag == "h3":
            self._h3 = text
        elif tag == "td" and self._table is not None:
            self._table[-1].append((attrs, text))
            self.cells.append((attrs, text))
        elif tag == "table":
            self._table = None
        elif tag == "p" and "note" in (attrs.get("class") or ""):
            self.notes.append(text)
        elif tag == "figcaption":
            self.captions.append(text)


def value_at(results: dict, path: str):
    value = results
    for key in path.split("."):
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


def assert_cells_match_results(store: Store, page: ReportHTML) -> int:
    """Every cell with a data-path shows the value `medq results --json` holds there, rounded to
    its data-digits; returns how many were checked."""
    results, checked = {}, 0
    for attrs, text in page.cells:
        if "data-path" not in attrs:
            continue
        job = attrs["data-job"]
        results.setdefault(job, views.job_results(store, job))
        value = value_at(results[job], attrs["data-path"])
        if value is None:
            assert text == "–", (attrs, text)
        elif isinstance(value, float):
            digits = int(attrs["data-digits"])
            assert round(float(text), digits) == round(value, digits), (attrs["data-path"], text, value)
        else:
            assert text == str(value), (attrs["data-path"], text, value)
        checked += 1
    return checked


def paired_row(page: ReportHTML) -> dict[str, str]:
    (title,) = [t for t in page.tables if t.startswith("Paired test")]
    header = ["comparison", "n", "mean (first)", "mean (other)", "median difference", "W", "p", "reading"]
    rows = [r for r in page.tables[title] if r]
    assert len(rows) == 1
    return dict(zip(header, (text for _, text in rows[0])))


# --- the jobs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ceph(tmp_path_factory):
    """Two finished HRNet jobs on the same data (ten images, three of them in the test split, and
    an extra test set Test1Data of two), differing in sigma."""
    from medq.common.families.ceph.synth import synth_ceph

    root = tmp_path_factory.mktemp("ceph-report")
    data = root / "ceph"
    synth_ceph(data, n=10, seed=2, n_test=2, width=160, height=200)
    example = family("hrnet").example(root / "example")
    spec = dataclasses.replace(example.spec, epochs=1, warmup_epochs=1,
                               split=SplitSpec(train=0.5, val=0.2, test=0.3))
    store = Store(f"sqlite:///{root}/store.sqlite")
    store.ensure_schema()
    extra = data / "RawImage" / "Test1Data"
    a = finished_job(store, "hrnet", root / "a", spec=spec, data_dir=data, test_dirs=[extra])
    b = finished_job(store, "hrnet", root / "b", spec=dataclasses.replace(spec, sigma=2.0), data_dir=data,
                     test_dirs=[extra])
    return store, root, data, a, b


def _sets(store, job):
    return {entry["name"]: (i, entry["metrics"]) for i, entry in enumerate(views.job_results(store, job)["sets"])}


def test_the_results_keep_each_test_image_and_the_best_and_worst_cases(ceph):
    store, _, _, a, _ = ceph
    sets = _sets(store, a)
    _, test = sets["test"]
    stems = test["per_image"]["stems"]
    errors = np.asarray(test["per_image"]["errors_mm"])
    assert sorted(stems) == sorted(load_job(store, a).plan["split"]["test"]) and len(stems) == test["n_images"] == 3
    assert errors.shape == (3, 19)
    # the per-image figures are the same errors the set's MRE is made of (rounded to 0.01 mm)
    assert errors.mean() == pytest.approx(test["mre_mm"], abs=0.01)
    np.testing.assert_allclose(test["per_image"]["mre_mm"], errors.mean(axis=1), atol=0.01)
    assert [s["mm"] for s in test["sdr"]] == [2.0, 2.5, 3.0, 4.0]
    assert test["sdr"][1]["percent"] == pytest.approx(100 * test["sdr_2.5mm"])
    cases = test["cases"]
    assert len(cases["best"]) + len(cases["worst"]) == 3  # three images: one best, two worst, none twice
    assert cases["worst"][0]["mre_mm"] == max(test["per_image"]["mre_mm"])
    assert cases["best"][0]["mre_mm"] == min(test["per_image"]["mre_mm"])
    assert np.asarray(cases["worst"][0]["pred"]).shape == (19, 2)
    # the extra test set is kept the same way; the untrained model has its errors but no gallery
    assert len(sets["Test1Data"][1]["per_image"]["stems"]) == 2
    assert "per_image" in sets["test-untrained"][1] and "cases" not in sets["test-untrained"][1]


def test_the_sections_render_and_every_number_is_the_stored_one(ceph, tmp_path):
    store, _, _, a, _ = ceph
    html = render_job(store, {"jobs": [a], "out_dir": str(tmp_path)}, "one")["html"]
    page = ReportHTML(open(html, encoding="utf-8").read())
    table = page.tables["MRE ± SD and SDR per evaluation set"]
    labels = [row[0][1] for row in table if row]
    assert labels == ["test split (held out from training)", "Test1Data (extra test set)",
                      "untrained model, test split"]
    paths = {attrs.get("data-path") for attrs, _ in page.cells}
    i = _sets(store, a)["test"][0]
    assert {f"sets.{i}.metrics.sdr.1.percent", f"sets.{i}.metrics.per_landmark.18.mre_mm"} <= paths
    assert assert_cells_match_results(store, page) > 19 * 4
    assert any(c.startswith("SDR curve per evaluation set") for c in page.captions)
    assert any(c.startswith("Mean radial error per landmark") for c in page.captions)
    # three gallery images of the test split and two of Test1Data, drawn from the data folder
    assert sum(c.startswith("#") for c in page.captions) == 5
    assert all(src.startswith("data:image/png;base64,") for src in page.images)


def test_a_gallery_whose_images_are_gone_says_so(ceph, tmp_path):
    store, root, data, a, _ = ceph
    moved = root / "moved-away"
    shutil.move(str(data), moved)
    try:
        html = render_job(store, {"jobs": [a], "out_dir": str(tmp_path)}, "gone")["html"]
    finally:
        shutil.move(str(moved), data)
    page = ReportHTML(open(html, encoding="utf-8").read())
    assert sum(c.startswith("#") for c in page.captions) == 0
    assert any("no longer where the evaluation read them" in n and "not drawn" in n for n in page.notes)


def test_two_specs_on_the_same_data_side_by_side(ceph, tmp_path):
    store, _, _, a, b = ceph
    html = render_job(store, {"jobs": [a, b], "out_dir": str(tmp_path)}, "pair")["html"]
    page = ReportHTML(open(html, encoding="utf-8").read())
    headline = page.tables["Headline metrics on the shared test split"]
    assert [row[0][1] for row in headline if row] == ["MRE (mm)", "SD (mm)", "SDR 2 mm (%)", "SDR 4 mm (%)"]
    row = paired_row(page)
    assert row["comparison"] == f"{b} vs {a}" and int(row["n"]) == 3  # the three test images
    assert any(c.startswith("SDR curve, test split") for c in page.captions)
    assert {attrs["data-job"] for attrs, _ in page.cells if "data-path" in attrs} == {a, b}
    assert assert_cells_match_results(store, page) > 0
