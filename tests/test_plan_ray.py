"""`slobench plan --ray ADDRESS` on a real local Ray cluster started by the test: the grid runs
as Ray tasks (the workload shipped through the object store) and gives what local processes
give."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slobench.cli.main import app

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'slobench[ray]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    exe = Path(sys.executable).with_name("ray")
    if not exe.exists():
        exe = Path(shutil.which("ray") or "ray")
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    # A loopback test cluster: no token authentication on either side (Ray turns it on when a
    # token file exists in ~/.ray, which an earlier Ray session may have left).
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env = dict(os.environ)
    started = subprocess.run(
        [str(exe), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
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


def _plan(tmp_path: Path, *extra: str) -> list[dict]:
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["plan", "--rate", "30", "-d", "60s", "--gpu", "h100,l40s",
                                 "-o", str(out), *extra])
    assert r.exit_code == 0, r.output
    (folder,) = out.glob("plan-*")
    return json.loads((folder / "plan.json").read_text())["results"]


def test_plan_grid_on_a_ray_cluster_matches_local_processes(ray_head, tmp_path):
    on_ray = _plan(tmp_path / "ray", "--ray", ray_head)
    local = _plan(tmp_path / "local", "-j", "1")
    assert [(r["gpu"], r["replicas"], r["attainment"]) for r in on_ray] == [
        (r["gpu"], r["replicas"], r["attainment"]) for r in local]


def test_unreachable_ray_address_is_one_clear_error(tmp_path):
    r = CliRunner().invoke(app, ["plan", "--rate", "5", "-d", "10s", "--ray",
                                 f"127.0.0.1:{_free_port()}", "-o", str(tmp_path)])
    assert r.exit_code != 0 and "--ray" in r.output and "Traceback" not in r.output
