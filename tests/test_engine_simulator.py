"""The virtual-time simulator: Records like a live run, fast-forward == single-stepping,
determinism, routers, and overload (KV exhaustion, preemption storms, unbounded queues)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from helpers import LinearCost
from slobench.engine.core import StepShape
from slobench.engine.router import make_router
from slobench.engine.scheduler import REJECT_KV, Scheduler, SchedulerConfig
from slobench.engine.simulator import simulate
from slobench.errors import UserError
from slobench.schema import RECORDS_SCHEMA, conform_workload
from slobench.workload.synthetic import synthetic_workload


class DelayedCost(LinearCost):
    """With a frontend delay before the engine sees a request (as RooflineCostModel has)."""

    def admission_delay_s(self, prompt_tokens: int) -> float:
        return 0.01 + 1e-5 * prompt_tokens


def maker(kv_tokens: int = 1_000_000, cost=None, **cfg):
    c = cost if cost is not None else LinearCost(kv_tokens)
    config = SchedulerConfig(**cfg)
    return lambda: Scheduler(c, config)


def table(rows: list[dict]) -> pa.Table:
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    return conform_workload(pa.table(cols))


def roofline():
    from slobench.engine.costmodel import RooflineCostModel

    return RooflineCostModel("llama-3.1-8b", "h100")


def check_records(res, wl: pa.Table) -> None:
    rec = res.records
    assert rec.schema.equals(RECORDS_SCHEMA)
    assert rec.num_rows == wl.num_rows
    assert rec["request_id"].to_pylist() == wl["request_id"].to_pylist()
    d = rec.to_pydict()
    for i in range(rec.num_rows):
        tt = d["token_times"][i]
        assert d["status"][i] in ("ok", "http_error")
        assert d["sent_s"][i] == d["scheduled_s"][i]
        assert d["queue_s"][i] == 0.0
        if d["status"][i] != "ok":
            assert tt == [] and d["http_status"][i] == 400 and d["error"][i]
            continue
        assert d["http_status"][i] == 200 and d["error"][i] is None
        assert d["token_count_source"][i] == "usage_deltas"
        assert len(tt) == d["output_tokens"][i] == wl["output_tokens"][i].as_py()
        assert tt == sorted(tt)
        if tt:
            assert tt[0] == d["first_token_s"][i] > d["scheduled_s"][i]
            assert tt[-1] == d["done_s"][i]
            r = d["reasoning_tokens"][i]
            assert r == min(wl["reasoning_tokens"][i].as_py(), len(tt))
            if len(tt) > r:
                assert d["first_answer_s"][i] == tt[r]
            else:
                assert d["first_answer_s"][i] is None


def check_trace(res, cost) -> None:
    """Per step: tokens emitted == decodes + prefills completed; never more than the batch."""
    total = 0
    best = 0.0
    busy = 0.0
    for tr in res.traces:
        for _, shape, gen, first in tr:
            if shape is None:
                assert gen == 0
                continue
            prefills = shape.num_seqs - shape.decode_tokens
            assert 0 <= first <= prefills
            assert gen == shape.decode_tokens + first
            dt = cost.step_time(shape)
            busy += dt
            total += gen
            best = max(best, gen / dt)
    assert total == sum(res.records["output_tokens"].to_pylist())
    # overall output tokens/s never beats the best step
    assert total / busy <= best * (1 + 1e-12)


# ---- Records ---------------------------------------------------------------------------------


def test_records_look_like_a_live_run():
    wl = synthetic_workload(rate=5, duration_s=20, apps="chatbot:0.5,reasoning:0.5",
                            reasoning_fraction=0.5, seed=3)
    res = simulate(wl, maker())
    check_records(res, wl)
    assert set(res.records["status"].to_pylist()) == {"ok"}
    assert res.sim_end_s == pytest.approx(max(res.records["done_s"].to_pylist()))
    st = res.stats
    assert st["requests"] == wl.num_rows and st["rejected"] == 0
    assert st["replicas"][0]["steps"] == st["steps"] > 0
    assert 0 < st["replicas"][0]["busy_s"] <= res.sim_end_s


def test_records_feed_the_slo_summary():
    from slobench.slo.metrics import derive

    wl = synthetic_workload(rate=5, duration_s=10, seed=1)
    res = simulate(wl, maker(cost=roofline()))
    d = derive(res.records)
    assert np.all(np.isfinite(d.ttft)) and np.all(d.ttft > 0)


def test_roofline_low_load_ttft_is_plausible():
    # one 256-token prompt on an idle Llama-3.1-8B / H100: TTFT well under 150 ms
    wl = table([{"request_id": "a", "arrival_s": 0.0, "input_tokens": 256,
                 "output_tokens": 64}])
    res = simulate(wl, maker(cost=roofline()))
    rec = res.records.to_pylist()[0]
    assert 0.005 < rec["first_token_s"] < 0.15
    tpot = (rec["done_s"] - rec["first_token_s"]) / 63
    assert 0.003 < tpot < 0.02


def test_rejected_request_record():
    wl = table([
        {"request_id": "big", "arrival_s": 0.5, "input_tokens": 900, "output_tokens": 200},
        {"request_id": "ok", "arrival_s": 0.0, "input_tokens": 100, "output_tokens": 20},
    ])
    res = simulate(wl, maker(kv_tokens=1024))
    check_records(res, wl)
    big = res.records.to_pylist()[0]
    assert big["status"] == "http_error" and big["http_status"] == 400
    assert big["error"] == REJECT_KV
    assert big["output_tokens"] == 0 and big["first_token_s"] is None
    assert big["done_s"] == 0.5
    assert res.stats["rejected"] == 1


def test_zero_output_request():
    wl = table([{"request_id": "z", "arrival_s": 0.0, "input_tokens": 100, "output_tokens": 0}])
    rec = simulate(wl, maker()).records.to_pylist()[0]
    assert rec["status"] == "ok" and rec["output_tokens"] == 0 and rec["token_times"] == []
    assert rec["first_token_s"] is None and rec["done_s"] > 0


def test_frontend_delay_of_the_cost_model():
    wl = table([{"request_id": "a", "arrival_s": 1.0, "input_tokens": 1000,
                 "output_tokens": 2}])
    plain = simulate(wl, maker()).records.to_pylist()[0]
    delayed = simulate(wl, maker(cost=DelayedCost())).records.to_pylist()[0]
    assert delayed["first_token_s"] == pytest.approx(plain["first_token_s"] + 0.02)
    assert delayed["scheduled_s"] == 1.0


def test_progress_callback():
    seen: list[float] = []
    wl = synthetic_workload(rate=10, duration_s=20, seed=2)
    res = simulate(wl, maker(), progress=seen.append)
    assert len(seen) > 10 and seen == sorted(seen) and seen[-1] <= res.sim_end_s


def test_empty_and_bad_inputs():
    with pytest.raises(UserError, match="router"):
        simulate(synthetic_workload(rate=1, duration_s=5), maker(), router="random")
    with pytest.raises(UserError, match="replicas"):
        simulate(synthetic_workload(rate=1, duration_s=5), maker(), replicas=0)


# ---- fast-forward == single-stepping, determinism -----------------------------------------

SCENARIOS = {
    "roofline_20rps": dict(wl=dict(rate=20, duration_s=30), mk=dict(cost="roofline")),
    "overload": dict(wl=dict(rate=80, duration_s=15), mk=dict(cost="roofline")),
    "kv_storm": dict(wl=dict(rate=20, duration_s=10, output_tokens="lognormal:mean=400,cv=1,"
                             "max=1500", input_tokens="lognormal:mean=200,cv=1,max=1000"),
                     mk=dict(kv_tokens=4096, max_num_batched_tokens=512, max_num_seqs=64)),
    "kv_storm_no_cache": dict(wl=dict(rate=20, duration_s=10, input_tokens=300,
                                      output_tokens="uniform:100..800"),
                              mk=dict(kv_tokens=3000, enable_prefix_caching=False)),
    "no_chunking": dict(wl=dict(rate=30, duration_s=10),
                        mk=dict(kv_tokens=20_000, enable_chunked_prefill=False)),
    "priority": dict(wl=dict(rate=40, duration_s=10), mk=dict(kv_tokens=6000,
                                                              policy="priority")),
    "slo": dict(wl=dict(rate=60, duration_s=10, apps="chatbot:0.5,coding:0.5"),
                mk=dict(kv_tokens=50_000, policy="slo")),
    "replicas": dict(wl=dict(rate=60, duration_s=10), mk=dict(kv_tokens=8000),
                     replicas=3, router="least_outstanding"),
    "replicas_low_load": dict(wl=dict(rate=8, duration_s=20, output_tokens="uniform:50..600"),
                              mk=dict(cost="roofline"), replicas=3, router="least_outstanding"),
    "prefix_affinity": dict(wl="prefix", mk=dict(kv_tokens=6000, max_num_batched_tokens=512),
                            replicas=2, router="prefix_affinity"),
}


def prefix_workload(n: int = 300, seed: int = 4) -> pa.Table:
    """Requests sharing one of 6 system prompts (32 blocks of 16 tokens), then their own text."""
    rng = np.random.default_rng(seed)
    rows = []
    t = 0.0
    for i in range(n):
        t += rng.exponential(0.03)
        group = int(rng.integers(6))
        own = int(rng.integers(1, 20))
        rows.append({"request_id": f"r{i}", "arrival_s": t, "input_tokens": 16 * (32 + own) + 5,
                     "output_tokens": int(rng.integers(1, 300)),
                     "prefix_blocks": [group * 1000 + j for j in range(32)]
                     + [10**6 + 100 * i + j for j in range(own)]})
    return table(rows)


def scenario(name: str):
    sc = SCENARIOS[name]
    wl = prefix_workload() if sc["wl"] == "prefix" else synthetic_workload(seed=7, **sc["wl"])
    mk = dict(sc["mk"])
    if mk.get("cost") == "roofline":
        mk["cost"] = roofline()
    kw = {"replicas": sc.get("replicas", 1), "router": sc.get("router", "round_robin")}
    if mk.get("policy") == "slo":
        kw["deadlines"] = {"chatbot": (0.3, 0.05), "coding": (2.0, 0.1)}
    if mk.get("policy") == "priority":
        kw["priorities"] = {"chatbot": 0}
    return wl, maker(**mk), kw


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fast_forward_equals_single_stepping(name):
    wl, mk, kw = scenario(name)
    fast = simulate(wl, mk, trace=True, **kw)
    slow = simulate(wl, mk, fast_forward=False, trace=True, **kw)
    assert fast.records.equals(slow.records)
    assert fast.sim_end_s == slow.sim_end_s
    for a, b in zip(fast.stats["replicas"], slow.stats["replicas"], strict=True):
        assert a.pop("busy_s") == pytest.approx(b.pop("busy_s"), rel=1e-12)  # summed in chunks
        assert a == b
    assert fast.traces == slow.traces
    check_records(fast, wl)
    check_trace(fast, mk().cost)


def test_deterministic():
    wl, mk, kw = scenario("kv_storm")
    a = simulate(wl, mk, **kw)
    b = simulate(wl, mk, **kw)
    assert a.records.equals(b.records)
    assert a.stats["replicas"] == b.stats["replicas"]


# ---- overload --------------------------------------------------------------------------------


def test_kv_exhaustion_and_preemption_storm():
    # KV for ~6 long requests at a time, 200 requests of long outputs arriving at once-ish
    wl = synthetic_workload(rate=100, n_requests=200, input_tokens="uniform:50..500",
                            output_tokens="uniform:500..2000", seed=11)
    mk = maker(kv_tokens=8192, max_num_batched_tokens=1024, max_num_seqs=128,
               enable_prefix_caching=False)
    res = simulate(wl, mk, trace=True, max_steps=2_000_000)
    check_records(res, wl)
    assert set(res.records["status"].to_pylist()) == {"ok"}
    st = res.stats["replicas"][0]
    assert st["preemptions"] > 50
    check_trace(res, mk().cost)
    # recompute is paid: prefill computed >= every prompt + every discarded computed token
    prefill = sum(sh.prefill_tokens for _, sh, _, _ in res.traces[0] if sh is not None)
    prompts = int(np.maximum(wl["input_tokens"].to_numpy(), 1).sum())
    assert st["hit_tokens"] == 0
    assert prefill == st["prefill_tokens_computed"]
    assert prefill >= prompts + st["lost_tokens"]
    assert st["lost_tokens"] > 0
    # decode work equals the tokens emitted after each (re)prefill
    decode = sum(sh.decode_tokens for _, sh, _, _ in res.traces[0] if sh is not None)
    out = int(wl["output_tokens"].to_numpy().sum())
    assert decode < out
    # roofline bound: output tokens/s <= the best a full batch can do with no context at all
    cost = mk().cost
    bound = max(n / cost.step_time(StepShape(n, 0, n, 0, 0.0)) for n in range(1, 129))
    assert out / st["busy_s"] <= bound


def test_preemption_storm_with_prefix_cache_counts_hits():
    wl = synthetic_workload(rate=100, n_requests=150, input_tokens="uniform:50..500",
                            output_tokens="uniform:500..2000", seed=12)
    mk = maker(kv_tokens=8192, max_num_batched_tokens=1024, max_num_seqs=128)
    res = simulate(wl, mk, trace=True, max_steps=2_000_000)
    check_records(res, wl)
    st = res.stats["replicas"][0]
    assert st["preemptions"] > 50
    prompts = int(wl["input_tokens"].to_numpy().sum())
    # every (re)admission computes its prompt and generated tokens, less what the cache holds
    assert st["hit_tokens"] > 0
    assert st["prefill_tokens_computed"] + st["hit_tokens"] >= prompts + st["lost_tokens"]
    check_trace(res, mk().cost)


def test_unbounded_queue_finishes():
    # arrivals far above capacity: the queue grows without bound, every request still finishes
    wl = synthetic_workload(rate=400, duration_s=10, seed=5)
    mk = maker(cost=roofline(), max_num_seqs=64, max_num_batched_tokens=2048)
    res = simulate(wl, mk, trace=True, max_steps=1_000_000)
    check_records(res, wl)
    assert set(res.records["status"].to_pylist()) == {"ok"}
    st = res.stats
    assert st["max_waiting"] > 1000
    assert res.sim_end_s > 3 * 10  # it takes far longer than the arrivals
    check_trace(res, mk().cost)
    # FCFS: first tokens come roughly in arrival order (no starvation)
    rec = res.records
    order = np.argsort(rec["scheduled_s"].to_numpy())
    ft = rec["first_token_s"].to_numpy()[order]
    assert np.corrcoef(np.arange(len(ft)), ft)[0, 1] > 0.99


def test_slo_policy_beats_fcfs_on_tight_deadlines_under_overload():
    wl = synthetic_workload(rate=45, duration_s=30, apps="chatbot:0.3,batch:0.7", seed=9)
    deadlines = {"chatbot": (0.5, None), "batch": (30.0, None)}
    out = {}
    for policy in ("fcfs", "slo"):
        res = simulate(wl, maker(cost=roofline(), policy=policy, max_num_seqs=32),
                       deadlines=deadlines)
        rec = res.records.to_pydict()
        met = [ft - s <= 0.5 for ft, s, app in zip(rec["first_token_s"], rec["scheduled_s"],
                                                    rec["app"], strict=True) if app == "chatbot"]
        out[policy] = np.mean(met)
    assert out["slo"] > out["fcfs"] + 0.2


# ---- routers ---------------------------------------------------------------------------------


def test_round_robin_router():
    wl = synthetic_workload(rate=20, n_requests=30, seed=1)
    res = simulate(wl, maker(), replicas=3, router="round_robin")
    steps = [r["steps"] for r in res.stats["replicas"]]
    assert all(s > 0 for s in steps)
    rt = make_router("round-robin", 3)
    assert [rt.choose(None, [0, 0, 0]) for _ in range(5)] == [0, 1, 2, 0, 1]


def test_least_outstanding_router():
    from slobench.engine.core import EngineRequest

    rt = make_router("least_outstanding", 3)
    r = EngineRequest("x", 10, 10, 0.0)
    assert rt.choose(r, [3, 1, 2]) == 1
    assert rt.choose(r, [2, 2, 2]) == 0
    # a burst spread by outstanding requests keeps the replicas even
    wl = synthetic_workload(rate=200, n_requests=90, seed=1)
    res = simulate(wl, maker(), replicas=3, router="least_outstanding")
    prompts = [r["prompt_tokens"] for r in res.stats["replicas"]]
    assert min(prompts) > 0.2 * sum(prompts)


def test_prefix_affinity_router_improves_hit_rate():
    from slobench.engine.core import EngineRequest

    rt = make_router("prefix_affinity", 4)
    a = EngineRequest("a", 64, 1, 0.0, prefix_blocks=[42, 1])
    b = EngineRequest("b", 64, 1, 0.0, prefix_blocks=[42, 2])
    first = rt.choose(a, [0, 0, 0, 0])
    assert rt.choose(b, [9, 9, 9, 9] if first else [9, 0, 0, 0]) == first
    assert rt.choose(EngineRequest("c", 64, 1, 0.0), [3, 1, 0, 2]) == 2  # no prefix: least

    # 8 system prompts of 1024 tokens (64 blocks) shared by 400 requests
    rng = np.random.default_rng(0)
    rows = []
    for i in range(400):
        group = int(rng.integers(8))
        own = [10_000 + 100 * i + j for j in range(8)]
        rows.append({"request_id": f"r{i}", "arrival_s": i * 0.02, "input_tokens": 1024 + 128,
                     "output_tokens": 32,
                     "prefix_blocks": [group * 1000 + j for j in range(64)] + own})
    wl = table(rows)
    rates = {}
    for router in ("round_robin", "prefix_affinity"):
        res = simulate(wl, maker(kv_tokens=20_000), replicas=4, router=router)
        check_records(res, wl)
        rates[router] = res.stats["prefix_hit_rate"]
    assert rates["prefix_affinity"] > rates["round_robin"]
    assert rates["prefix_affinity"] > 0.8
