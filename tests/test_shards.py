"""Sharding the client over worker processes (``--workers N``), against real scripted servers.

Partitioning is pure and tested on its own; the runs drive the scripted server over HTTP with
real worker processes, and the crash tests kill real processes (a worker, the parent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web

from helpers import fixed_workload
from slobench.benchmark import Analysis, BenchmarkConfig, TargetConfig, run_benchmark
from slobench.client.journal import read_journal
from slobench.client.pacing import LoadPlan
from slobench.client.runner import Timeouts
from slobench.client.shards import effective_workers, partition, shard_plans, split_count
from slobench.engine.scripted import make_app
from slobench.schema import conform_workload
from slobench.store.rundir import RunDir

SLOBENCH = [sys.executable, "-m", "slobench"]
FAST = {"ttft_s": 0.02, "tpot_s": 0.005}


def mixed_workload(lone: int = 30, sessions: int = 8, turns: int = 3, gap_s: float = 0.04,
                   output_tokens: int = 8) -> pa.Table:
    """Lone requests every ``gap_s`` plus multi-turn sessions whose starts are interleaved."""
    ids, arrival, sid, turn, think = [], [], [], [], []
    for i in range(lone):
        ids.append(f"r{i:03d}")
        arrival.append(0.02 + i * gap_s)
        sid.append("")
        turn.append(0)
        think.append(0.0)
    for s in range(sessions):
        for t in range(turns):
            ids.append(f"s{s:02d}t{t}")
            arrival.append(0.03 + s * gap_s * 2)  # follow-ups: not before their session start
            sid.append(f"s{s:02d}")
            turn.append(t)
            think.append(0.03 if t else 0.0)
    n = len(ids)
    return conform_workload(pa.table({
        "request_id": ids, "arrival_s": arrival, "client_id": [f"c{i % 3}" for i in range(n)],
        "app": ["chatbot"] * n, "session_id": sid, "turn": pa.array(turn, pa.int32()),
        "think_s": think, "input_tokens": np.full(n, 24, dtype=np.int64),
        "output_tokens": np.full(n, output_tokens, dtype=np.int64)}))


def run(url: str, workload: pa.Table, out: Path, *, workers: int, plan: LoadPlan | None = None,
        run_id: str | None = None, on_start: Any = None, on_progress: Any = None) -> Analysis:
    cfg = BenchmarkConfig(target=TargetConfig(url=url), plan=plan or LoadPlan(mode="open"),
                          timeouts=Timeouts(request_s=30, stall_s=10), out=out, run_id=run_id,
                          workers=workers, html_report=False, scrape_interval_s=0)
    return run_benchmark(workload, cfg, on_start=on_start, on_progress=on_progress)


def records(a: Analysis) -> list[dict[str, Any]]:
    return pq.read_table(a.run.path / "records.parquet").to_pylist()


# -- partitioning ----------------------------------------------------------------------------


def test_partition_keeps_sessions_whole_and_deals_arrivals_evenly():
    wl = mixed_workload(lone=41, sessions=9)
    parts = partition(wl, 3)
    every = np.sort(np.concatenate(parts))
    assert every.tolist() == list(range(wl.num_rows))  # each row exactly once
    sid = wl["session_id"].to_pylist()
    shard_of = {int(i): k for k, p in enumerate(parts) for i in p}
    for s in {x for x in sid if x}:
        assert len({shard_of[i] for i, x in enumerate(sid) if x == s}) == 1, s
    # units (sessions, lone rows) by first arrival are dealt round-robin: in every prefix of
    # the arrival stream the shards' counts differ by at most one
    arrival = wl["arrival_s"].to_numpy()
    firsts: dict[str, tuple[float, int]] = {}
    for i, (s, t) in enumerate(zip(sid, arrival, strict=True)):
        key = s or f"#{i}"
        firsts[key] = min(firsts.get(key, (t, i)), (t, i))
    order = sorted(firsts, key=lambda k: firsts[k])
    counts = [0, 0, 0]
    for key in order:
        counts[shard_of[firsts[key][1]]] += 1
        assert max(counts) - min(counts) <= 1
    assert partition(wl, 1)[0].tolist() == list(range(wl.num_rows))
    assert [p.size for p in partition(wl.slice(0, 0), 2)] == [0, 0]


def test_plans_split_users_and_limits_into_shares_that_sum_up():
    assert split_count(7, 3) == [3, 2, 2]
    closed = shard_plans(LoadPlan(mode="closed", users=5, max_requests=9, max_concurrency=3), 2)
    assert [len(p.user_starts or []) for p in closed] == [3, 2]
    assert [p.plan.users for p in closed] == [3, 2]
    assert [p.plan.max_requests for p in closed] == [5, 4]
    assert [p.plan.max_concurrency for p in closed] == [2, 1]
    ramp = LoadPlan(mode="ramp", ramp_start=2, ramp_step=3, ramp_interval_s=5, ramp_max=10)
    shares = shard_plans(ramp, 3)
    starts = [s for p in shares for s in p.user_starts or []]
    assert sorted(starts) == sorted(ramp.ramp_start_times())  # every user, once
    assert all(p.plan.validate() for p in shares)
    open_plan = shard_plans(LoadPlan(mode="open"), 2)
    assert all(p.user_starts is None and p.plan.max_requests is None for p in open_plan)
    # never more workers than shares to hand out
    assert effective_workers(LoadPlan(mode="closed", users=3), 8, 100) == 3
    assert effective_workers(LoadPlan(mode="open", max_concurrency=2), 8, 100) == 2
    assert effective_workers(LoadPlan(mode="open"), 8, 5) == 5
    assert effective_workers(LoadPlan(mode="open"), 4, 100) == 4


# -- runs ------------------------------------------------------------------------------------


def test_two_workers_open_loop_one_time_base(scripted_server, tmp_path):
    url = scripted_server(FAST)
    srv = scripted_server.processes[url]
    wl = mixed_workload()
    held: list[Any] = []
    a = run(url, wl, tmp_path, workers=2, on_start=lambda r, runner: held.append(runner))
    rows = records(a)
    assert Counter(r["request_id"] for r in rows) == Counter(wl["request_id"].to_pylist())
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["worker"] for r in rows} == {0, 1}
    by_session: dict[str, set[int]] = {}
    for r in rows:
        if r["request_id"].startswith("s"):
            by_session.setdefault(r["request_id"][:3], set()).add(r["worker"])
    assert len(by_session) == 8 and all(len(w) == 1 for w in by_session.values())
    arrival = dict(zip(wl["request_id"].to_pylist(), wl["arrival_s"].to_pylist(), strict=True))
    for r in rows:
        if r["request_id"].startswith("r") or r["request_id"].endswith("t0"):
            assert r["scheduled_s"] == pytest.approx(arrival[r["request_id"]], abs=1e-9)
        assert 0 <= r["sent_s"] - r["scheduled_s"] < 0.1
    # one time base: each worker's sends, on the shared clock, are when the server received
    # requests (a worker with its own origin would be off by the difference for all its sends;
    # a single send may wait for a new connection on a loaded machine)
    origin = held[0].clock.start_ns / 1e9
    receipts = np.sort(np.asarray(srv.stats()["receipt_times"]))
    for k in (0, 1):
        at = origin + np.array([r["sent_s"] for r in rows if r["worker"] == k])
        pos = np.clip(np.searchsorted(receipts, at), 1, len(receipts) - 1)
        off = np.minimum(np.abs(receipts[pos] - at), np.abs(receipts[pos - 1] - at))
        assert np.median(off) < 0.005, (k, off)
    m = a.manifest
    assert m["status"] == "complete" and m["workers"]["count"] == 2
    assert [s["requests_sent"] for s in m["workers"]["shards"]] == [
        sum(1 for r in rows if r["worker"] == k) for k in (0, 1)]
    health = m["client_health"]
    assert [w["worker"] for w in health["workers"]] == [0, 1]
    for w in health["workers"]:
        assert w["requests"] > 10 and w["send_lag_s"]["p50"] < 0.005 and w["cpu"]["samples"] >= 1
    assert set(m["cpu_samples"]) == {"0", "1"}
    assert sorted(p.name for p in a.run.path.glob("records.journal*")) == [
        "records.journal.w0.jsonl", "records.journal.w1.jsonl"]
    assert m["prompts"]["checked"] + m["prompts"]["unchecked"] >= 30


def test_two_workers_closed_loop_share_the_users(scripted_server, tmp_path):
    url = scripted_server({"ttft_s": 0.05, "tpot_s": 0.01})
    plan = LoadPlan(mode="closed", users=4, think_s=0.05, max_requests=16)
    seen: list[tuple[int, int | None, int]] = []  # what a live display gets: the sum

    def on_progress(p: Any) -> None:
        seen.append((p.done, p.total, len(p.take_finished())))

    a = run(url, fixed_workload(16, output_tokens=10), tmp_path, workers=2, plan=plan,
            on_progress=on_progress)
    rows = records(a)
    assert seen[-1][:2] == (16, 16) and sum(n for *_, n in seen) == 16
    assert len(rows) == 16 and {r["status"] for r in rows} == {"ok"}
    assert Counter(r["worker"] for r in rows) == {0: 8, 1: 8}
    for k, limit in ((0, 2), (1, 2), (None, 4)):
        mine = [r for r in rows if k is None or r["worker"] == k]
        events = sorted([(r["sent_s"], 1) for r in mine] + [(r["done_s"], -1) for r in mine])
        assert max(np.cumsum([e[1] for e in events])) <= limit
    assert [s["users"] for s in a.manifest["workers"]["shards"]] == [2, 2]


class CaptureServer:
    """The scripted server in a thread of the test, keeping every request body it receives."""

    def __init__(self, script: dict[str, Any]) -> None:
        self.script = script
        self.bodies: list[bytes] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _start(self) -> str:
        @web.middleware
        async def capture(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.method == "POST":
                self.bodies.append(await request.read())
            return await handler(request)

        app = make_app(self.script)
        app.middlewares.append(capture)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def __enter__(self) -> CaptureServer:
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_same_prompts_as_one_worker(tmp_path):
    wl = mixed_workload(lone=12, sessions=4, gap_s=0.03, output_tokens=4)
    seen = []
    for workers in (1, 2):
        with CaptureServer({"ttft_s": 0.005, "tpot_s": 0.002}) as srv:
            a = run(srv.url, wl, tmp_path / f"w{workers}", workers=workers, run_id="same-run")
            assert a.manifest["status"] == "complete"
            seen.append(sorted(srv.bodies))
    assert len(seen[0]) == wl.num_rows
    assert seen[0] == seen[1]  # first turns, follow-ups with their history: byte for byte
    assert {r["worker"] for r in records(a)} == {0, 1}


def test_a_killed_worker_stops_the_run_and_keeps_the_others_records(scripted_server, tmp_path):
    url = scripted_server({"ttft_s": 0.02, "tpot_s": 0.01})
    wl = fixed_workload(240, gap_s=0.025, output_tokens=10, start_s=0.02)  # 6 s of load
    killed: list[float] = []

    def kill_worker_1(run_dir: RunDir, runner: Any) -> None:
        def go() -> None:
            journal = run_dir.worker_journal_path(1)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if (1 in runner.pids and journal.exists()
                        and journal.read_bytes().count(b"\n") >= 15):
                    killed.append(time.monotonic())
                    os.kill(runner.pids[1], signal.SIGKILL)
                    return
                time.sleep(0.05)

        threading.Thread(target=go, daemon=True).start()

    start = time.monotonic()
    a = run(url, wl, tmp_path, workers=2, on_start=kill_worker_1)
    assert killed and time.monotonic() - start < 30
    m = a.manifest
    assert m["status"] == "interrupted"
    assert "SIGKILL" in m["workers"]["failed"]["1"]
    assert [s["status"] for s in m["workers"]["shards"]] == ["interrupted", "failed"]
    assert not a.health["valid"]
    assert any(r.startswith("worker 1 died (killed by SIGKILL)") for r in a.health["reasons"])
    rows = records(a)
    assert len(rows) < wl.num_rows  # stopped at the death, not run to the end
    w0 = [r for r in rows if r["worker"] == 0]
    w1 = [r for r in rows if r["worker"] == 1]
    assert len(w1) >= 15
    # worker 0 holds every other request; all it scheduled up to worker 1's last record is there
    cut = max(r["scheduled_s"] for r in w1)
    ids = wl["request_id"].to_pylist()
    expected = {ids[i] for i in range(0, len(ids), 2)
                if wl["arrival_s"][i].as_py() <= cut}
    assert expected <= {r["request_id"] for r in w0}
    assert {r["status"] for r in w0} <= {"ok", "cancelled"}
    assert m["window"][1] <= cut + 2.0  # the summary ends where the load stopped being whole


# -- the command line: Ctrl-C and a killed parent ---------------------------------------------


def _start_cli(tmp_path: Path, url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*SLOBENCH, "run", "--target", url, "--workers", "2", "--out",
                             "runs", "-d", "30s", "-r", "20", "--output-tokens", "4", *args],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, stdin=subprocess.DEVNULL)


def _wait_for_worker_records(tmp_path: Path, n: int, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run_dir in (tmp_path / "runs").glob("*"):
            journals = [run_dir / f"records.journal.w{k}.jsonl" for k in (0, 1)]
            if all(j.exists() and j.read_bytes().count(b"\n") >= n for j in journals):
                return run_dir
        time.sleep(0.1)
    raise AssertionError("the workers produced no records in time")


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


@pytest.mark.parametrize("to", ["group", "parent"])
def test_ctrl_c_stops_every_worker_and_reports(scripted_server, tmp_path, to):
    url = scripted_server(FAST)
    proc = _start_cli(tmp_path, url)
    try:
        run_dir = _wait_for_worker_records(tmp_path, 5)
        if to == "group":  # what a terminal does
            os.killpg(proc.pid, signal.SIGINT)
        else:  # only the parent: it asks the workers to stop
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=40)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Interrupted" in out
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["workers"]["failed"] == {}
    rows = pq.read_table(run_dir / "records.parquet")
    journaled = sum(read_journal(run_dir / f"records.journal.w{k}.jsonl")[0].num_rows
                    for k in (0, 1))
    assert rows.num_rows == journaled and set(rows["worker"].to_pylist()) == {0, 1}


def test_report_recovers_the_worker_journals_of_a_killed_parent(scripted_server, tmp_path):
    url = scripted_server(FAST)
    proc = _start_cli(tmp_path, url, "-q")
    try:
        run_dir = _wait_for_worker_records(tmp_path, 10)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 20  # the workers see their parent gone and stop
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_alive(proc.pid), "client workers outlived their parent"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    table, source, _ = RunDir.open(run_dir).load_records()
    assert "records.journal.w0.jsonl" in source and "records.journal.w1.jsonl" in source
    assert set(table["worker"].to_pylist()) == {0, 1} and table.num_rows >= 20
    assert len(set(table["request_id"].to_pylist())) == table.num_rows
    rep = subprocess.run([*SLOBENCH, "report", str(run_dir)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert rep.returncode == 0, rep.stderr
    assert "did not finish" in rep.stdout
