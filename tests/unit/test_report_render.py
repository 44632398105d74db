"""The report page as HTML (Jinja2, autoescaped, strict) and as PDF (headless Chromium), without a
browser: what a job spec can inject, what the page links to, and what a worker without Chromium
(or with a broken one) tells the user."""

from __future__ import annotations

import os
import stat
import time
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest

from medq.common.errors import JobError
from medq.common.report import plots, render
from medq.common.report.data import JobData
from medq.common.report.page import Curve, CurvePlot, Note, Page, Section, Table
from medq.common.report.training import spec_table

HOSTILE = '<script>alert("spec")</script>'


class Tags(HTMLParser):
    """Every start tag of a page with its attributes."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {name: value or "" for name, value in attrs}))


def page(sections: list[Section], title: str = "Chest-landmark ensemble abc123") -> Page:
    return Page(title, "training, validation and test results", "2026-01-01T00:00:00+00:00",
                (Note("job still running: as of now", "warn"),), tuple(sections), (("jobs", "abc123"),))


def hostile_job() -> JobData:
    spec = {"loss": HOSTILE, "epochs": 3, "augment": {"note": HOSTILE}, "tags": [HOSTILE, "b"]}
    return JobData({"job_id": "abc123", "kind": "ensemble", "state": "succeeded", "spec": spec}, {}, {})


def test_a_spec_value_with_markup_is_shown_as_text_not_run():
    text = render.html(page([Section.of("Training job abc123", [spec_table(hostile_job())], "abc123")],
                            title=f"report {HOSTILE}"))
    assert [tag for tag, _ in Tags(text).tags if tag == "script"] == []  # neither spec nor title became one
    assert "<script" not in text.lower()
    assert text.count("&lt;script&gt;alert(&#34;spec&#34;)&lt;/script&gt;") >= 4  # loss, augment, tags, title


def test_a_page_missing_a_field_fails_loudly_instead_of_rendering_blank():
    incomplete = SimpleNamespace(title="t", subtitle="s", as_of="now", banners=(), sections=())  # no facts
    with pytest.raises(jinja2.UndefinedError, match="facts"):
        render.html(incomplete)


def test_every_src_and_href_stays_inside_the_file():
    curve = CurvePlot("loss", "epoch", "loss", (Curve("train", (1.0, 2.0, 3.0), (0.5, 0.3, 0.2)),))
    sections = [Section.of("Training job abc123", [spec_table(hostile_job())], "abc123"),
                Section.of("Learning curves", [plots.curves(curve), Note("read the curve from left to right")]),
                Section.of("Results", [Table.of("test split", ("model", "mean px"), [("seed 0", 3.25)])])]
    parsed = Tags(render.html(page(sections)))
    links = [(tag, name, value) for tag, attrs in parsed.tags for name, value in attrs.items() if name in ("src", "href")]
    assert {tag for tag, _, _ in links} == {"img", "a"}  # the figure and the table of contents
    assert [v for _, _, v in links if v.lower().startswith(("http:", "https:", "//"))] == []
    assert all(v.startswith("data:image/png;base64,") for tag, _, v in links if tag == "img")
    assert all(v.startswith("#") for tag, _, v in links if tag == "a")


@pytest.fixture
def no_chromium(monkeypatch, tmp_path):
    """A worker whose PATH holds no browser and whose MEDQ_CHROMIUM names nothing."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("MEDQ_CHROMIUM", raising=False)
    return empty


def test_pdf_without_chromium_says_what_to_install(no_chromium, tmp_path):
    html_path = render.write_html(page([]), tmp_path / "report.html")
    with pytest.raises(JobError, match=r"--pdf needs headless Chromium .*apt-get install chromium.*MEDQ_CHROMIUM"):
        render.write_pdf(html_path, tmp_path / "report.pdf")
    assert not list(tmp_path.glob("report.pdf*"))


def test_pdf_with_medq_chromium_naming_a_missing_file_says_the_same(no_chromium, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDQ_CHROMIUM", str(tmp_path / "no-such-chromium"))
    with pytest.raises(JobError, match="set MEDQ_CHROMIUM to its path"):
        render.write_pdf(tmp_path / "report.html", tmp_path / "report.pdf")


def fake_browser(folder: Path, body: str) -> Path:
    exe = folder / "chromium"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_pdf_from_a_failing_chromium_names_its_exit_and_last_line(no_chromium, tmp_path):
    fake_browser(no_chromium, 'echo "[0:0:ERROR:x.cc] Missing X server or $DISPLAY" >&2; exit 1')
    html_path = render.write_html(page([]), tmp_path / "report.html")
    with pytest.raises(JobError, match=r"could not print the PDF \(exit 1: .*Missing X server"):
        render.write_pdf(html_path, tmp_path / "report.pdf")
    assert not list(tmp_path.glob("report.pdf*"))  # no partial file left for a reader


def test_pdf_from_a_hung_chromium_times_out_and_leaves_no_process(no_chromium, monkeypatch, tmp_path):
    pid_file = tmp_path / "child.pid"
    fake_browser(no_chromium, f"/bin/sleep 60 & echo $! > {pid_file}; wait")  # a browser and its renderer
    monkeypatch.setattr(render, "PDF_TIMEOUT_S", 1)
    html_path = render.write_html(page([]), tmp_path / "report.html")
    started = time.monotonic()
    with pytest.raises(JobError, match="did not print the PDF within 1 s"):
        render.write_pdf(html_path, tmp_path / "report.pdf")
    assert time.monotonic() - started < 10
    child = int(pid_file.read_text())
    for _ in range(50):  # killed with its whole process group; give the kernel a moment to reap it
        if not alive(child):
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        pytest.fail("Chromium's child process outlived the timeout")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
