"""The command line as a user meets it: real subprocesses, real servers, real files."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slobench.client.journal import read_journal

SLOBENCH = [sys.executable, "-m", "slobench"]


def slobench(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SLOBENCH, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})},
                          stdin=subprocess.DEVNULL)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def only_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]  # not the catalog (catalog.sqlite)
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--slo", "chatbto: ttft<=1s"], ["chatbto", "chatbot"]),
        (["--slo", "chatbot ttft<=1s"], ["--slo"]),
        (["--slo", "chatbot: ttft<=fast"], ["fast"]),
        (["--rate", "-5"], ["--rate"]),
        (["--target", "http://127.0.0.1:9", "-d", "2s"], ["--target", "127.0.0.1:9"]),
        (["--target", "ftp://example"], ["--target"]),
        (["--duration", "soon"], ["--duration"]),
        (["--mode", "sideways"], ["--mode"]),
        (["--input-tokens", "lognormal:mean=-3"], ["--input-tokens"]),
        (["--extra-body", "{oops"], ["--extra-body"]),
        (["--workload", "missing.parquet"], ["missing.parquet"]),
        (["--engine", "vllmm"], ["--engine", "vllm"]),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, needles):
    proc = slobench("run", "--out", str(tmp_path / "runs"), *args, cwd=tmp_path)
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unwritable_output_dir(tmp_path, scripted_server):
    url = scripted_server({"ttft_s": 0.01, "tpot_s": 0.001})
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = slobench("run", "--target", url, "-n", "2", "--out", str(blocker / "runs"),
                    cwd=tmp_path)
    assert_one_line_error(proc, "--out")


def test_main_job_then_report(tmp_path):
    # one worker: the single journal below (more cores would shard the client by default)
    proc = slobench("run", "-d", "3s", "-r", "4", "--out", "runs", "--workers", "1",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = only_run(tmp_path / "runs")
    for name in ("manifest.json", "workload.parquet", "records.parquet", "summary.json",
                 "records.journal.jsonl"):
        assert (run / name).exists(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["tool"]["name"] == "slobench"
    assert {"python", "aiohttp", "pyarrow"} <= set(manifest["versions"])
    assert manifest["client_health"]["send_lag_s"]["count"] > 0
    assert manifest["token_counting"]
    assert manifest["config"]["workload_options"]["input_tokens"].startswith("lognormal")
    summary = json.loads((run / "summary.json").read_text())["summary"]
    assert summary["overall"]["requests"] > 0
    assert "goodput" in proc.stdout and "TTFT" in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 100

    rep = slobench("report", str(run), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert "TTFT" in rep.stdout
    rep_json = slobench("report", str(run), "--json", "--slo", "chatbot: ttft<=1us", cwd=tmp_path)
    data = json.loads(rep_json.stdout)
    assert data["summary"]["classes"]["chatbot"]["slo"]["attainment"] == 0.0


def test_report_on_missing_run_is_one_line(tmp_path):
    assert_one_line_error(slobench("report", str(tmp_path / "nope"), cwd=tmp_path), "nope")


def test_secrets_never_reach_disk(tmp_path, scripted_server):
    url = scripted_server({"ttft_s": 0.01, "tpot_s": 0.001})
    key, token = "sk-TESTSECRET-123456", "hdr-SECRET-987"
    proc = slobench("run", "--target", url.replace("http://", "http://user:pw-SECRET-1@"),
                    "-n", "3", "--out", "runs", "-H", f"X-Api-Token: {token}",
                    "--extra-body", '{"temperature": 0}', cwd=tmp_path,
                    env={"OPENAI_API_KEY": key})
    assert proc.returncode == 0, proc.stderr
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in (key, token, "pw-SECRET-1"):
                assert secret.encode() not in data, (path, secret)
    assert key not in proc.stdout + proc.stderr
    flag_key = "sk-FLAGSECRET-42"
    proc = slobench("run", "--target", url, "-n", "2", "--out", "runs2", "--api-key", flag_key,
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for path in (tmp_path / "runs2").rglob("*"):
        if path.is_file():
            assert flag_key.encode() not in path.read_bytes(), path


def _start_run(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*SLOBENCH, "run", "--out", "runs", "--workers", "1", *args],
                            cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, stdin=subprocess.DEVNULL)


def _wait_for_records(tmp_path: Path, n: int, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = list((tmp_path / "runs").glob("*/records.journal.jsonl"))
        if runs and runs[0].stat().st_size and len(runs[0].read_bytes().splitlines()) >= n:
            return runs[0].parent
        time.sleep(0.1)
    raise AssertionError("the run produced no records in time")


def test_sigkill_loses_at_most_about_a_second(tmp_path):
    import pyarrow.parquet as pq

    proc = _start_run(tmp_path, "-d", "60s", "-r", "10", "--output-tokens", "4")
    try:
        run = _wait_for_records(tmp_path, 10)
        # the run clock had reached at least the latest completion we can already see
        seen, _ = read_journal(run / "records.journal.jsonl")
        time.sleep(3.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the built-in server child too
    killed_at = max(seen["done_s"].to_pylist()) + 3.0  # a lower bound, in run-clock seconds
    table, _ = read_journal(run / "records.journal.jsonl")
    journaled = set(table["request_id"].to_pylist())
    planned = pq.read_table(run / "workload.parquet").to_pylist()
    # a request takes ~0.12 s (80 ms TTFT + 3 x 12 ms); every one that finished more than a
    # second before the kill must be in the journal
    due = [w["request_id"] for w in planned if w["arrival_s"] + 0.5 < killed_at - 1.0]
    assert len(due) >= 15
    missing = [r for r in due if r not in journaled]
    assert not missing, missing
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"
    rep = slobench("report", str(run), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert "did not finish" in rep.stdout


def test_ctrl_c_stops_cleanly_and_reports(tmp_path):
    proc = _start_run(tmp_path, "-d", "60s", "-r", "10", "--output-tokens", "50")
    try:
        run = _wait_for_records(tmp_path, 5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "TTFT" in out and "Interrupted" in out
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert (run / "records.parquet").exists()
    rep = slobench("report", str(run), cwd=tmp_path)
    assert rep.returncode == 0 and "interrupted" in rep.stdout


def test_workload_file_and_its_errors(tmp_path, scripted_server):
    import pyarrow as pa
    import pyarrow.parquet as pq

    url = scripted_server({"ttft_s": 0.01, "tpot_s": 0.002})
    pq.write_table(pa.table({"request_id": ["a", "b", "c"], "arrival_s": [0.0, 0.1, 0.2],
                             "input_tokens": [10, 20, 30], "output_tokens": [5, 6, 7],
                             "app": ["chatbot", "coding", "coding"]}), tmp_path / "w.parquet")
    proc = slobench("run", "--target", url, "--workload", "w.parquet", "--out", "runs",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = only_run(tmp_path / "runs")
    rows = pq.read_table(run / "records.parquet").to_pylist()
    assert sorted((r["request_id"], r["output_tokens"]) for r in rows) == [
        ("a", 5), ("b", 6), ("c", 7)]
    assert json.loads((run / "manifest.json").read_text())["workload"]["requests"] == 3

    pq.write_table(pa.table({"request_id": ["a"], "arrival_s": [0.0]}), tmp_path / "bad.parquet")
    proc = slobench("run", "--target", url, "--workload", "bad.parquet", cwd=tmp_path)
    assert_one_line_error(proc, "bad.parquet", "input_tokens")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    proc = slobench("run", "--target", url, "--workload", "junk.parquet", cwd=tmp_path)
    assert_one_line_error(proc, "junk.parquet")


def test_report_reads_a_journal_with_a_torn_last_line(tmp_path, scripted_server):
    url = scripted_server({"ttft_s": 0.01, "tpot_s": 0.002})
    proc = slobench("run", "--target", url, "-n", "6", "-r", "20", "--out", "runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = only_run(tmp_path / "runs")
    (run / "records.parquet").unlink()  # as if killed before the end ...
    with open(run / "records.journal.jsonl", "ab") as f:
        f.write(b'{"request_id": "torn", "sched')  # ... in the middle of a write
    rep = slobench("report", str(run), "--json", cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert json.loads(rep.stdout)["summary"]["total_requests"] == 6
    rep = slobench("report", str(run), cwd=tmp_path)
    assert "1 torn journal line(s) skipped" in rep.stdout


def _run_in_pty(args: list[str], cwd: Path, timeout: float = 60) -> tuple[int, str]:
    """Run slobench with a pseudo-terminal as stdout and stderr (the live display's path)."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen([*SLOBENCH, *args], cwd=cwd, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, env={**os.environ, "COLUMNS": "100"})
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=10), out.decode("utf-8", "replace")


def test_terminal_paths(tmp_path):
    rc, out = _run_in_pty(["run", "-t", "http://127.0.0.1:9", "--out", "runs"], tmp_path)
    assert rc == 2 and "Traceback" not in out and out.count("error: ") == 1, out
    rc, out = _run_in_pty(["run", "-d", "2s", "--out", "runs"], tmp_path)
    assert rc == 0 and "Traceback" not in out, out
    assert "goodput" in out and "in flight" in out  # the live display ran
