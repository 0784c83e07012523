"""The fault matrix: protocol-level faults from a raw-socket server (tests/faultserver.py), and the
emulator's fault flags through ``slobench run``.

For each fault a run finishes (no hang, no exception), every faulty request gets a definite status
with an error message, every good request in the same run is ``ok`` with its tokens counted,
nothing is lost (one record per workload row), and the summary counts each status.
(tests/test_faults.py covers the faults an HTTP framework can produce: error statuses, resets,
malformed JSON, stalls.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from faultserver import MODES, FaultServer
from helpers import bench, fixed_workload, records_of
from slobench.benchmark import Analysis
from slobench.client.runner import Timeouts
from slobench.client.sse import MAX_EVENT_BYTES

FAST = Timeouts(request_s=2.0, connect_s=2.0, stall_s=0.5)
GOOD_TOKENS = 6

# fault mode -> the status its request must end with (``ok``: odd, but a correct answer)
MATRIX: dict[str, str] = {
    "truncated_chunk": "disconnect",  # chunk size line promising more than is sent, then close
    "bad_chunk_size": "protocol_error",  # a chunk size line that is not hexadecimal
    "garbage_status": "protocol_error",  # binary junk instead of a status line
    "empty_reply": "disconnect",  # connection closed without a byte
    "garbage_data": "protocol_error",  # invalid UTF-8 / binary junk as an event's data
    "junk_lines": "ok",  # binary junk lines that are not data fields: SSE ignores them
    "error_binary_body": "http_error",  # HTTP 500, binary body cut short, socket left open
    "half_close": "disconnect",  # FIN mid-stream, socket kept open
    "half_close_before_response": "disconnect",  # FIN before any response
    "huge_line": "protocol_error",  # a 50 MB SSE line without newline
    "huge_event": "protocol_error",  # 50 MB of data lines without the blank line
    "huge_header": "protocol_error",  # a 1 MB header line
    "endless_headers": "protocol_error",  # header lines without end
    "slow_headers": "timeout",  # slow loris: a header byte every 50 ms, past the request limit
    "never_ends": "timeout",  # headers, then not one body byte
    "short_content_length": "disconnect",  # half the body Content-Length announced, then close
    "close_delimited": "ok",  # HTTP/1.0, body ended by close: correct
}
assert set(MATRIX) | {"ok", "huge_body"} == set(MODES)


@pytest.fixture(scope="module")
def fault_url() -> Iterator[str]:
    with FaultServer() as url:
        yield url


def fault_workload(modes: list[str], gap_s: float = 0.05) -> pa.Table:
    """One request per mode, in order; the server reads the mode from the prompt."""
    wl = fixed_workload(len(modes), gap_s=gap_s, output_tokens=GOOD_TOKENS)
    return wl.set_column(wl.schema.get_field_index("prompt"), "prompt",
                         pa.array([f"fault={m} please answer" for m in modes]))


def check_run(a: Analysis, modes: list[str], expected: dict[str, str],
              timeouts: Timeouts = FAST, stream: bool = True) -> list[dict[str, Any]]:
    """The invariants every faulty run must keep; returns the records in workload order."""
    assert a.manifest["status"] == "complete"
    rows = records_of(a)
    by_id = {r["request_id"]: r for r in rows}
    ids = [f"q{i:04d}" for i in range(len(modes))]
    assert len(rows) == len(modes) and set(by_id) == set(ids)  # nothing lost, nothing extra
    for rid, mode in zip(ids, modes, strict=True):
        r = by_id[rid]
        want = expected.get(mode, "ok")
        assert r["status"] == want, f"{mode}: {r['status']} ({r['error']}), expected {want}"
        assert r["done_s"] is not None
        # no request outlives its limit (plus the slack of a loaded machine)
        assert r["done_s"] - r["scheduled_s"] < timeouts.request_s + 2.0, mode
        if want == "ok":
            assert r["error"] is None
            assert r["output_tokens"] == GOOD_TOKENS, mode
            assert r["first_token_s"] is not None
            if stream:
                assert len(r["token_times"]) == GOOD_TOKENS
        else:
            assert r["error"] and r["error"].strip(), f"{mode}: no error message"
            assert "\n" not in r["error"], f"{mode}: multi-line error {r['error']!r}"
    statuses = Counter(r["status"] for r in rows)
    overall = a.summary["overall"]
    assert overall["requests"] == len(rows)
    assert overall["ok"] == statuses.pop("ok", 0)
    assert overall["errors"] == dict(statuses)
    return [by_id[i] for i in ids]


@pytest.mark.parametrize("fault", list(MATRIX))
def test_fault(fault_url: str, tmp_path: Path, fault: str) -> None:
    modes = ["ok", fault, "ok", fault]
    a = bench(fault_url, fault_workload(modes), tmp_path, timeouts=FAST)
    rows = check_run(a, modes, MATRIX)
    bad = rows[1]
    if fault == "slow_headers":  # header bytes are no progress: the stall limit ends it
        assert bad["done_s"] - bad["sent_s"] < FAST.request_s * 0.9
        assert "stall limit" in bad["error"]
    elif fault == "never_ends":  # the stall timeout, long before the request limit
        assert bad["done_s"] - bad["sent_s"] < FAST.request_s
    elif fault in ("huge_line", "huge_event"):
        assert f"{MAX_EVENT_BYTES >> 20} MiB" in bad["error"]
        assert bad["output_tokens"] == 1  # the token before the huge line is kept
    elif fault == "error_binary_body":
        assert bad["http_status"] == 500 and bad["error"].startswith("HTTP 500")
    elif fault in ("truncated_chunk", "half_close"):
        assert bad["output_tokens"] == 2  # what arrived before the cut is measured


def test_all_faults_mixed_in_one_run(fault_url: str, tmp_path: Path) -> None:
    """Every fault twice among good requests, overlapping: a broken connection never leaks into
    the request that takes the next one from the pool."""
    modes = [m for fault in MATRIX for m in ("ok", fault, fault)] + ["ok"] * 4
    a = bench(fault_url, fault_workload(modes, gap_s=0.01), tmp_path, timeouts=FAST)
    check_run(a, modes, MATRIX)


class PeakRSS:
    """The process's resident memory, sampled every 5 ms on a thread (Linux /proc)."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def now(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc")
