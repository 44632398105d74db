"""A local HTML file opened in headless Chromium, the way a reader opens an attached report.

Playwright drives Debian's ``chromium`` (the one `medq submit report --pdf` prints with, found by
``medq.common.report.render.chromium``); it never downloads a browser. Every request the page
makes is routed through here: ``file:`` and ``data:`` pass, anything else is recorded as a
violation and aborted, and the browser resolves no host names at all, so nothing can leave the
machine even if a request slipped past the route. Without Chromium or Playwright the test is
skipped locally and fails under ``CI=true`` (``tests/conftest.py: unavailable``).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from tests.conftest import unavailable

LOCAL_SCHEMES = ("file:", "data:")
VIEWPORT = {"width": 1200, "height": 900}
TIMEOUT_MS = 60_000
# Chromium's own flags: no GPU, no sandbox (root in CI containers), no background traffic, and
# every host name unresolvable (the route below is the check; this is the seatbelt).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND"]
# Every <img>: loaded (complete) and decoded to a real picture (naturalWidth > 0).
BROKEN_IMAGES_JS = """() => Array.from(document.images)
    .filter(img => !(img.complete && img.naturalWidth > 0))
    .map(img => (img.alt || '(no alt)') + ' <- ' + (img.getAttribute('src') || '').slice(0, 80))"""


class PageCheck(NamedTuple):
    violations: list[str]      # URLs the page asked for that are neither file: nor data:
    broken_images: list[str]   # "alt <- src" of every <img> that did not load
    title: str
    console_errors: list[str]  # console.error messages and uncaught page errors
    screenshot: Path


def browser_path() -> str:
    """Debian's Chromium (MEDQ_CHROMIUM or the first on PATH), or skip / fail under CI."""
    from medq.common.report.render import chromium

    exe = chromium()
    if exe is None:
        unavailable("chromium is not installed (Debian: apt-get install chromium)")
    return exe


def open_page(html_path: Path, screenshot: Path) -> PageCheck:
    """Open ``html_path`` in headless Chromium, wait for it to load, check its images, and take a
    full-page screenshot to ``screenshot`` (PNG)."""
    exe = browser_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[test]')")
    violations: list[str] = []
    console_errors: list[str] = []

    def route(route) -> None:
        url = route.request.url
        if url.startswith(LOCAL_SCHEMES):
            route.continue_()
        else:
            violations.append(url)
            route.abort("blockedbyclient")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=exe, args=FLAGS, timeout=TIMEOUT_MS)
        try:
            context = browser.new_context(viewport=VIEWPORT, service_workers="block")
            context.route("**/*", route)
            page = context.new_page()
            page.on("websocket", lambda socket: violations.append(socket.url))
            page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: console_errors.append(f"uncaught: {error}"))
            page.goto(Path(html_path).resolve().as_uri(), wait_until="load", timeout=TIMEOUT_MS)
            page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)
            broken = page.evaluate(BROKEN_IMAGES_JS)
            title = page.title()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True, timeout=TIMEOUT_MS)
        finally:
            browser.close()
    return PageCheck(violations, broken, title, console_errors, screenshot)
