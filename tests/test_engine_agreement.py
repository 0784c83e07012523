"""The same workload through the HTTP emulator (real clock, real client) and through the
simulator (virtual clock) must agree per request: one scheduler, one step-time model.

Stated tolerance, per request at moderate load: |TTFT difference| and |E2E difference| at most
25 ms + 10% of the simulated value. The emulator path adds real HTTP, the client, and event-loop
wake-up jitter of a millisecond or two per step on a loaded 2-core machine; arrivals reach its
scheduler a little later than the simulator's, so batches can differ by a step at the margins.
"""

from __future__ import annotations

import json
import urllib.request

import numpy as np

from helpers import records_of
from slobench.benchmark import BenchmarkConfig, TargetConfig, run_benchmark
from slobench.client.pacing import LoadPlan
from slobench.client.runner import Timeouts
from slobench.engine.config import EngineConfig
from slobench.engine.emulator import EmulatorProcess
from slobench.engine.simulator import simulate
from slobench.workload.synthetic import synthetic_workload


def test_emulate_and_simulate_agree_per_request(tmp_path):
    engine = EngineConfig()  # llama-3.1-8b on one H100
    workload = synthetic_workload(rate=6, n_requests=40, input_tokens="uniform:64..512",
                                  output_tokens="uniform:16..96", seed=3)
    with EmulatorProcess(engine) as emu:
        _warm_up(emu.base_url)  # a cold server's first request pays one-time costs
        live = run_benchmark(workload, BenchmarkConfig(
            target=TargetConfig(url=emu.base_url, engine="vllm"), plan=LoadPlan(),
            timeouts=Timeouts(request_s=30, stall_s=10), out=tmp_path / "runs"))
        assert "Traceback" not in emu.stderr_text()
        # steps the emulator ran late (a loaded machine starved it) shift every later token by
        # that much: its own count of that lateness widens the tolerance, and nothing else does
        slip = _get_json(emu.base_url + "/health")["lag_total_s"]
    live_rows = {r["request_id"]: r for r in records_of(live)}
    sim = simulate(workload, engine.make_scheduler).records.to_pylist()

    assert len(live_rows) == len(sim) == 40
    ttft_diff, e2e_diff = [], []
    for s in sim:
        r = live_rows[s["request_id"]]
        assert r["status"] == s["status"] == "ok"
        assert r["output_tokens"] == s["output_tokens"]
        assert r["input_tokens"] == s["input_tokens"]  # the emulator counted the same prompt
        for what, diffs in (("first_token_s", ttft_diff), ("done_s", e2e_diff)):
            live_v = r[what] - r["scheduled_s"]
            sim_v = s[what] - s["scheduled_s"]
            diffs.append(live_v - sim_v)
            assert abs(live_v - sim_v) <= 0.025 + 0.10 * sim_v + slip, (
                s["request_id"], what, live_v, sim_v, slip)
    # and no systematic bias beyond the HTTP path's few milliseconds
    assert abs(float(np.median(ttft_diff))) < 0.010 + slip
    assert abs(float(np.median(e2e_diff))) < 0.015 + slip


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _warm_up(base_url: str) -> None:
    model = _get_json(base_url + "/v1/models")["data"][0]["id"]
    body = json.dumps({"model": model, "prompt": "warm up", "max_tokens": 2}).encode()
    req = urllib.request.Request(base_url + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()