@pytest.mark.parametrize("fault", ["huge_line", "huge_event", "huge_body"])
def test_huge_input_memory_is_bounded(tmp_path: Path, fault: str) -> None:
    """256 MB without a line or event end: the client stops at its limit (32 MiB) instead of
    buffering it all (which grew its memory by ~260 MB, measured)."""
    modes = ["ok", fault, "ok"]
    stream = fault != "huge_body"
    with FaultServer(huge_mb=256) as url:
        # a first run in this process allocates what every run needs: not counted
        bench(url, fault_workload(["ok"]), tmp_path / "warm", timeouts=FAST, stream=stream)
        with PeakRSS() as rss:
            a = bench(url, fault_workload(modes), tmp_path, timeouts=FAST, stream=stream)
    check_run(a, modes, {fault: "protocol_error"}, stream=stream)
    growth_mb = (rss.peak - rss.start) / 2**20
    assert growth_mb < 128, f"client memory grew {growth_mb:.0f} MB on 256 MB of {fault}"


def test_emulator_faults_through_the_cli(tmp_path: Path) -> None:
    """HTTP errors, dropped streams and stalls from the emulator's fault flags, in one
    ``slobench run``: the terminal summary and summary.json count each, and agree with the
    records."""
    from slobench.engine.config import EngineConfig
    from slobench.engine.emulator import EmulatorProcess, Faults

    n, tokens = 60, 16
    faults = Faults(error_rates={429: 0.15, 503: 0.1}, disconnect_rate=0.15, stall_rate=0.1,
                    stall_s=5.0, seed=3)
    with EmulatorProcess(EngineConfig(model="qwen3-8b", gpu="h200"), faults) as emu:
        proc = subprocess.run(
            [sys.executable, "-m", "slobench", "run", "--target", emu.base_url,
             "--requests", str(n), "--rate", "30", "--input-tokens", "32",
             "--output-tokens", str(tokens), "--stall-timeout", "1s", "--timeout", "5s",
             "--workers", "1", "--seed", "1", "--out", "runs"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    (run,) = (p.parent for p in (tmp_path / "runs").glob("*/manifest.json"))
    rows = pq.read_table(run / "records.parquet").to_pylist()
    assert len(rows) == n  # nothing lost
    statuses = Counter(r["status"] for r in rows)
    assert set(statuses) == {"ok", "http_error", "disconnect", "timeout"}, statuses
    for r in rows:
        if r["status"] == "ok":
            assert r["output_tokens"] == tokens
        else:
            assert r["error"]
        if r["status"] == "http_error":
            assert r["http_status"] in (429, 503) and "injected fault" in r["error"]
    errors = {k: v for k, v in statuses.items() if k != "ok"}
    overall = json.loads((run / "summary.json").read_text())["summary"]["overall"]
    assert overall["requests"] == n and overall["ok"] == statuses["ok"]
    assert overall["errors"] == errors
    shown = re.search(r"Errors: (.*?)\.\n", proc.stdout)
    assert shown, proc.stdout
    counted = dict(item.rsplit(" ", 1) for item in shown.group(1).split(", "))
    assert {k: int(v) for k, v in counted.items()} == errors

