"""Servers in subprocesses: the handshake, the parent watch, and a clean stop.

A server module run as ``python -m MODULE ... --parent-pid PID`` prints exactly one line
``LISTENING http://HOST:PORT`` once it serves, and exits by itself when the process that started
it is gone (even SIGKILLed), so no orphan is ever left behind. Running the server in its own
process also keeps its CPU out of the client's health figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """Set ``stop`` when the process that started us is gone."""
    while not stop.is_set():
        if os.getppid() != parent_pid:
            stop.set()
            return
        await asyncio.sleep(0.5)


async def serve_until_stopped(start: Callable[[], Awaitable[tuple[str, Callable[[], Awaitable[
        Any]]]]], parent_pid: int | None) -> None:
    """Start a server (``start`` returns its URL and an async cleanup), announce it, and run
    until SIGTERM/SIGINT or the parent's death."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, stop.set)
    base_url, cleanup = await start()
    watcher = loop.create_task(watch_parent(parent_pid, stop)) if parent_pid else None
    try:
        sys.stdout.write(f"LISTENING {base_url}\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        if watcher:
            watcher.cancel()
        await cleanup()


def run_event_loop(coro: Awaitable[None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


class ServerProcess:
    """Run ``python -m MODULE ARGS`` as a server for the duration of a ``with`` block."""

    what = "server"

    def __init__(self, module: str, args: list[str], *, startup_timeout_s: float = 20.0) -> None:
        self.module = module
        self.args = args
        self.startup_timeout_s = startup_timeout_s
        self.base_url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None

    def start(self) -> str:
        """Start the server and wait for it to listen; returns its base URL."""
        if self.proc is not None:
            return self.base_url
        src_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", self.module, *self.args, "--parent-pid", str(os.getpid())]
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, env=env
        )
        try:
            line = self._read_line(self.proc, self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.base_url = line.split(" ", 1)[1].strip()
        return self.base_url

    def _read_line(self, proc: subprocess.Popen[bytes], timeout_s: float) -> str:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{self.what} did not start within {timeout_s:g} s"
                                       f"{self._stderr_tail()}")
                if not sel.select(left):
                    continue
                data = os.read(proc.stdout.fileno(), 4096)
                if not data:
                    proc.wait(timeout=5)
                    raise RuntimeError(f"{self.what} exited with code {proc.returncode} before "
                                       f"listening{self._stderr_tail()}")
                buf += data
        line = buf.split(b"\n", 1)[0].decode()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"{self.what} printed {line!r} instead of LISTENING")
        return line

    def stderr_text(self) -> str:
        """Everything the server wrote to stderr so far (empty while all is well)."""
        if self._stderr is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            fd = self._stderr.fileno()  # shared with the child: pread leaves its offset alone
            return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
        return ""

    def _stderr_tail(self) -> str:
        text = self.stderr_text().strip()
        return ":\n" + text[-2000:] if text else ""

    def stop(self) -> None:
        """SIGTERM the server, then kill it if it has not exited within 5 s."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
