"""A real local Ray head for tests (``ray start --head`` on 127.0.0.1, stopped afterwards)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_ray_head(temp: Path, cpus: int = 2) -> Iterator[str]:
    """Start a one-node Ray cluster; yield its address (HOST:PORT)."""
    exe = Path(sys.executable).with_name("ray")
    if not exe.exists():
        exe = Path(shutil.which("ray") or "ray")
    port = free_port()
    # A loopback test cluster: no token authentication on either side (Ray turns it on when a
    # token file exists in ~/.ray, which an earlier Ray session may have left).
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env = dict(os.environ)
    started = subprocess.run(
        [str(exe), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         f"--num-cpus={cpus}", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp}"], env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(exe), "stop", "--force"], env=env, capture_output=True, timeout=120)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
