"""`slobench run --ray ADDRESS` on a real local Ray cluster started by the test: the shards run as
Ray actors against the scripted server, records stream to the driver's run directory, the start
is synchronized on wall clocks; a killed actor stops the run and keeps the others' records."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ray_head import free_port, local_ray_head
from slobench.benchmark import Analysis, BenchmarkConfig, TargetConfig, run_benchmark
from slobench.cli.main import app
from slobench.client.pacing import LoadPlan
from slobench.client.runner import Timeouts
from slobench.store.rundir import RunDir
from test_shards import FAST, mixed_workload

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'slobench[ray]')")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    with local_ray_head(tmp_path_factory.mktemp("ray"), cpus=2) as address:
        yield address


def run_on_ray(url: str, address: str, out: Path, wl: Any, on_start: Any = None) -> Analysis:
    cfg = BenchmarkConfig(target=TargetConfig(url=url), plan=LoadPlan(mode="open"),
                          timeouts=Timeouts(request_s=30, stall_s=10), out=out, workers=2,
                          ray_address=address, html_report=False, scrape_interval_s=0)
    return run_benchmark(wl, cfg, on_start=on_start)


def test_two_actors_open_loop_stream_records_to_the_driver(ray_head, scripted_server, tmp_path):
    url = scripted_server(FAST)
    wl = mixed_workload()
    a = run_on_ray(url, ray_head, tmp_path, wl)
    rows = pq.read_table(a.run.path / "records.parquet").to_pylist()
    assert Counter(r["request_id"] for r in rows) == Counter(wl["request_id"].to_pylist())
    assert {r["status"] for r in rows} == {"ok"} and {r["worker"] for r in rows} == {0, 1}
    by_session: dict[str, set[int]] = {}
    for r in rows:
        if r["request_id"].startswith("s"):
            by_session.setdefault(r["request_id"][:3], set()).add(r["worker"])
    assert len(by_session) == 8 and all(len(w) == 1 for w in by_session.values())
    # the driver wrote the journals: one per worker, in the run directory
    assert sorted(p.name for p in a.run.path.glob("records.journal.w*.jsonl")) == [
        "records.journal.w0.jsonl", "records.journal.w1.jsonl"]
    manifest = json.loads((a.run.path / "manifest.json").read_text())
    workers = manifest["workers"]
    assert workers["transport"] == "ray" and workers["count"] == 2 and not workers["failed"]
    assert manifest["config"]["ray"] == ray_head and manifest["status"] == "complete"
    for shard in workers["shards"]:
        assert shard["status"] == "complete" and shard["node"]["node_id"]
        # one machine, one wall clock: the ping estimate is within its round trip
        assert abs(shard["clock_offset_ms"]) <= shard["rtt_ms"] / 2 + 1.0
    # one time base: requests went out when scheduled, on both workers
    lag = [r["sent_s"] - r["scheduled_s"] for r in rows]
    assert min(lag) > -0.005 and sorted(lag)[len(lag) // 2] < 0.05


def test_a_killed_actor_stops_the_run_and_keeps_the_others_records(ray_head, scripted_server,
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

    a = run_on_ray(url, ray_head, tmp_path, wl, on_start=kill_worker_1)
    manifest = json.loads((a.run.path / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    failed = manifest["workers"]["failed"]
    assert list(failed) == ["1"] and "Ray actor lost" in failed["1"]
    rows = pq.read_table(a.run.path / "records.parquet").to_pylist()
    workers = Counter(r["worker"] for r in rows)
    assert workers[0] > 0 and workers[1] > 0 and len(rows) < wl.num_rows
    assert not a.health["valid"]


def test_unreachable_ray_address_is_one_clear_error(tmp_path):
    r = CliRunner().invoke(app, ["run", "--ray", f"127.0.0.1:{free_port()}", "--rate", "5",
                                 "-d", "2s", "-o", str(tmp_path)])
    assert r.exit_code != 0 and "--ray" in r.output and "Traceback" not in r.output
    assert len([ln for ln in r.output.splitlines() if ln.strip()]) <= 3, r.output
