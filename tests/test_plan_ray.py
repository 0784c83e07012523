"""`slobench plan --ray ADDRESS` on a real local Ray cluster started by the test: the grid runs
as Ray tasks (the workload shipped through the object store) and gives what local processes
give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ray_head import free_port, local_ray_head
from slobench.cli.main import app

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'slobench[ray]')")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    with local_ray_head(tmp_path_factory.mktemp("ray")) as address:
        yield address


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
                                 f"127.0.0.1:{free_port()}", "-o", str(tmp_path)])
    assert r.exit_code != 0 and "--ray" in r.output and "Traceback" not in r.output
