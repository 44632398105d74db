"""A report page to one self-contained HTML file (Jinja2, autoescaped), and that file to PDF
with headless Chromium when asked."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
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
    """The same page printed to PDF by headless Chromium (no network: the page needs none).

    Chromium runs in a session of its own, so a timeout ends it with every child it started (no
    renderer is left behind on the worker); a failed print leaves no partial file."""
    exe = chromium(browser)
    if exe is None:
        raise JobError("--pdf needs headless Chromium on the worker that renders the report (Debian: "
                       "apt-get install chromium; or set MEDQ_CHROMIUM to its path)")
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    partial = pdf_path.with_name(pdf_path.name + ".partial")
    try:
        with tempfile.TemporaryDirectory(prefix="medq-chromium-") as profile:
            returncode, stderr = _print(exe, profile, html_path, partial)
        if returncode != 0 or not partial.is_file() or partial.stat().st_size == 0:
            tail = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
            raise JobError(f"Chromium could not print the PDF (exit {returncode}: {tail[0][:200]})")
        os.replace(partial, pdf_path)
    finally:
        partial.unlink(missing_ok=True)
    return pdf_path


def _print(exe: str, profile: str, html_path: Path, partial: Path) -> tuple[int, str]:
    # --no-pdf-header-footer is Chromium's name since 111 (checked on 156: no date, title, file URL
    # or page number on the page); --print-to-pdf-no-header is the older one, ignored by newer ones.
    command = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--disable-extensions", f"--user-data-dir={profile}", "--no-pdf-header-footer",
               "--print-to-pdf-no-header", f"--print-to-pdf={partial}", html_path.resolve().as_uri()]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=PDF_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise JobError(f"Chromium did not print the PDF within {PDF_TIMEOUT_S} s") from exc
    return proc.returncode, stderr or ""
