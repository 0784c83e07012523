"""Headless Chromium for tests: Debian's ``chromium`` driven by Playwright, with no network.

A pytest plugin (``pytest_plugins = ["browser"]`` in conftest.py) providing the ``browser``
fixture::

    def test_page(browser):
        page = browser.open(path_or_url)       # a file path, file:// or http://127.0.0.1 URL
        ...
        browser.assert_clean()                 # no console error, no network attempt

Every request that is not ``file:``, ``data:``, ``blob:`` or to 127.0.0.1/localhost is aborted and
recorded (``browser.blocked``); Chromium's own resolver maps every other host to nothing as well.
Console errors and uncaught page exceptions are recorded (``browser.errors``).

The browser starts lazily at the first ``open()``: Playwright's sync API runs an event loop of its
own while it is up, so make run directories (anything using asyncio in this thread) first.
Skips with the reason when Chromium or Playwright is missing (``scripts/test-setup.sh`` installs
Chromium; the ``dev`` extra installs Playwright; no browser is ever downloaded).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

try:
    from playwright.sync_api import TimeoutError as BrowserTimeout
except ImportError:  # the fixture skips then; this name must still import
    BrowserTimeout = TimeoutError  # type: ignore[misc,assignment]

CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-default-browser-check",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
)
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
LOCAL_SCHEMES = frozenset({"file", "data", "blob", "about", "chrome-error"})


def chromium_path() -> str | None:
    """Debian's Chromium (``chromium`` on PATH, else /usr/bin/chromium), or None."""
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return True
    return parts.scheme in ("http", "https", "ws", "wss") and (parts.hostname or "") in LOCAL_HOSTS


class Browser:
    """One headless Chromium with a fresh profile; pages opened through it are watched."""

    def __init__(self, executable: str, profile_dir: Path) -> None:
        self.executable = executable
        self.profile_dir = profile_dir
        self.errors: list[str] = []
        self.blocked: list[str] = []
        self.requests: list[str] = []
        self._pw: Any = None
        self._context: Any = None

    @property
    def context(self) -> Any:
        """The Playwright BrowserContext (started on first use)."""
        if self._context is None:
            from playwright.sync_api import sync_playwright

            self._pw = sync_playwright().start()
            self._context = self._pw.chromium.launch_persistent_context(
                str(self.profile_dir), executable_path=self.executable, headless=True,
                args=list(CHROMIUM_ARGS), service_workers="block", offline=False)
            self._context.route("**/*", self._route)
            self._context.on("request", lambda req: self.requests.append(req.url))
            self._context.on("weberror", lambda e: self.errors.append(f"weberror: {e.error}"))
        return self._context

    def _route(self, route: Any) -> None:
        url = route.request.url
        if is_local(url):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("blockedbyclient")

    def new_page(self) -> Any:
        page = self.context.new_page()
        page.on("console", lambda msg: msg.type == "error"
                and self.errors.append(f"console: {msg.text}"))
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("websocket", lambda ws: None if is_local(ws.url)
                else self.blocked.append(ws.url))
        return page

    def open(self, target: str | Path, *, wait_until: str = "load", timeout_s: float = 30
             ) -> Any:
        """A new page at ``target`` (a path opens as file://), loaded."""
        url = Path(target).resolve().as_uri() if not str(target).startswith(
            ("file:", "http:", "https:")) else str(target)
        page = self.new_page()
        page.goto(url, wait_until=wait_until, timeout=timeout_s * 1000)
        return page

    def off_host_requests(self) -> list[str]:
        """Every non-local URL the pages tried: aborted by the route, or seen at all."""
        return self.blocked + [u for u in self.requests if not is_local(u)]

    def assert_clean(self) -> None:
        """No console error, no uncaught exception, no attempt to reach the network."""
        assert not self.errors, self.errors
        assert not self.off_host_requests(), self.off_host_requests()

    def close(self) -> None:
        if self._context is not None:
            self._context.close()
            self._context = None
        if self._pw is not None:
            self._pw.stop()
            self._pw = None


@pytest.fixture
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Headless Debian Chromium with a fresh profile and no network (see the module doc)."""
    exe = chromium_path()
    if exe is None:
        pytest.skip("Chromium is not installed (run scripts/test-setup.sh, or "
                    "apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright (Python) is not installed: pip install -e '.[dev]'")
    b = Browser(exe, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()
