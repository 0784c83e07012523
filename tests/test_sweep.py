"""``slobench sweep``: a live server-parameter grid, each point its own server and run."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slobench.cli.main import app
from slobench.errors import UserError
from slobench.sweep import SweepServer, load_sweep, process_gone, run_sweep

PY = sys.executable


def write(tmp: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process_gone(pid):
            return True
        time.sleep(0.05)
    return False


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_sweep_runs_the_emulator_at_each_point(tmp_path: Path) -> None:
    f = write(tmp_path, f"""
command = "{PY} -m slobench emulate --port {{port}} --max-num-seqs {{seqs}}"
health = "/health"
startup_timeout = "60s"
[grid]
seqs = [4, 64]
[scenario]
rate = 4
duration = "2s"
input_tokens = "64"
output_tokens = "8"
""")
    out = tmp_path / "runs"
    r = CliRunner().invoke(app, ["sweep", str(f), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    (folder,) = out.glob("sweep-*")
    data = json.loads((folder / "sweep.json").read_text())
    points = data["points"]
    assert sorted(p["params"]["seqs"] for p in points) == [4, 64]
    goodputs = [p["goodput_rps"] for p in points]
    assert goodputs == sorted(goodputs, reverse=True)
    for p in points:
        assert p["status"] == "ok", p
        assert p["attainment"] is not None and p["ttft_p99_s"] is not None
        manifest = json.loads((Path(p["run_dir"]) / "manifest.json").read_text())
        assert manifest["sweep"]["params"] == p["params"]
        assert manifest["sweep"]["command"][-1] == str(p["params"]["seqs"])
        assert manifest["target"]["url"].startswith("http://127.0.0.1:")
        assert manifest["config"]["workload_options"]["sweep"]["params"] == p["params"]
        assert gone(p["pid"]) and group_gone(p["pid"])
    assert "seqs=4" in r.output and "seqs=64" in r.output
    assert all(len(line) <= 100 for line in r.output.splitlines())


def test_a_server_that_exits_fails_its_point_and_the_sweep_goes_on(tmp_path: Path) -> None:
    code = "import sys; sys.stderr.write('boom: bad flag {x}\\n'); sys.exit(3)"
    f = write(tmp_path, json.dumps({
        "command": [PY, "-c", code], "startup_timeout": "20s",
        "grid": {"x": [1, 2]}, "scenario": {"duration": "2s"}}), "sweep.json")
    out = tmp_path / "runs"
    r = CliRunner().invoke(app, ["sweep", str(f), "-o", str(out)])
    assert r.exit_code == 1, r.output
    data = json.loads(next(out.glob("sweep-*/sweep.json")).read_text())
    assert [p["status"] for p in data["points"]] == ["failed", "failed"]
    tails = sorted(p["stderr_tail"] for p in data["points"])
    assert tails == ["boom: bad flag 1", "boom: bad flag 2"]
    assert all("exited with code 3" in p["error"] for p in data["points"])
    assert "boom: bad flag" in r.output


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    child = tmp_path / "child.pid"
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, "
            "signal.SIG_IGN); p = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']); "
            f"open({str(child)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    srv = SweepServer([PY, "-c", code], base_url="http://127.0.0.1:1", health="/health",
                      log_dir=tmp_path, name="p", startup_timeout_s=5, grace_s=0.5)
    srv.start()
    deadline = time.monotonic() + 10
    while not child.exists() or not child.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid, grandchild = srv.pid, int(child.read_text())
    assert pid is not None
    srv.stop()  # the leader ignores SIGTERM: SIGKILL after the grace period
    assert gone(pid) and gone(grandchild) and group_gone(pid)


def test_interrupt_stops_the_server_and_skips_the_rest(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(tmp_path, f"""
command = ["{PY}", "-c", "import time; time.sleep(60)", "{{n}}"]
[grid]
n = [1, 2, 3]
[scenario]
duration = "2s"
""")

    def interrupted(self: SweepServer) -> float:
        raise KeyboardInterrupt

    monkeypatch.setattr(SweepServer, "wait_healthy", interrupted)
    result = run_sweep(load_sweep(f), out=tmp_path / "runs")
    assert result.interrupted
    assert [p.status for p in result.points] == ["interrupted", "skipped", "skipped"]
    pid = result.points[0].pid
    assert pid is not None and gone(pid) and group_gone(pid)
    data = json.loads((result.folder / "sweep.json").read_text())
    assert data["interrupted"] is True


@pytest.mark.parametrize(("text", "message"), [
    ('command = "x {port} {a}"\ncolor = 1\n[grid]\na = [1]\n', "unknown key 'color'"),
    ('command = "x {a}"\n[grid]\na = 5\n', "grid.a: must be a non-empty list"),
    ('command = "x {a}"\n[grid]\na = ["1; rm -rf /"]\n', "grid.a: value '1; rm -rf /'"),
    ('command = "x {a}"\n[grid]\na = ["$(id)"]\n', "not a simple string"),
    ('command = "x {a}"\n[grid]\na = [true]\n', "neither a number"),
    ('command = "x {b}"\n[grid]\na = [1]\n', "unknown placeholder '{b}'"),
    ('command = "x {a} | tee log"\n[grid]\na = [1]\n', "shell operator"),
    ('command = "x {a}"\n[grid]\na = [1]\n[scenario]\nrat = "4"\n',
     "scenario.rat: unknown key; did you mean 'rate'?"),
    ('command = "x {a}"\n[grid]\na = [1]\n[scenario]\nduration = "soon"\n',
     "scenario.duration"),
    ('command = "x {a}"\ngrid = [1]\n', "grid: give a table"),
    ('command = "x {port}"\n[grid]\nport = [1]\n', "grid.port"),
    ('[grid]\na = [1]\n', "command: missing"),
    ('command = "x {a}\n', "not valid TOML"),
])
def test_bad_files_give_one_error_line(tmp_path: Path, text: str, message: str) -> None:
    f = write(tmp_path, text)
    with pytest.raises(UserError, match=None) as exc:
        load_sweep(f)
    assert message in str(exc.value) and str(f) in str(exc.value)
    r = CliRunner().invoke(app, ["sweep", str(f), "-o", str(tmp_path / "runs")])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(f) in lines[0], r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "runs").exists()


def test_check_lists_points_and_starts_nothing(tmp_path: Path) -> None:
    f = write(tmp_path, 'command = "server --p {port} --a {a} --b {b}"\n[grid]\na = [1, 2]\n'
                        'b = ["x", "y.z"]\n')
    r = CliRunner().invoke(app, ["sweep", str(f), "--check"])
    assert r.exit_code == 0, r.output
    assert "4 points" in r.output and "a=2 b=y.z" in r.output
    spec = load_sweep(f)
    assert spec.argv({"a": 1, "b": "y.z"}, 8123) == ["server", "--p", "8123", "--a", "1",
                                                    "--b", "y.z"]


def test_a_bad_scenario_fails_before_any_server_starts(tmp_path: Path) -> None:
    f = write(tmp_path, 'command = "x {a}"\n[grid]\na = [1]\n[scenario]\nrate = "fast"\n')
    r = CliRunner().invoke(app, ["sweep", str(f), "-o", str(tmp_path / "runs")])
    assert r.exit_code == 2
    assert r.output.startswith(f"error: {f}: [scenario]: --rate") and r.output.count("\n") == 1
    assert not (tmp_path / "runs").exists()
