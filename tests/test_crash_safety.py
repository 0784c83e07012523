"""Crash safety: SIGKILL the real ``slobench run`` process at seeded random points, again and
again, and prove that ``slobench report`` recovers every request the server had finished sending
more than a second before the kill, and that the catalog stays consistent.

What the server finished comes from the server's own truth log (``--truth``): per request its
receipt ``t0`` and the instant ``done`` its last byte was handed to the kernel, on
``perf_counter`` (CLOCK_MONOTONIC on Linux, shared with this process), so it compares directly
with the instant this test sends SIGKILL. Every request of a workload asks for a different number
of output tokens, so the tokens a truth entry carried name the request.

One scripted server serves the whole module; each kill is one short client process.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slobench.client.shards import partition
from slobench.engine.scripted import ScriptedServerProcess
from slobench.schema import conform_workload
from slobench.store.rundir import RunDir

SLOBENCH = [sys.executable, "-m", "slobench"]
# quick answers in one chunk: a request is ~10 ms of server time, so a kill iteration is short
SCRIPT = {"ttft_s": 0.01, "tpot_s": 0.0, "tokens_per_chunk": 256}
SEED = 20261111
MARGIN_S = 1.0  # requests the server finished this long before the kill must be recovered


@pytest.fixture(scope="module")
def target() -> Any:
    with ScriptedServerProcess(SCRIPT, truth=True) as srv:
        yield srv


def write_workload(path: Path, n: int, gap_s: float) -> pa.Table:
    """``n`` single requests ``gap_s`` apart; request i asks for i + 1 output tokens, a number
    no other request of the workload asks for."""
    ids = [f"q{i:03d}" for i in range(n)]
    table = conform_workload(pa.table({
        "request_id": ids, "arrival_s": 0.02 + np.arange(n) * gap_s,
        "client_id": [f"c{i % 4}" for i in range(n)], "app": ["chatbot"] * n,
        "session_id": ids, "input_tokens": np.full(n, 8, dtype=np.int64),
        "output_tokens": np.arange(1, n + 1, dtype=np.int64)}))
    pq.write_table(table, path)
    return table


def served(srv: ScriptedServerProcess, since: float) -> dict[str, dict[str, Any]]:
    """The requests the server answered completely since ``since``, by request id (from the
    ``max_tokens`` each asked for; the truth log's ``id`` indexes the /stats lists). Clears the
    truth log of what it returns."""
    truth, asked = srv.truth(clear=True), srv.stats()["max_tokens"]
    out = {}
    for entry in truth:
        if entry["t0"] < since:
            continue
        tokens = asked[entry["id"]]
        if entry["status"] == "ok" and entry["done"] is not None and sum(entry["tokens"]) == tokens:
            out[f"q{tokens - 1:03d}"] = entry
    return out


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@dataclass
class Kill:
    kind: str
    run_dir: Path
    started: float = 0.0  # perf_counter when the client process was started
    killed: float = 0.0  # perf_counter right before SIGKILL
    served: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: subprocess.Popen[str] | None = None
    report_out: tuple[str, str] = ("", "")


def env_with(catalog: Path) -> dict[str, str]:
    return {**os.environ, "SLOBENCH_CATALOG": f"sqlite:///{catalog}"}


def start_client(url: str, workload: Path, out: Path, run_id: str, env: dict[str, str],
                 workers: int = 1) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*SLOBENCH, "run", "--target", url, "--workload", str(workload), "--workers",
         str(workers), "--out", str(out), "--run-id", run_id, "-q", "--scrape-interval", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        start_new_session=True, env=env)


def wait_until(check: Any, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    """Poll ``check()`` every 2 ms (a kill right after an event must come right after it)."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            raise AssertionError(f"the client exited early ({proc.returncode}): "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError("the client never reached the kill point")
        time.sleep(0.002)


def kill_group(proc: subprocess.Popen[str]) -> float:
    """SIGKILL the client (and anything in its session); returns the perf_counter of the kill."""
    at = time.perf_counter()
    os.kill(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    if proc.stderr:
        proc.stderr.close()
    return at


def start_report(run_dir: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([*SLOBENCH, "report", str(run_dir), "--json", "--no-html"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=env)


def finish_report(kill: Kill) -> None:
    if kill.report is not None and kill.report.returncode is None:
        kill.report_out = kill.report.communicate(timeout=120)


def missing_due(kill: Kill, recovered: set[str]) -> list[str]:
    due = [rid for rid, e in kill.served.items() if e["done"] < kill.killed - MARGIN_S]
    return sorted(set(due) - recovered)


def check_catalog(catalog: Path, out: Path, env: dict[str, str]) -> dict[str, str]:
    """After the kills: every run directory with a manifest is in the catalog once, none of them
    still shows as running, and the SQLite file is intact. Returns run id -> status."""
    scan = subprocess.run([*SLOBENCH, "runs", "--scan", str(out), "--json", "-n", "1000"],
                          capture_output=True, text=True, timeout=120, env=env,
                          stdin=subprocess.DEVNULL)
    assert scan.returncode == 0, scan.stderr
    assert "warning" not in scan.stderr, scan.stderr
    rows = json.loads(scan.stdout)
    manifests = sorted(p.parent.name for p in out.rglob("manifest.json"))
    assert sorted(r["run_id"] for r in rows) == manifests  # each one, once
    statuses = {r["run_id"]: r["status"] for r in rows}
    assert "running" not in statuses.values(), statuses
    with contextlib.closing(sqlite3.connect(catalog)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    return statuses


# -- one process --------------------------------------------------------------------------------


KINDS = (["startup"] * 2 + ["run-dir"] * 3 + ["manifest"] * 3 + ["first-flush"] * 3
         + ["after-flush"] * 3 + ["steady"] * 6)


@pytest.mark.timeout(300)
def test_sigkill_at_random_points_loses_nothing_finished(target, tmp_path):
    """20 SIGKILLs: during start-up (no run directory yet), the instant the run directory or
    the manifest appears, right after the journal's first and k-th flush, and in steady state."""
    rng = random.Random(SEED)
    kinds = list(KINDS)
    rng.shuffle(kinds)
    out, catalog = tmp_path / "runs", tmp_path / "catalog.sqlite"
    env = env_with(catalog)
    workload = tmp_path / "w.parquet"
    write_workload(workload, 160, gap_s=0.03)  # ~5 s of load, 33 requests/s
    kills: list[Kill] = []
    for i, kind in enumerate(kinds):
        run_dir = out / f"k{i:02d}-{kind}"
        journal = run_dir / "records.journal.jsonl"
        kill = Kill(kind, run_dir, started=time.perf_counter())
        proc = start_client(target.base_url, workload, out, run_dir.name, env)
        try:
            if kind == "startup":  # the CLI imports for ~1 s before it makes the run dir
                time.sleep(rng.uniform(0.05, 0.8))
            elif kind == "run-dir":
                wait_until(run_dir.exists, proc)
            elif kind == "manifest":
                wait_until((run_dir / "manifest.json").exists, proc)
            elif kind == "first-flush":
                wait_until(lambda j=journal: lines(j) > 0, proc)
            elif kind == "after-flush":  # the k-th time the journal grows
                flushes, size = rng.randint(2, 5), 0
                for _ in range(flushes):
                    wait_until(lambda j=journal, s=size: lines(j) > s, proc)
                    size = lines(journal)
            else:
                wait_until(lambda j=journal: lines(j) > 0, proc)
                time.sleep(rng.uniform(1.05, 1.6))
        finally:
            kill.killed = kill_group(proc)
        kill.served = served(target, since=kill.started)
        if run_dir.exists():  # report runs while the next client starts: both hit the catalog
            kill.report = start_report(run_dir, env)
        kills.append(kill)
        for older in kills[:-2]:
            finish_report(older)

    recovered_total = due_total = 0
    worst_lost_s, early = 0.0, 0  # early: killed after the manifest, before the journal
    no_run: list[str] = []
    for kill in kills:
        finish_report(kill)
        name = kill.run_dir.name
        if not (kill.run_dir / "manifest.json").exists():
            # killed before the run existed: nothing was sent, and report says so in one line
            assert not kill.served, name
            no_run.append(name)
            if kill.report is not None:
                _, err = kill.report_out
                assert kill.report.returncode != 0 and "Traceback" not in err, err
                assert err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1
            continue
        stdout, err = kill.report_out
        assert kill.report is not None and kill.report.returncode == 0, (name, err)
        summary = json.loads(stdout)["summary"]
        table, _, _ = RunDir.open(kill.run_dir).load_records()
        recovered = set(table["request_id"].to_pylist())
        assert len(recovered) == table.num_rows, name  # no request twice
        assert summary["total_requests"] == table.num_rows, name
        assert not missing_due(kill, recovered), (name, missing_due(kill, recovered))
        ok = {r["request_id"]: r for r in table.to_pylist() if r["status"] == "ok"}
        for rid in set(kill.served) & set(ok):  # what the server sent is what was recorded
            assert ok[rid]["output_tokens"] == int(rid[1:]) + 1, (name, rid)
        due_total += sum(1 for e in kill.served.values() if e["done"] < kill.killed - MARGIN_S)
        lost = [kill.killed - e["done"] for rid, e in kill.served.items() if rid not in recovered]
        worst_lost_s = max([worst_lost_s, *lost])  # how long before the kill the lost ones ended
        recovered_total += table.num_rows
        early += not (kill.run_dir / "records.journal.jsonl").exists()
    statuses = check_catalog(catalog, out, env)
    assert set(statuses.values()) <= {"killed"}, statuses
    assert len(kills) >= 20 and len(no_run) <= 8 and due_total >= 100
    print(f"\n{len(kills)} kills, {len(no_run)} before the run existed, {early} before its "
          f"journal, {due_total} requests "
          f"due, {recovered_total} recovered; the lost ones finished at most "
          f"{worst_lost_s * 1e3:.0f} ms before the kill")


# -- sharded runs -------------------------------------------------------------------------------


def session_alive(session: int) -> bool:
    """Whether any process of ``session`` still runs (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session and fields[0] != "Z":
                return True
    return False


def worker_pid(session: int, journal: Path) -> int | None:
    """The process of ``session`` that holds ``journal`` open: that worker's process (workers
    are forked by a fork server, so they are not children of the client process)."""
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) != session:
                continue
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == str(journal):
                        return int(proc.name)
    return None


@pytest.mark.timeout(300)
def test_sigkill_of_one_worker_or_the_parent_of_a_sharded_run(target, tmp_path):
    """Three runs of two workers lose one worker to SIGKILL at a random point: the parent lives
    on, stops the run as interrupted, keeps all of the other worker's records and names the
    dead one. A fourth loses its parent, a fifth every process at once: report recovers both
    workers' journals."""
    rng = random.Random(SEED + 1)
    out, catalog = tmp_path / "runs", tmp_path / "catalog.sqlite"
    env = env_with(catalog)
    workload = tmp_path / "w.parquet"
    wl = write_workload(workload, 120, gap_s=0.03)
    owner = {wl["request_id"][int(i)].as_py(): k for k, part in enumerate(partition(wl, 2))
             for i in part}
    for i, victim in enumerate(["worker", "worker", "worker", "parent", "session"]):
        run_dir = out / f"s{i}-{victim}"
        dead = rng.randint(0, 1)
        journal = run_dir / f"records.journal.w{dead}.jsonl"
        started = time.perf_counter()
        proc = start_client(target.base_url, workload, out, run_dir.name, env, workers=2)
        try:
            wait_until(lambda j=journal: lines(j) > 0, proc)
            time.sleep(rng.uniform(0.0, 1.2))
            if victim == "worker":
                pid = worker_pid(proc.pid, journal.absolute())
                assert pid is not None and pid != proc.pid
                killed = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                _, err = proc.communicate(timeout=60)  # the parent stops the run and reports
                assert proc.returncode == 130, err  # as interrupted
                assert "Traceback" not in err and "worker" in err
            elif victim == "parent":  # its workers see it gone and stop
                killed = time.perf_counter()
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                deadline = time.monotonic() + 20
                while session_alive(proc.pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert not session_alive(proc.pid), "client workers outlived their parent"
            else:  # the whole session at once, as an OOM kill of its cgroup would
                killed = kill_group(proc)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        truth = served(target, since=started)
        rep = subprocess.run([*SLOBENCH, "report", str(run_dir), "--json", "--no-html"],
                             capture_output=True, text=True, timeout=120, env=env,
                             stdin=subprocess.DEVNULL)
        assert rep.returncode == 0, rep.stderr
        table, source, _ = RunDir.open(run_dir).load_records()
        rows = {r["request_id"]: r for r in table.to_pylist()}
        assert len(rows) == table.num_rows
        due = {rid for rid, e in truth.items() if e["done"] < killed - MARGIN_S}
        assert due <= set(rows), sorted(due - set(rows))
        for rid in rows:
            assert rows[rid]["worker"] == owner[rid], rid
        if victim == "worker":
            manifest = json.loads((run_dir / "manifest.json").read_text())
            assert manifest["status"] == "interrupted"
            assert list(manifest["workers"]["failed"]) == [str(dead)]
            assert "SIGKILL" in manifest["workers"]["failed"][str(dead)]
            # the survivor stopped cleanly: each request it got an answer to is recorded
            survivor = {rid for rid in truth if owner[rid] != dead}
            assert survivor <= set(rows), sorted(survivor - set(rows))
            assert source == "records.parquet"
        else:
            assert "records.journal.w0.jsonl" in source and "records.journal.w1.jsonl" in source
    statuses = check_catalog(catalog, out, env)
    assert sorted(statuses.values()) == ["interrupted"] * 3 + ["killed"] * 2, statuses
