"""Prompts over real HTTP against the built-in emulator (which tokenizes what it receives and
hashes 16-token blocks for its prefix cache): the intended prefix reuse happens, no accidental
reuse happens, and the emulator counts exactly the workload's input tokens."""

from __future__ import annotations

import re
import urllib.request

import numpy as np
import pyarrow as pa

from helpers import records_of
from slobench.benchmark import BenchmarkConfig, TargetConfig, run_benchmark
from slobench.client.pacing import LoadPlan
from slobench.client.runner import Timeouts
from slobench.engine.config import EngineConfig
from slobench.engine.emulator import EmulatorProcess
from slobench.schema import conform_workload


def workload(n: int, blocks: list[list[int]], input_tokens: int = 1100) -> pa.Table:
    ids = [f"q{i:03d}" for i in range(n)]
    return conform_workload(pa.table({
        "request_id": ids, "arrival_s": 0.02 + 0.05 * np.arange(n), "session_id": ids,
        "input_tokens": np.full(n, input_tokens, dtype=np.int64),
        "output_tokens": np.full(n, 4, dtype=np.int64),
        "prefix_blocks": pa.array(blocks, pa.list_(pa.int64())),
    }))


def hit_tokens(base_url: str) -> float:
    with urllib.request.urlopen(base_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(r"^vllm:prefix_cache_hits_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    assert m, text[:500]
    return float(m.group(1))


def run(emu, wl, tmp_path, name, endpoint="chat"):
    return run_benchmark(wl, BenchmarkConfig(
        target=TargetConfig(url=emu.base_url, engine="vllm", endpoint=endpoint),
        plan=LoadPlan(), timeouts=Timeouts(request_s=30, stall_s=10), out=tmp_path / "runs",
        run_id=name))


def test_intended_reuse_happens_and_nothing_else(tmp_path):
    n = 12
    with EmulatorProcess(EngineConfig()) as emu:
        a = run(emu, workload(n, [[] for _ in range(n)]), tmp_path, "unique")
        unique_hits = hit_tokens(emu.base_url)
        b = run(emu, workload(n, [[7, 8] for _ in range(n)]), tmp_path, "shared")
        shared_hits = hit_tokens(emu.base_url) - unique_hits
        # the same request ids again in a new run: the run id salts the text, so no reuse
        run(emu, workload(n, [[] for _ in range(n)]), tmp_path, "unique-again")
        again_hits = hit_tokens(emu.base_url) - unique_hits - shared_hits
    assert unique_hits == 0
    assert again_hits == 0
    # 2 shared blocks of 512 tokens: every request after the first finds 1024 tokens cached
    assert shared_hits == (n - 1) * 1024
    for analysis in (a, b):
        rows = records_of(analysis)
        assert all(r["status"] == "ok" for r in rows)
        assert analysis.manifest["prompts"]["missed"] == 0
        assert analysis.manifest["prompts"]["checked"] + analysis.manifest["prompts"][
            "unchecked"] == n


def test_emulator_counts_the_workload_tokens(tmp_path):
    lengths = [1, 2, 7, 64, 511, 512, 513, 3000]
    ids = [f"L{n}" for n in lengths]
    wl = conform_workload(pa.table({
        "request_id": ids, "arrival_s": 0.02 + 0.05 * np.arange(len(ids)), "session_id": ids,
        "input_tokens": np.array(lengths, dtype=np.int64),
        "output_tokens": np.full(len(ids), 3, dtype=np.int64)}))
    with EmulatorProcess(EngineConfig()) as emu:
        for endpoint in ("chat", "completions"):
            rows = records_of(run(emu, wl, tmp_path, endpoint, endpoint=endpoint))
            assert sorted(r["input_tokens"] for r in rows) == lengths
