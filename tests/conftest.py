"""Shared fixtures: scripted OpenAI-compatible servers over real HTTP, and a refused port."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from slobench.engine.scripted import DEFAULT_MODEL, Script, ScriptedServerProcess

pytest_plugins = ["browser"]  # the ``browser`` fixture: headless Chromium (tests/browser.py)

# Runs made by the tests go to each test's own catalog (next to its run directories), never to
# a catalog a developer's shell points at.
os.environ.pop("SLOBENCH_CATALOG", None)


class ScriptedServerFactory:
    """``make(script=None, model=...) -> base_url``; every server it starts is stopped at teardown.

    ``make.processes[base_url]`` is the :class:`ScriptedServerProcess` behind a URL.
    """

    def __init__(self) -> None:
        self.processes: dict[str, ScriptedServerProcess] = {}

    def __call__(
        self, script: Script | dict[str, Any] | None = None, model: str = DEFAULT_MODEL
    ) -> str:
        srv = ScriptedServerProcess(script, model=model)
        url = srv.start()
        self.processes[url] = srv
        return url

    def close(self) -> None:
        for srv in self.processes.values():
            srv.stop()
        self.processes.clear()


@pytest.fixture
def scripted_server() -> Iterator[ScriptedServerFactory]:
    """A factory starting scripted servers in subprocesses: ``url = scripted_server({...})``."""
    factory = ScriptedServerFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def free_port_refused() -> str:
    """A URL on 127.0.0.1 whose port has nothing listening: connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
