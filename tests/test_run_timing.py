"""Measured TTFT/TPOT/ITL/E2E against a server whose timings are scripted, over real HTTP.

Tolerances hold on a loaded 2-core machine: measured values may exceed the script by scheduling
noise (up to 60 ms or 15%, whichever is larger) but never undercut it by more than 5 ms, because a
token cannot arrive before the server sends it.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import bench, fixed_workload, records_of
from slobench.client.pacing import LoadPlan

TTFT, TPOT, N_OUT = 0.2, 0.02, 20


def close(measured: float, scripted: float, *, rel: float = 0.15, abs_s: float = 0.06) -> bool:
    return scripted - 0.005 <= measured <= scripted + max(abs_s, rel * scripted)


@pytest.fixture
def server(scripted_server):
    return scripted_server({"ttft_s": TTFT, "tpot_s": TPOT})


def test_open_loop_latencies_match_script(server, tmp_path):
    a = bench(server, fixed_workload(12, gap_s=0.15), tmp_path)
    rows = records_of(a)
    assert [r["status"] for r in rows] == ["ok"] * 12
    for r, arrival in zip(rows, 0.05 + np.arange(12) * 0.15, strict=True):
        assert r["scheduled_s"] == pytest.approx(arrival, abs=1e-9)  # the schedule is absolute
        assert r["output_tokens"] == N_OUT
        assert len(r["token_times"]) == N_OUT
        assert close(r["first_token_s"] - r["scheduled_s"], TTFT)
        tpot = (r["done_s"] - r["first_token_s"]) / (N_OUT - 1)
        assert close(tpot, TPOT, abs_s=0.01)
        assert close(r["done_s"] - r["scheduled_s"], TTFT + (N_OUT - 1) * TPOT)
    lat = a.summary["overall"]["latency"]
    assert close(lat["ttft"]["p50"], TTFT)
    assert close(lat["itl"]["p50"], TPOT, abs_s=0.01)
    assert close(lat["tpot"]["p50"], TPOT, abs_s=0.01)
    assert lat["send_lag"]["p50"] < 0.005
    assert a.summary["overall"]["slo"]["attainment"] == 1.0


def test_closed_loop_users_wait_for_answers(server, tmp_path):
    plan = LoadPlan(mode="closed", users=2, think_s=0.1, max_requests=8)
    a = bench(server, fixed_workload(8), tmp_path, plan=plan)
    rows = records_of(a)
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    e2e = TTFT + (N_OUT - 1) * TPOT
    for r in rows:
        assert close(r["first_token_s"] - r["scheduled_s"], TTFT)
        assert close(r["done_s"] - r["scheduled_s"], e2e)
    # never more than 2 requests in flight: each user sends again only after done + think
    events = sorted([(r["sent_s"], 1) for r in rows] + [(r["done_s"], -1) for r in rows])
    assert max(np.cumsum([e[1] for e in events])) <= 2
    starts = sorted(r["scheduled_s"] for r in rows)
    # 8 requests, 2 users: 4 rounds of e2e + think each
    assert starts[-1] >= 3 * (e2e + 0.1) - 0.01


def test_multi_token_chunks_count_every_token(scripted_server, tmp_path):
    url = scripted_server({"ttft_s": 0.1, "tpot_s": 0.02, "tokens_per_chunk": 4})
    for engine, source in (("vllm", "usage_deltas"), ("generic", "final_usage_spread")):
        a = bench(url, fixed_workload(3, gap_s=0.2, output_tokens=24), tmp_path / engine,
                  engine=engine)
        for r in records_of(a):
            assert r["token_count_source"] == source
            assert r["output_tokens"] == 24
            times = r["token_times"]
            assert len(times) == 24
            # six chunks of four tokens, each chunk's tokens share one arrival time
            assert len(set(times)) == 6
            assert all(times[i] == times[i - i % 4] for i in range(24))
            tpot = (r["done_s"] - r["first_token_s"]) / 23
            # 20 tokens' worth of time (chunk k sent when its last token is due) over 23 gaps
            assert close(tpot, 0.02 * 20 / 23, abs_s=0.01)


def test_without_usage_tokens_are_counted_per_chunk_and_flagged(scripted_server, tmp_path):
    url = scripted_server({"ttft_s": 0.05, "tpot_s": 0.01, "tokens_per_chunk": 2,
                           "usage": "none"})
    a = bench(url, fixed_workload(2, output_tokens=10), tmp_path)
    for r in records_of(a):
        assert r["token_count_source"] == "chunks"
        assert r["output_tokens"] == 5  # five chunks: an estimate, and the record says so
    assert a.manifest["token_counting"] == {"chunks": 2}


def test_reasoning_first_answer_recorded_separately(scripted_server, tmp_path):
    url = scripted_server({"ttft_s": 0.1, "tpot_s": 0.02, "reasoning_tokens": 10})
    a = bench(url, fixed_workload(3, gap_s=0.3, app="reasoning"), tmp_path,
              slo="reasoning: ttft<=1s, think_tpot<=50ms, answer_tpot<=100ms")
    for r in records_of(a):
        assert r["reasoning_tokens"] == 10 and r["output_tokens"] == N_OUT
        assert close(r["first_token_s"] - r["scheduled_s"], 0.1)
        assert close(r["first_answer_s"] - r["first_token_s"], 10 * 0.02)
    ttfa = a.summary["classes"]["reasoning"]["latency"]["ttfa"]["p50"]
    assert close(ttfa, 0.1 + 10 * 0.02)
    assert a.summary["classes"]["reasoning"]["slo"]["attainment"] == 1.0


def test_reasoning_field_variant(scripted_server, tmp_path):
    url = scripted_server({"ttft_s": 0.05, "tpot_s": 0.01, "reasoning_tokens": 5,
                           "reasoning_field": "reasoning", "usage": "none"})
    a = bench(url, fixed_workload(2, app="reasoning"), tmp_path)
    for r in records_of(a):
        assert r["reasoning_tokens"] == 5  # counted from the deltas themselves
        assert r["first_answer_s"] > r["first_token_s"]


def test_non_streaming(server, tmp_path):
    a = bench(server, fixed_workload(3, gap_s=0.2), tmp_path, stream=False)
    for r in records_of(a):
        assert r["status"] == "ok" and r["token_count_source"] == "non_streaming"
        assert r["first_token_s"] == r["done_s"]  # TTFT is E2E without streaming
        assert r["output_tokens"] == N_OUT and r["token_times"] == []
        assert close(r["done_s"] - r["scheduled_s"], TTFT + (N_OUT - 1) * TPOT)


def test_completions_endpoint(server, tmp_path):
    a = bench(server, fixed_workload(2), tmp_path, endpoint="completions")
    assert [r["output_tokens"] for r in records_of(a)] == [N_OUT, N_OUT]


def test_concurrency_cap_queueing_counts_in_latency_not_in_send_lag(server, tmp_path):
    # five requests 10 ms apart, one slot: each waits for the one before (~0.58 s each)
    plan = LoadPlan(mode="open", max_concurrency=1)
    a = bench(server, fixed_workload(5, gap_s=0.01, output_tokens=5), tmp_path, plan=plan)
    rows = records_of(a)
    e2e = TTFT + 4 * TPOT
    for k, r in enumerate(rows):
        assert r["status"] == "ok"
        assert r["queue_s"] >= k * e2e - k * 0.01 - 0.02
        assert r["first_token_s"] - r["scheduled_s"] >= TTFT + r["queue_s"] - 0.005
        assert r["sent_s"] - r["scheduled_s"] - r["queue_s"] < 0.02
    assert a.health["valid"] or "CPU" in " ".join(a.health["reasons"])


def test_step_ramp_adds_users(server, tmp_path):
    plan = LoadPlan(mode="ramp", ramp_start=1, ramp_step=1, ramp_interval_s=1.0, ramp_max=3,
                    duration_s=3.0)
    a = bench(server, fixed_workload(200), tmp_path, plan=plan)
    rows = records_of(a)

    def in_flight(t: float) -> int:
        return sum(1 for r in rows if r["sent_s"] <= t < r["done_s"])

    assert in_flight(0.5) == 1
    assert in_flight(1.5) == 2
    assert in_flight(2.5) == 3
    assert all(r["scheduled_s"] < 3.0 for r in rows)


def test_duration_limit_warmup_and_cooldown(server, tmp_path):
    plan = LoadPlan(mode="open", duration_s=1.0, warmup_s=0.2, cooldown_s=0.2)
    a = bench(server, fixed_workload(40, gap_s=0.05, output_tokens=3), tmp_path, plan=plan)
    rows = records_of(a)
    assert len(rows) == 19  # arrivals 0.05 .. 0.95: those at or after 1.0 s are never sent
    assert a.summary["window"] == [0.2, 0.8]
    counted = sum(1 for r in rows if 0.2 <= r["scheduled_s"] < 0.8)
    assert a.summary["total_requests"] == len(rows)  # records keep everything
    assert a.summary["overall"]["requests"] == counted
    assert a.summary["excluded_by_window"] == len(rows) - counted
