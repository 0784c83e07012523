"""``--sessions`` on the command line: real subprocesses, real files, a real (scripted) server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from slobench.schema import conform_workload, session_links

SLOBENCH = [sys.executable, "-m", "slobench"]


def slobench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SLOBENCH, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ), stdin=subprocess.DEVNULL)


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def find(obj: Any, key: str) -> Any:
    """The first value of ``key`` anywhere in nested dicts."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            if (found := find(v, key)) is not None:
                return found
    return None


def test_generate_profile_with_sessions_then_inspect(tmp_path):
    proc = slobench("generate", "--profile", "language", "--sessions", "auto", "-d", "10min",
                    "-o", "x.parquet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "sessions" in proc.stdout
    t = conform_workload(pq.read_table(tmp_path / "x.parquet"))
    arrival = t["arrival_s"].to_numpy()
    assert (np.diff(arrival) >= 0).all() and arrival.max() < 600
    turn = t["turn"].to_numpy()
    assert (turn > 0).mean() > 0.3
    prev, _ = session_links(t)
    # a steady start (the default): sessions under way at 0 have follow-ups with no turn before
    # them in the table (their earlier turns came before 0); every other follow-up links up
    resumed = (prev < 0) & (turn > 0)
    assert ((prev >= 0) <= (turn > 0)).all() and resumed.sum() > 100
    assert pc.match_substring(t.filter(resumed)["request_id"], ".p").to_numpy(
        zero_copy_only=False).all()
    assert (pc.list_value_length(t["prefix_blocks"]).to_numpy() > 0).all()
    # ... so the rate is steady from the start (the first minute vs the mean minute, ~11k
    # requests a minute); with an empty start the first minute has about half
    per_minute = np.bincount((arrival // 60).astype(int), minlength=10)
    assert abs(per_minute[0] / per_minute.mean() - 1) < 0.1, per_minute
    assert "follow-ups build up" not in proc.stdout

    proc = slobench("generate", "--profile", "language", "--sessions", "auto", "-d", "10min",
                    "--session-start", "empty", "-o", "y.parquet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "empty start" in proc.stdout and "follow-ups build up" in proc.stdout
    y = pq.read_table(tmp_path / "y.parquet")
    prev, _ = session_links(y)
    assert ((prev >= 0) == (y["turn"].to_numpy() > 0)).all()
    empty_minute = np.bincount((y["arrival_s"].to_numpy() // 60).astype(int), minlength=10)
    assert empty_minute[0] < 0.7 * empty_minute[5:].mean()
    assert y.num_rows < 0.95 * t.num_rows

    proc = slobench("workload", "inspect", "x.parquet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Sessions:" in proc.stdout and "Prefix blocks:" in proc.stdout
    stats = json.loads(slobench("workload", "inspect", "x.parquet", "--json",
                                cwd=tmp_path).stdout)
    assert stats["sessions"]["multi_turn_sessions"] > 1000
    assert stats["prefix"]["block_reuse"] > 0.3


def test_generate_pool_sessions_with_an_app_mix_per_client(tmp_path):
    proc = slobench("generate", "--profile", "reasoning", "--sessions", "agent", "--apps",
                    "coding:1,tool:1", "--app-scope", "client", "--session-rate", "sessions",
                    "-d", "5min", "-o", "r.parquet", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    t = pq.read_table(tmp_path / "r.parquet")
    apps = defaultdict(set)
    for c, a in zip(t["client_id"].to_pylist(), t["app"].to_pylist(), strict=True):
        apps[c].add(a)
    assert set().union(*apps.values()) <= {"coding", "tool"}
    assert all(len(a) == 1 for a in apps.values())
    turn = t["turn"].to_numpy()
    assert (turn > 0).any()
    reasoning = t["reasoning_tokens"].to_numpy()
    assert (reasoning > 0).any()  # a reasoning pool: outputs keep their reasoning part


def test_generate_synthetic_with_a_shapes_file(tmp_path):
    (tmp_path / "shapes.toml").write_text('[chatbot]\nturns = 4\nthink_s = "200ms"\n'
                                          'system_tokens = 1024\n')
    proc = slobench("generate", "--rate", "5", "-d", "2min", "--apps", "chatbot",
                    "--sessions", "file:shapes.toml", "--session-rate", "sessions",
                    "--prefix-block-tokens", "256", "-o", "s.parquet", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    t = pq.read_table(tmp_path / "s.parquet")
    _, counts = np.unique(t["session_id"].to_numpy(zero_copy_only=False), return_counts=True)
    assert (counts <= 4).all() and np.mean(counts == 4) > 0.9  # a few cut by the 2 min end
    think = t["think_s"].to_numpy()[t["turn"].to_numpy() > 0]
    assert np.allclose(think, 0.2)
    blocks = t["prefix_blocks"].to_pylist()
    inp = t["input_tokens"].to_numpy()
    assert all(len(b) == -(-n // 256) for b, n in zip(blocks, inp, strict=True))
    assert len({b[0] for b in blocks}) == 1  # one client: one shared system prompt


def test_a_bad_shape_file_is_one_line_without_traceback(tmp_path):
    (tmp_path / "bad.toml").write_text('[coding]\nturnz = 3\n')
    proc = slobench("generate", "-d", "1min", "-o", "w.parquet", "--sessions", "file:bad.toml",
                    cwd=tmp_path)
    one_line_error(proc, "bad.toml: [coding] turnz: unknown key; did you mean 'turns'")
    assert not (tmp_path / "w.parquet").exists()


@pytest.mark.parametrize(("args", "needles"), [
    (["--sessions", "file:bad.json"], ["bad.json: [chatbot] think_s: '10m' is not a duration"]),
    (["--sessions", "file:missing.toml"], ["missing.toml", "cannot read"]),
    (["--sessions", "sometimes"], ["--sessions 'sometimes'"]),
    (["--session-rate", "sessions"], ["--session-rate", "need --sessions"]),
    (["--app-scope", "client"], ["--app-scope", "need --sessions"]),
    (["--session-start", "empty"], ["--session-start", "need --sessions"]),
    (["--sessions", "auto", "--session-start", "warm"], ["--session-start 'warm'"]),
    (["--sessions", "auto", "--session-rate", "users"], ["--session-rate 'users'"]),
    (["--sessions", "auto", "--app-scope", "world"], ["--app-scope 'world'"]),
    (["--profile", "language", "--apps", "coding"], ["--apps", "--sessions"]),
    (["--profile", "language", "--sessions", "auto", "--apps", "coding", "--app", "chatbot"],
     ["--app", "--apps"]),
    (["--profile", "language", "--sessions", "auto", "--apps", "mine"],
     ["no session shape for app 'mine'"]),
    (["--prefix-block-tokens", "256"], ["--prefix-block-tokens", "--sessions"]),
])
def test_bad_session_options_are_one_clear_line(tmp_path, monkeypatch, args, needles):
    # In-process (the real command, no subprocess start-up): the same one-line errors.
    from typer.testing import CliRunner

    from slobench.cli.main import app

    (tmp_path / "bad.json").write_text(json.dumps({"chatbot": {"think_s": "10m"}}))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["generate", "-d", "1min", "-o", "w.parquet", *args])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "w.parquet").exists()


def test_run_with_sessions_sends_follow_ups_and_records_the_options(tmp_path, scripted_server):
    url = scripted_server({"ttft_s": 0.01, "tpot_s": 0.001})
    (tmp_path / "shapes.json").write_text(json.dumps(
        {"chatbot": {"turns": 3, "think_s": "100ms"}}))
    proc = slobench("run", "--target", url, "--sessions", "file:shapes.json", "--apps",
                    "chatbot", "--rate", "10", "-d", "2s", "--input-tokens", "64",
                    "--output-tokens", "8", "--out", "runs", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]  # before the second run
    manifest = json.loads((run / "manifest.json").read_text())
    assert find(manifest, "sessions") == "file:shapes.json"
    assert find(manifest, "session_rate") == "requests"
    assert find(manifest, "session_start") == "steady"
    assert find(manifest, "session_steady_after_s") == 0.0  # sessions under way at 0
    assert find(manifest, "session_mean_age_s") == pytest.approx(0.1)  # ages 0, .1, .2 s
    assert "build up" not in proc.stderr
    ids = pq.read_table(run / "records.parquet")["request_id"].to_pylist()
    assert any(i.endswith(".t1") for i in ids) and any(i.endswith(".t2") for i in ids)

    # An empty start: the rate builds up, and the run says so (no --warmup given).
    proc = slobench("run", "--target", url, "--sessions", "file:shapes.json", "--apps",
                    "chatbot", "--rate", "10", "-d", "2s", "--input-tokens", "64",
                    "--output-tokens", "8", "--session-start", "empty", "--out", "runs",
                    "--run-id", "empty", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "runs" / "empty" / "manifest.json").read_text())
    assert find(manifest, "session_start") == "empty"
    assert find(manifest, "session_steady_after_s") == pytest.approx(0.1)
    assert "follow-up turns build up" in proc.stderr and "--warmup 1s" in proc.stderr

    proc = slobench("run", "--target", url, "--profile", "language", "--apps", "coding",
                    "-d", "1s", cwd=tmp_path)
    one_line_error(proc, "--apps", "--sessions")
