"""Headless Chromium for the browser tests: Debian's ``chromium`` (``make node-deps``),
driven by Playwright's Python API (no browser download: nothing outside is reachable).

The flags keep Chromium off the network (it otherwise calls home at start, and this
machine refuses those connections) and let it run as root in a container (``--no-sandbox``:
the pages it opens are the tests' own, on loopback)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium, closed (with every page) on exit."""
    executable = CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")
    if executable is None:
        raise FileNotFoundError("no chromium: `make node-deps` installs Debian's package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()
