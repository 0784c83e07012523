"""Sessions in the simulator: a follow-up turn is released when the turn before it finishes plus
its think time (never before its own arrival_s), with and without fast-forward, on one or many
replicas, after a rejection, and with prefix-cache reuse across turns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from helpers import LinearCost
from slobench.engine.scheduler import Scheduler, SchedulerConfig
from slobench.engine.simulator import simulate
from slobench.schema import conform_workload, session_links


class DelayedCost(LinearCost):
    def admission_delay_s(self, prompt_tokens: int) -> float:
        return 0.01 + 1e-5 * prompt_tokens


def maker(cost=None, **cfg):
    c = cost if cost is not None else LinearCost()
    config = SchedulerConfig(**cfg)
    return lambda: Scheduler(c, config)


def sessions_table(n_sessions: int, turns: int, *, gap_s: float = 0.05, think_s: float = 0.2,
                   base_input: int = 64, output: int = 30, seed: int = 0,
                   block_tokens: int = 16) -> pa.Table:
    """``n_sessions`` chat sessions of ``turns`` turns; context grows by each turn's output and a
    new message; arrival_s of a follow-up is its lower bound (previous arrival + think)."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("request_id", "arrival_s", "client_id", "app",
                                            "session_id", "turn", "think_s", "input_tokens",
                                            "output_tokens", "prefix_blocks")}
    next_block = 1
    for s in range(n_sessions):
        t = s * gap_s
        ctx = base_input
        blocks: list[int] = []
        for k in range(turns):
            out = int(rng.integers(output // 2, output + 1))
            think = 0.0 if k == 0 else think_s * float(rng.uniform(0.5, 1.5))
            t = t + think
            full = ctx // block_tokens
            while len(blocks) < full:
                blocks.append(next_block)
                next_block += 1
            rows["request_id"].append(f"s{s}.t{k}")
            rows["arrival_s"].append(t)
            rows["client_id"].append("c0")
            rows["app"].append("chatbot")
            rows["session_id"].append(f"s{s}")
            rows["turn"].append(k)
            rows["think_s"].append(think)
            rows["input_tokens"].append(ctx)
            rows["output_tokens"].append(out)
            rows["prefix_blocks"].append(list(blocks[:full]))
            ctx += out + int(rng.integers(10, 40))
    return conform_workload(pa.table({
        **rows, "turn": pa.array(rows["turn"], pa.int32()),
        "prefix_blocks": pa.array(rows["prefix_blocks"], pa.list_(pa.int64())),
    }))


def check_release(wl: pa.Table, rec: pa.Table, delay=None) -> None:
    prev, _ = session_links(wl)
    sched = rec["scheduled_s"].to_numpy()
    done = rec["done_s"].to_numpy()
    arrival = wl["arrival_s"].to_numpy()
    think = wl["think_s"].to_numpy()
    follow = np.flatnonzero(prev >= 0)
    assert len(follow)
    want = np.maximum(arrival[follow], done[prev[follow]] + think[follow])
    assert np.allclose(sched[follow], want, rtol=0, atol=1e-9)
    first = np.flatnonzero(prev < 0)
    assert np.array_equal(sched[first], arrival[first])
    # a follow-up is never sent before the turn before it is done
    assert np.all(sched[follow] >= done[prev[follow]])
    ok = rec["status"].to_numpy(zero_copy_only=False) == "ok"
    ft = rec["first_token_s"].to_numpy(zero_copy_only=False)
    assert np.all(ft[ok & (rec["output_tokens"].to_numpy() > 0)] > sched[ok & (
        rec["output_tokens"].to_numpy() > 0)])


def test_followups_wait_for_previous_turn_and_think_time():
    wl = sessions_table(20, 4)
    res = simulate(wl, maker(block_size=16))
    check_release(wl, res.records)
    assert res.records["status"].to_pylist() == ["ok"] * wl.num_rows


def test_followup_never_sent_before_its_arrival():
    # arrival_s far later than done + think: the arrival wins
    wl = sessions_table(3, 3, think_s=0.0)
    arr = wl["arrival_s"].to_numpy().copy()
    arr[wl["turn"].to_numpy() > 0] += 5.0
    wl = wl.set_column(1, "arrival_s", pa.array(arr))
    res = simulate(wl, maker(block_size=16))
    check_release(wl, res.records)
    sched = res.records["scheduled_s"].to_numpy()
    second = wl["turn"].to_numpy() == 1  # its first turn ended long before its arrival
    assert np.array_equal(sched[second], arr[second])


@pytest.mark.parametrize("replicas,router", [(1, "round_robin"), (3, "least_outstanding"),
                                             (3, "round_robin")])
def test_fast_forward_equals_single_stepping_with_sessions(replicas, router):
    wl = sessions_table(40, 5, gap_s=0.01, think_s=0.0, output=60)
    mk = maker(DelayedCost(), block_size=16, max_num_seqs=8)
    a = simulate(wl, mk, replicas=replicas, router=router)
    b = simulate(wl, mk, replicas=replicas, router=router, fast_forward=False)
    assert a.records.equals(b.records)
    check_release(wl, a.records)


def test_rejected_turn_releases_next_turn_at_once():
    wl = sessions_table(2, 3)
    inp = wl["input_tokens"].to_numpy().copy()
    inp[1] = 10**7  # turn 1 of session 0 can never fit: rejected
    wl = wl.set_column(wl.schema.get_field_index("input_tokens"), "input_tokens", pa.array(inp))
    res = simulate(wl, maker(LinearCost(kv_tokens=20_000), block_size=16))
    rec = res.records.to_pydict()
    assert rec["status"][1] == "http_error"
    assert rec["done_s"][1] == rec["scheduled_s"][1]
    assert rec["status"][2] == "ok"
    assert rec["scheduled_s"][2] == pytest.approx(
        max(wl["arrival_s"][2].as_py(), rec["done_s"][1] + wl["think_s"][2].as_py()))


def test_prefix_cache_reused_across_turns():
    wl = sessions_table(10, 4, block_tokens=16)
    on = simulate(wl, maker(block_size=16, enable_prefix_caching=True))
    assert on.stats["prefix_hit_rate"] > 0.3


def test_empty_session_id_stands_alone():
    wl = sessions_table(2, 3)
    wl = wl.set_column(wl.schema.get_field_index("session_id"), "session_id",
                       pa.array([""] * wl.num_rows))
    res = simulate(wl, maker(block_size=16))
    assert np.array_equal(res.records["scheduled_s"].to_numpy(), wl["arrival_s"].to_numpy())


@pytest.mark.parametrize("replicas", [1, 2])
def test_fast_forward_stops_where_a_finish_releases_a_turn(replicas):
    # few sessions, nothing ever waits, very different output lengths: a plain fast-forward
    # would run past the finish that releases the next turn
    wl = sessions_table(4, 6, gap_s=0.003, think_s=0.0, output=400, seed=3)
    mk = maker(block_size=16, max_num_seqs=64)
    a = simulate(wl, mk, replicas=replicas, router="round_robin")
    b = simulate(wl, mk, replicas=replicas, router="round_robin", fast_forward=False)
    assert a.records.equals(b.records)
    check_release(wl, a.records)


def test_followups_due_after_the_horizon_are_not_sent():
    wl = sessions_table(6, 5, gap_s=0.1, think_s=0.5)
    full = simulate(wl, maker(block_size=16))
    cut = simulate(wl, maker(block_size=16), horizon_s=1.2)
    sched = cut.records["scheduled_s"].to_numpy()
    assert np.all(sched < 1.2)
    assert 6 <= cut.records.num_rows < wl.num_rows == full.records.num_rows
    assert cut.stats["requests"] + cut.stats["followups_after_horizon"] == wl.num_rows
    assert full.records["scheduled_s"].to_numpy().max() > 1.2  # the cut mattered
