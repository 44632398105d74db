"""A report page to one self-contained HTML file (Jinja2, autoescaped), and that file to PDF
with headless Chromium when asked."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jinja2

from medq.common.errors import JobError
from medq.common.report.page import Page

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("medq.common.report", "templates"),
                          autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                          trim_blocks=True, lstrip_blocks=True)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PDF_TIMEOUT_S = 120


def html(page: Page) -> str:
    from medq.common import __version__

    return _ENV.get_template("report.html.j2").render(page=page, version=__version__)


def write_html(page: Page, path: Path) -> Path:
    """Write the page atomically (a reader never sees half a file)."""
    from medq.common.atomic_files import write_atomic

    text = html(page).encode("utf-8")
    return write_atomic(path, lambda handle: handle.write(text), needed=len(text))


def chromium(explicit: str | None = None) -> str | None:
    """The headless browser that prints PDFs: ``MEDQ_CHROMIUM`` or the first on PATH."""
    for name in (explicit, os.environ.get("MEDQ_CHROMIUM"), *CHROMIUM_NAMES):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def write_pdf(html_path: Path, pdf_path: Path, browser: str | None = None) -> Path:
    """The same page printed to PDF by headless Chromium (no network: the page needs none)."""
    exe = chromium(browser)
    if exe is None:
        raise JobError("--pdf needs headless Chromium on the worker that renders the report (Debian: "
                       "apt-get install chromium; or set MEDQ_CHROMIUM to its path)")
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    partial = pdf_path.with_name(pdf_path.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="medq-chromium-") as profile:
        command = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
                   f"--user-data-dir={profile}", "--no-pdf-header-footer", f"--print-to-pdf={partial}",
                   html_path.resolve().as_uri()]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PDF_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise JobError(f"Chromium did not print the PDF within {PDF_TIMEOUT_S} s") from exc
    if done.returncode != 0 or not partial.is_file() or partial.stat().st_size == 0:
        tail = (done.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise JobError(f"Chromium could not print the PDF (exit {done.returncode}: {tail[0][:200]})")
    os.replace(partial, pdf_path)
    return pdf_path
