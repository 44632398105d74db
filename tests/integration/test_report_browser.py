"""Real reports opened in Debian's headless Chromium, as a lab lead opens the attached file: the
page loads with nothing from the network, every figure shows, the title names the job, and a
screenshot of the whole page has something on it; `--pdf` prints the same page. Skipped without
Chromium or Playwright locally, failed under CI=true (tests/browser.py)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medq.common.families.registry import family
from medq.common.report.job import render_job
from medq.common.store.db import Store
from tests.browser import browser_path, open_page
from tests.report_jobs import finished_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEEDS = {"ensemble": (0, 1), "hrnet": (0,), "segment": (0,)}  # a chest ensemble of two seeds, one model each
PAGES = (*SEEDS, "side-by-side", "inference")
EXTERNAL = "http://example.com/x.png"


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """page -> (expected title, report HTML, job ids): one finished job of each family, two chest jobs of
    different losses side by side, and an inference night; rendered once."""
    import dataclasses

    from tests.integration.test_report_inference import night_job

    browser_path()  # skip (or fail under CI) before training anything
    root = tmp_path_factory.mktemp("browser")
    store = Store(f"sqlite:///{root / 'store.sqlite'}")
    store.ensure_schema()
    made, ids = {}, {}

    def render(page: str, job_ids: list[str], title: str) -> None:
        html = render_job(store, {"jobs": job_ids, "out_dir": str(root / "reports")}, f"r-{page}")["html"]
        made[page] = (title, Path(html), job_ids)

    for kind, seeds in SEEDS.items():
        ids[kind] = finished_job(store, kind, root / kind, seeds=seeds)
        render(kind, [ids[kind]], f"{family(kind).title} {ids[kind]}")
    example = family("ensemble").example(root / "ensemble" / "example")  # the same data again (a fixed seed)
    wing = finished_job(store, "ensemble", root / "wing", spec=dataclasses.replace(example.spec, loss="wing"),
                        data_dir=example.data_dir, seeds=(0, 1))
    render("side-by-side", [ids["ensemble"], wing], f"{family('ensemble').title}: 2 jobs side by side")
    night_job(store, "night0000001")
    render("inference", ["night0000001"], "Bulk inference night0000001")
    yield store, root, made
    store.dispose()


def picture(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("kind", PAGES)
def test_report_opens_offline_with_every_figure_shown(reports, kind, tmp_path):
    _, _, made = reports
    title, html_path, _ = made[kind]
    check = open_page(html_path, tmp_path / f"report-{kind}.png")
    assert check.violations == []  # no request left the machine
    assert check.broken_images == []
    assert check.console_errors == []
    assert check.title.lower() == title.lower()  # the family (or bulk inference) and the job
    shot = picture(check.screenshot)
    height, width, _ = shot.shape
    assert width == 1200 and height > 1800  # the whole page, well past the first screen
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 200  # text, tables and plots, not a blank page
    assert (shot < 200).any(axis=2).mean() > 0.01  # and enough ink to read
    images = re.findall(r'<img src="([^"]*)"', html_path.read_text())
    assert images and all(src.startswith("data:image/") for src in images)  # the figures are in the file


def test_an_external_image_is_caught(reports, tmp_path):
    """The check can fail: the same report with one picture from the network."""
    _, _, made = reports
    _, html_path, _ = made["ensemble"]
    tampered = tmp_path / "tampered.html"
    tampered.write_text(html_path.read_text().replace("</body>", f'<img src="{EXTERNAL}" alt="external"></body>'))
    check = open_page(tampered, tmp_path / "tampered.png")
    assert check.violations == [EXTERNAL]
    assert check.broken_images == [f"external <- {EXTERNAL}"]


def test_pdf_is_the_same_page_without_browser_furniture(reports):
    from pypdf import PdfReader

    store, root, made = reports
    _, _, (job_id,) = made["ensemble"]
    outputs = render_job(store, {"jobs": [job_id], "out_dir": str(root / "pdf"), "pdf": True}, "r-pdf")
    pdf = Path(outputs["pdf"])
    assert pdf.read_bytes().startswith(b"%PDF-")
    pages = PdfReader(pdf).pages
    assert len(pages) >= 1
    text = [unicodedata.normalize("NFKC", page.extract_text()) for page in pages]  # the font's ligatures: ff, fi
    assert job_id in text[0] and "Learning curves" in "".join(text)
    # Chromium's header and footer (date, title, file URL, "1/4") are off: nothing but the report
    assert not any("file://" in t or re.search(rf"\b1/{len(pages)}\b", t) for t in text)
