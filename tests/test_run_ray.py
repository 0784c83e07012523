"""`slobench run --ray ADDRESS` on a real local Ray cluster started by the test: two nodes (a head
and a second raylet joined to it, one CPU each) on one machine. The shards run as Ray actors
against the scripted server, one per node; records stream to the driver's run directory, the
start is synchronized on wall clocks; a killed actor stops the run and keeps the others' records;
Ctrl-C (once, twice, while waiting for the cluster) ends the run as interrupted and leaves no
actor behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ray_head import LocalCluster, free_port, local_ray_cluster
from slobench.benchmark import Analysis, BenchmarkConfig, TargetConfig, run_benchmark
from slobench.cli.main import app
from slobench.client.journal import read_journal
from slobench.client.pacing import LoadPlan
from slobench.client.runner import Timeouts
from slobench.store.rundir import RunDir
from test_shards import FAST, mixed_workload

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'slobench[ray]')")

SLOBENCH = [sys.executable, "-m", "slobench"]
SLOW = {"ttft_s": 0.05, "tpot_s": 0.05}  # with --output-tokens 40: 2 s streams
ACTOR = "ray::ShardActor"  # the process title of a client worker's actor


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    with local_ray_cluster(tmp_path_factory.mktemp("ray"), nodes=2, cpus=1) as cluster:
        yield cluster


def run_on_ray(url: str, address: str, out: Path, wl: Any, on_start: Any = None) -> Analysis:
    cfg = BenchmarkConfig(target=TargetConfig(url=url), plan=LoadPlan(mode="open"),
                          timeouts=Timeouts(request_s=30, stall_s=10), out=out, workers=2,
                          ray_address=address, html_report=False, scrape_interval_s=0)
    return run_benchmark(wl, cfg, on_start=on_start)


def sessions_on_one_worker(rows: list[dict[str, Any]]) -> dict[str, set[int]]:
    by_session: dict[str, set[int]] = {}
    for r in rows:
        if r["request_id"].startswith("s"):
            by_session.setdefault(r["request_id"][:3], set()).add(r["worker"])
    assert all(len(w) == 1 for w in by_session.values()), by_session
    return by_session


def test_two_actors_open_loop_stream_records_to_the_driver(ray_cluster, scripted_server,
                                                           tmp_path):
    url = scripted_server(FAST)
    wl = mixed_workload()
    a = run_on_ray(url, ray_cluster.address, tmp_path, wl)
    rows = pq.read_table(a.run.path / "records.parquet").to_pylist()
    assert Counter(r["request_id"] for r in rows) == Counter(wl["request_id"].to_pylist())
    assert {r["status"] for r in rows} == {"ok"} and {r["worker"] for r in rows} == {0, 1}
    assert len(sessions_on_one_worker(rows)) == 8
    # the driver wrote the journals: one per worker, in the run directory
    assert sorted(p.name for p in a.run.path.glob("records.journal.w*.jsonl")) == [
        "records.journal.w0.jsonl", "records.journal.w1.jsonl"]
    manifest = json.loads((a.run.path / "manifest.json").read_text())
    workers = manifest["workers"]
    assert workers["transport"] == "ray" and workers["count"] == 2 and not workers["failed"]
    assert manifest["config"]["ray"] == ray_cluster.address and manifest["status"] == "complete"
    for shard in workers["shards"]:
        assert shard["status"] == "complete" and shard["node"]["node_id"]
        # one machine, one wall clock: the ping estimate is within its round trip
        assert abs(shard["clock_offset_ms"]) <= shard["rtt_ms"] / 2 + 1.0
    # one time base: requests went out when scheduled, on both workers
    lag = [r["sent_s"] - r["scheduled_s"] for r in rows]
    assert min(lag) > -0.005 and sorted(lag)[len(lag) // 2] < 0.05


def test_cli_run_puts_one_worker_on_each_node(ray_cluster, scripted_server, tmp_path):
    """What a user does: `slobench run --ray HEAD:PORT --workers 2` from a shell, against a
    cluster of two raylets; the manifest says where each worker ran."""
    url = scripted_server(FAST)
    wl = mixed_workload()
    pq.write_table(wl, tmp_path / "wl.parquet")
    r = subprocess.run([*SLOBENCH, "run", "--ray", ray_cluster.address, "--workers", "2",
                        "--target", url, "--workload", "wl.parquet", "--out", "runs"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    (run_dir,) = (tmp_path / "runs").glob("*/manifest.json")
    manifest = json.loads(run_dir.read_text())
    assert manifest["status"] == "complete"
    workers = manifest["workers"]
    assert workers["transport"] == "ray" and not workers["failed"]
    nodes = [s["node"]["node_id"] for s in workers["shards"]]
    assert len(set(nodes)) == 2 and set(nodes) == ray_cluster.node_ids  # one actor per node
    for shard in workers["shards"]:
        assert shard["status"] == "complete" and shard["rtt_ms"] > 0
        assert abs(shard["clock_offset_ms"]) <= shard["rtt_ms"] / 2 + 1.0  # one wall clock
    # a loopback target on a multi-node cluster is flagged (here every node is this machine)
    assert any("loopback" in w for w in workers["warnings"])
    rows = pq.read_table(run_dir.parent / "records.parquet").to_pylist()
    assert Counter(r["request_id"] for r in rows) == Counter(wl["request_id"].to_pylist())
    assert {r["status"] for r in rows} == {"ok"} and {r["worker"] for r in rows} == {0, 1}
    assert len(sessions_on_one_worker(rows)) == 8


def test_a_killed_actor_stops_the_run_and_keeps_the_others_records(ray_cluster, scripted_server,
                                                                   tmp_path):
    url = scripted_server({"ttft_s": 0.02, "tpot_s": 0.01})
    wl = mixed_workload(lone=200, sessions=4, gap_s=0.05)  # ~10 s of arrivals

    def kill_worker_1(run_dir: RunDir, runner: Any) -> None:
        def go() -> None:
            deadline = time.monotonic() + 60
            journal = run_dir.worker_journal_path(1)
            while time.monotonic() < deadline:
                if (len(runner._shards) == 2 and journal.exists()
                        and journal.stat().st_size > 0):
                    ray.kill(runner._shards[1].actor, no_restart=True)
                    return
                time.sleep(0.05)
        threading.Thread(target=go, daemon=True).start()

    a = run_on_ray(url, ray_cluster.address, tmp_path, wl, on_start=kill_worker_1)
    manifest = json.loads((a.run.path / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    failed = manifest["workers"]["failed"]
    assert list(failed) == ["1"] and "Ray actor lost" in failed["1"]
    rows = pq.read_table(a.run.path / "records.parquet").to_pylist()
    workers = Counter(r["worker"] for r in rows)
    assert workers[0] > 0 and workers[1] > 0 and len(rows) < wl.num_rows
    assert not a.health["valid"]


# -- Ctrl-C --------------------------------------------------------------------------------------


@contextlib.contextmanager
def cli_run(tmp_path: Path, address: str, url: str) -> Iterator[subprocess.Popen[str]]:
    """`slobench run --ray` in a session of its own (a terminal's Ctrl-C goes to its group),
    killed with its group at the end, whatever happened."""
    proc = subprocess.Popen([*SLOBENCH, "run", "--ray", address, "--workers", "2", "--target",
                             url, "--out", "runs", "-r", "10", "-d", "30s", "--input-tokens",
                             "32", "--output-tokens", "40"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def wait_for(what: str, cond: Callable[[], Any], proc: subprocess.Popen[str],
             timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := cond()):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(0.1)
    return value


def worker_records(tmp_path: Path, n: int) -> Path | None:
    """The run directory once each worker's journal there has ``n`` records."""
    for run_dir in (tmp_path / "runs").glob("*"):
        journals = [run_dir / f"records.journal.w{k}.jsonl" for k in (0, 1)]
        if all(j.exists() and j.read_bytes().count(b"\n") >= n for j in journals):
            return run_dir
    return None


def journaled(run_dir: Path) -> list[dict[str, Any]]:
    return [row for k in (0, 1)
            for row in read_journal(run_dir / f"records.journal.w{k}.jsonl")[0].to_pylist()]


def actor_pids(cluster: LocalCluster) -> list[int]:
    return [pid for pid, cmd in cluster.processes().items() if cmd.startswith(ACTOR)]


def assert_no_actor_left(cluster: LocalCluster, timeout_s: float = 20) -> None:
    """The run's actors are gone: no actor process on any node holds a CPU of the cluster."""
    deadline = time.monotonic() + timeout_s
    while left := actor_pids(cluster):
        assert time.monotonic() < deadline, f"actor processes left on the cluster: {left}"
        time.sleep(0.2)


def stop_cli(proc: subprocess.Popen[str], timeout_s: float) -> tuple[str, str]:
    """Its output once it exits, which it must as an interrupted run does (code 130, no
    traceback)."""
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 130, err[-3000:]  # as the run without --ray
    assert "Traceback" not in err
    return out, err


def assert_interrupted_run(run_dir: Path, tmp_path: Path) -> tuple[dict[str, Any], list[dict]]:
    """The run directory is finished as interrupted, its records are the journals' and
    `slobench report` reads it."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    rows = pq.read_table(run_dir / "records.parquet").to_pylist()
    assert Counter(r["request_id"] for r in rows) == Counter(
        r["request_id"] for r in journaled(run_dir))
    rep = subprocess.run([*SLOBENCH, "report", str(run_dir), "--no-html"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert rep.returncode == 0 and "interrupted" in rep.stdout, rep.stderr
    return manifest, rows


def test_ctrl_c_stops_the_actors_and_keeps_the_run(ray_cluster, scripted_server, tmp_path):
    url = scripted_server(SLOW)
    srv = scripted_server.processes[url]
    with cli_run(tmp_path, ray_cluster.address, url) as proc:
        run_dir = wait_for("records from both workers", lambda: worker_records(tmp_path, 1), proc)
        done_before = {r["request_id"] for r in journaled(run_dir)}
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        cut = time.monotonic()
        out, _ = stop_cli(proc, 60)
    assert "Interrupted" in out
    assert time.monotonic() - cut < 30
    manifest, rows = assert_interrupted_run(run_dir, tmp_path)
    workers = manifest["workers"]
    assert workers["failed"] == {}  # every actor stopped when asked and reported
    assert [s["status"] for s in workers["shards"]] == ["interrupted", "interrupted"]
    status = {r["request_id"]: r["status"] for r in rows}
    assert all(status[rid] == "ok" for rid in done_before)  # what had finished is kept
    # the streams in flight at the cut (2 s each, 10 new per second) are journaled as cancelled
    assert set(status.values()) == {"ok", "cancelled"}
    assert Counter(r["worker"] for r in rows).keys() == {0, 1}
    # every request the server got is in the records, nothing more
    assert len(rows) == srv.stats()["requests"] == manifest["requests_sent"]
    assert_no_actor_left(ray_cluster)


def test_a_quick_double_ctrl_c_still_finishes_the_run(ray_cluster, scripted_server, tmp_path):
    """Ctrl-C pressed twice, 0.3 s apart: the second lands while the actors stop or while the
    driver leaves the cluster (a cut-short ``ray.shutdown`` used to exit 1 and leave the run
    "running"); either way the run ends as interrupted, with exit code 130."""
    url = scripted_server(SLOW)
    with cli_run(tmp_path, ray_cluster.address, url) as proc:
        run_dir = wait_for("records from both workers", lambda: worker_records(tmp_path, 1), proc)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)
        stop_cli(proc, 60)
    manifest, _ = assert_interrupted_run(run_dir, tmp_path)
    # had the actors not stopped by the second press, they were killed: the manifest says so
    assert all("second Ctrl-C" in note for note in manifest["workers"]["failed"].values())
    assert_no_actor_left(ray_cluster)


def test_a_second_ctrl_c_leaves_at_once_when_the_actors_do_not_stop(ray_cluster,
                                                                    scripted_server, tmp_path):
    """A node that stops answering (here: its actor processes SIGSTOPped) cannot stop its
    worker; the first Ctrl-C would wait for it (15 s, then kill), the second leaves now: the
    driver takes what the actors queued, kills them and finishes the run directory."""
    url = scripted_server(SLOW)
    frozen: list[int] = []
    with cli_run(tmp_path, ray_cluster.address, url) as proc:
        try:
            run_dir = wait_for("records from both workers",
                               lambda: worker_records(tmp_path, 1), proc)
            frozen = wait_for("two actor processes",
                              lambda: (p := actor_pids(ray_cluster)) and len(p) == 2 and p, proc)
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            done_before = {r["request_id"] for r in journaled(run_dir)}
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(1.0)
            assert proc.poll() is None  # still waiting for the frozen workers
            os.killpg(proc.pid, signal.SIGINT)
            second = time.monotonic()
            stop_cli(proc, 60)
            left = time.monotonic() - second
        finally:
            for pid in frozen:  # should they have outlived the run
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
    assert left < 12, left  # not the 15 s a first Ctrl-C gives workers that do not stop
    manifest, rows = assert_interrupted_run(run_dir, tmp_path)
    failed = manifest["workers"]["failed"]
    assert sorted(failed) == ["0", "1"], failed
    assert all("second Ctrl-C" in note for note in failed.values()), failed
    assert done_before <= {r["request_id"] for r in rows if r["status"] == "ok"}
    assert_no_actor_left(ray_cluster)


def test_ctrl_c_while_waiting_for_the_cluster(ray_cluster, scripted_server, tmp_path):
    """A busy cluster (one of its two CPUs held by another job) cannot place both workers;
    Ctrl-C during that wait stops the run at once, the waiting actor included."""
    url = scripted_server(FAST)
    ray.init(address=ray_cluster.address, include_dashboard=False, log_to_driver=False,
             logging_level="warning")
    try:
        @ray.remote(num_cpus=1)
        class Holder:
            def ready(self) -> bool:
                return True

        holder = Holder.remote()
        ray.get(holder.ready.remote(), timeout=60)
        with cli_run(tmp_path, ray_cluster.address, url) as proc:
            run_dir = wait_for("a run directory", lambda: next(
                (tmp_path / "runs").glob("*/manifest.json"), None), proc).parent
            time.sleep(3.0)  # the driver is waiting for the second CPU by now
            assert proc.poll() is None
            os.killpg(proc.pid, signal.SIGINT)
            cut = time.monotonic()
            stop_cli(proc, 60)
        assert time.monotonic() - cut < 15  # not the 300 s a worker may wait to be placed
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["status"] == "interrupted"
        failed = manifest["workers"]["failed"]
        assert failed and all(n.startswith("stopped while starting") for n in failed.values())
        assert_no_actor_left(ray_cluster)  # the one waiting for a CPU too
        ray.kill(holder)
    finally:
        ray.shutdown()


def test_unreachable_ray_address_is_one_clear_error(tmp_path):
    r = CliRunner().invoke(app, ["run", "--ray", f"127.0.0.1:{free_port()}", "--rate", "5",
                                 "-d", "2s", "-o", str(tmp_path)])
    assert r.exit_code != 0 and "--ray" in r.output and "Traceback" not in r.output
    assert len([ln for ln in r.output.splitlines() if ln.strip()]) <= 3, r.output
