"""Open a rendered report in headless Chromium: console errors, network requests, screenshots.

The report's promise (self-contained, no console errors, plots present) is
only checked for real in a browser. This drives Debian's ``chromium`` through
``playwright`` (a dev dependency, imported lazily) without downloading a
browser: ``scripts/setup.sh`` installs the system package when it is absent.
Shared by the report tests and ``scripts/screenshot_report.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The browser binary (override with RELEASE_GATE_CHROMIUM).
CHROMIUM = Path(os.environ.get("RELEASE_GATE_CHROMIUM", "/usr/bin/chromium"))
#: Headless in a container: no sandbox (often unavailable), no GPU, nothing that phones home.
ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run")
VIEWPORT = {"width": 1280, "height": 900}


@dataclass
class OpenedReport:
    """A loaded page plus what it logged: console errors and uncaught exceptions, and every URL it asked for."""

    page: Any
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def external_requests(self) -> list[str]:
        """Requests that left the file itself (a self-contained report makes none)."""
        return [url for url in self.requests if not url.startswith(("file:", "data:", "about:"))]


def chromium_path() -> Path:
    if not CHROMIUM.is_file():
        raise FileNotFoundError(f"{CHROMIUM}: Chromium not found; run scripts/setup.sh (installs Debian's chromium) "
                                "or point RELEASE_GATE_CHROMIUM at a Chromium binary")
    return CHROMIUM


@contextmanager
def open_report(path: Path, color_scheme: str = "light", viewport: dict[str, int] | None = None,
                ) -> Iterator[OpenedReport]:
    """Load ``path`` (a report.html) in a fresh headless Chromium page; the browser closes on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium_path()), args=list(ARGS))
        try:
            page = browser.new_page(viewport=viewport or VIEWPORT, color_scheme=color_scheme)
            opened = OpenedReport(page)
            page.on("console", lambda message: opened.errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: opened.errors.append(str(error)))
            page.on("request", lambda request: opened.requests.append(request.url))
            page.goto(Path(path).resolve().as_uri(), wait_until="load")
            yield opened
        finally:
            browser.close()


def screenshot(report: Path, out: Path, full_page: bool = False, color_scheme: str = "light") -> Path:
    """A PNG of the report's first screen (or the whole page); refuses a page that logged errors."""
    with open_report(report, color_scheme) as opened:
        if opened.errors:
            raise RuntimeError(f"{report}: the page logged errors: {opened.errors}")
        out.parent.mkdir(parents=True, exist_ok=True)
        opened.page.screenshot(path=str(out), full_page=full_page)
    return out
