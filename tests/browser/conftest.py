"""A real headless Chromium (Debian's, driven by Playwright) against the embedded server.

The browser tests skip, with one line saying why, only where no browser can be had: no
Playwright package or no Chromium binary. Under CI (``CI`` set) that is a failure
instead, since ``.ci/run`` installs both. Each test gets a fresh browser context; its
console errors and uncaught page errors fail the test, and its last screenshot goes to
``tests/browser/screenshots/`` (ignored by git).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SCREENSHOTS = Path(__file__).parent / "screenshots"
XSS = "<img src=x onerror=alert(1)>"  # a name that must show as text on every page

# Colored (not grey) pixels of a chart's canvas: the lines; the grid and axes are grey.
COLORED_PIXELS = """(selector) => {
  const canvas = document.querySelector(selector + " canvas");
  if (!canvas) return 0;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 0 && (Math.abs(data[i] - data[i + 1]) > 30 || Math.abs(data[i + 1] - data[i + 2]) > 30)) n++;
  }
  return n;
}"""

# As the tool library says Chromium must run here: no sandbox as root, no GPU, and no
# background traffic (this machine has no network beyond loopback).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str | None:
    for candidate in (os.environ.get("MLBENCH_METRICS_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run in CI: {reason} (.ci/run installs them)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("no browser driver: pip install -e '.[test]' installs playwright")
    executable = _chromium()
    if executable is None:
        _unavailable("no Chromium: apt-get install chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class PageProbe:
    """A page with what it printed to the console, its errors and the dialogs it opened."""

    def __init__(self, page: Any, name: str) -> None:
        self.page = page
        self.name = name
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.answer_dialogs = False
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        if dialog.type == "confirm" and self.answer_dialogs:
            dialog.accept()
        else:
            dialog.dismiss()

    def shot(self, suffix: str = "") -> Path:
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"{self.name}{suffix}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def probe(browser: Any, request: pytest.FixtureRequest) -> Iterator[PageProbe]:
    """A fresh context and page; fails the test on console errors, saves a screenshot."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    probe = PageProbe(page, request.node.name.replace("[", "-").replace("]", ""))
    try:
        yield probe
        probe.shot()
        assert probe.errors == [], "the page logged errors"
        assert [d for d in probe.dialogs if d.startswith("alert")] == [], "the page opened an alert"
    finally:
        context.close()
