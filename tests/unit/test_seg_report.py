"""The CT lesion report: the per-slice Dice evaluation keeps, the family's sections (Dice and
IoU per class with both reductions named, distributions, the untrained baseline, the review
overlays), every number on the page against `medq results --json`, and two jobs of different
specs side by side with a paired test over the test slices."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from medq.common.families.registry import family
from medq.common.report.data import load_job
from medq.common.report.job import render_job
from medq.common.store import views
from medq.common.store.db import Store
from tests.report_jobs import finished_job
from tests.unit.test_ceph_report import ReportHTML, assert_cells_match_results, paired_row


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """Two finished segmentation jobs on the family's example data, trained 2 and 1 epochs."""
    root = tmp_path_factory.mktemp("seg-report")
    example = family("segment").example(root / "example")
    store = Store(f"sqlite:///{root}/store.sqlite")
    store.ensure_schema()
    a = finished_job(store, "segment", root / "a", spec=example.spec, data_dir=example.data_dir)
    b = finished_job(store, "segment", root / "b", spec=dataclasses.replace(example.spec, epochs=1),
                     data_dir=example.data_dir)
    return store, a, b


def _sets(store, job):
    return {entry["name"]: (i, entry["metrics"]) for i, entry in enumerate(views.job_results(store, job)["sets"])}


def test_the_results_keep_each_test_slice_dice_per_class(seg):
    store, a, _ = seg
    sets = _sets(store, a)
    _, test = sets["test"]
    per_slice = test["per_slice"]
    assert per_slice["ids"] == load_job(store, a).plan["split"]["test"] and test["n_images"] == len(per_slice["ids"])
    for name, row in test["per_class"].items():  # the box plot's mean is the table's per-slice mean
        assert np.mean(per_slice["dice"][name]) == pytest.approx(row["dice_per_image"], abs=1e-4)
    lesion = np.mean([per_slice["dice"]["ground_glass"], per_slice["dice"]["consolidation"]], axis=0)
    np.testing.assert_allclose(per_slice["lesion_dice"], lesion, atol=1e-4)
    assert test["empty_rule"] == "one"
    assert len(sets["test-untrained"][1]["per_slice"]["ids"]) == len(per_slice["ids"])


def test_the_sections_render_and_every_number_is_the_stored_one(seg, tmp_path):
    store, a, _ = seg
    html = render_job(store, {"jobs": [a], "out_dir": str(tmp_path)}, "one")["html"]
    page = ReportHTML(open(html, encoding="utf-8").read())
    (title,) = [t for t in page.tables if t.startswith("Dice and IoU per class")]
    classes = [row[0][1] for row in page.tables[title] if row]
    assert classes == ["ground glass", "consolidation", "lesion mean", "other lung", "background"]
    i = _sets(store, a)["test"][0]
    paths = {attrs.get("data-path") for attrs, _ in page.cells}
    assert {f"sets.{i}.metrics.per_class.consolidation.dice_pooled", f"sets.{i}.metrics.lesion_mean.iou_per_image",
            f"sets.{i}.metrics.per_slice.lesion_dice.0"} <= paths
    assert assert_cells_match_results(store, page) > 30
    assert sum(c.startswith("Per-slice Dice") for c in page.captions) == 2
    assert any("Orange line: median" in c and "counts as Dice 1" in c for c in page.captions)
    folder = _sets(store, a)["test"][1]["overlays"]
    shown = [c for c in page.captions if c.startswith("Slice ")]
    assert len(shown) == len(list(Path(folder).glob("slice-*.png"))) > 0
    assert all(src.startswith("data:image/png;base64,") for src in page.images)


def test_missing_overlays_are_a_note(seg, tmp_path):
    store, a, _ = seg
    folder = _sets(store, a)["test"][1]["overlays"]
    shutil.move(folder, folder + ".away")
    try:
        html = render_job(store, {"jobs": [a], "out_dir": str(tmp_path)}, "gone")["html"]
    finally:
        shutil.move(folder + ".away", folder)
    page = ReportHTML(open(html, encoding="utf-8").read())
    assert not any(c.startswith("Slice ") for c in page.captions)
    assert any(n.startswith("No review overlays") and folder in n for n in page.notes)


def test_two_specs_on_the_same_data_side_by_side(seg, tmp_path):
    store, a, b = seg
    html = render_job(store, {"jobs": [a, b], "out_dir": str(tmp_path)}, "pair")["html"]
    page = ReportHTML(open(html, encoding="utf-8").read())
    headline = page.tables["Headline metrics on the shared test split"]
    assert [row[0][1] for row in headline if row][:2] == ["lesion Dice, pooled", "lesion Dice, per-slice mean"]
    row = paired_row(page)
    assert row["comparison"] == f"{b} vs {a}" and int(row["n"]) == len(load_job(store, a).plan["split"]["test"])
    assert any(c.startswith("Test slices reaching a lesion Dice") for c in page.captions)
    assert assert_cells_match_results(store, page) > 0
