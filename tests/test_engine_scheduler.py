"""The engine scheduler (vLLM v1 style) and its paged KV cache, driven step by step."""

from __future__ import annotations

import pytest

from helpers import LinearCost
from slobench.engine.core import EngineRequest, StepShape
from slobench.engine.kvcache import KVCache, SeqKV
from slobench.engine.scheduler import REJECT_BUDGET, REJECT_KV, Scheduler, SchedulerConfig
from slobench.errors import UserError


def req(rid: str, prompt: int = 100, out: int = 10, at: float = 0.0, **kw) -> EngineRequest:
    return EngineRequest(request_id=rid, prompt_tokens=prompt, max_output_tokens=out,
                         arrival_s=at, **kw)


def sched(kv_tokens: int = 1_000_000, **cfg) -> Scheduler:
    return Scheduler(LinearCost(kv_tokens), SchedulerConfig(**cfg))


class Driver:
    """Runs a scheduler on a virtual clock through its public API (as the emulator does) and
    checks the invariants of every step."""

    def __init__(self, s: Scheduler) -> None:
        self.s = s
        self.now = 0.0
        self.tokens: dict[str, list[float]] = {}
        self.finished: dict[str, float] = {}
        self.preempted_at: list[tuple[str, int]] = []  # (id, tokens it had emitted)
        self.shapes: list[StepShape | None] = []
        self.results = []
        self.prompt: dict[str, int] = {}
        self.pending: list[EngineRequest] = []

    def submit(self, *reqs: EngineRequest) -> None:
        self.pending.extend(reqs)
        self.pending.sort(key=lambda r: r.arrival_s)

    def step(self):
        while self.pending and self.pending[0].arrival_s <= self.now:
            r = self.pending.pop(0)
            self.prompt[r.request_id] = r.prompt_tokens
            self.s.add(r)
        res = self.s.step(self.now)
        if res is None:
            if self.pending:
                self.now = self.pending[0].arrival_s
            return None
        end = self.now + res.duration_s
        shape = res.shape
        self.shapes.append(shape)
        self.results.append(res)
        if shape is not None:
            assert res.duration_s == self.s.cost.step_time(shape)
            # never a token no step paid for: one per decoding sequence or completed prefill
            prefills = shape.num_seqs - shape.decode_tokens
            assert len(res.emitted) <= shape.decode_tokens + prefills
            assert shape.num_seqs <= self.s.config.max_num_seqs
            assert shape.prefill_tokens + shape.decode_tokens <= \
                self.s.config.max_num_batched_tokens
        for rid, k in res.emitted:
            assert k == 1
            assert rid not in self.finished
            self.tokens.setdefault(rid, []).append(end)
        for rid in res.preempted:
            self.preempted_at.append((rid, len(self.tokens.get(rid, []))))
        for rid in res.finished:
            self.finished[rid] = end
        self.s.kv.check()
        self.now = end
        return res

    def run(self, max_steps: int = 100_000) -> int:
        n = 0
        while self.s.has_work() or self.pending:
            self.step()
            n += 1
            assert n <= max_steps, "no progress: livelock"
        return n


# ---- configuration --------------------------------------------------------------------------


def test_config_validation():
    with pytest.raises(UserError, match="max_num_seqs"):
        SchedulerConfig(max_num_batched_tokens=100, max_num_seqs=256)
    with pytest.raises(UserError, match="policy"):
        SchedulerConfig(policy="lifo")
    with pytest.raises(UserError, match="prefix_block_tokens"):
        SchedulerConfig(prefix_block_tokens=24)
    with pytest.raises(UserError, match="block"):
        Scheduler(LinearCost(kv_tokens=8))
    assert Scheduler(LinearCost(kv_tokens=16_000)).stats["kv_capacity_tokens"] == 16_000
    s = Scheduler(LinearCost(kv_tokens=16_000), SchedulerConfig(kv_capacity_tokens=1000))
    assert s.stats["kv_capacity_tokens"] == 992  # whole blocks


def test_idle_scheduler():
    s = sched()
    assert not s.has_work()
    assert s.step(0.0) is None


# ---- budget, max_num_seqs, chunked prefill ---------------------------------------------------


def test_token_budget_and_chunking_across_requests():
    s = sched(max_num_batched_tokens=2048, max_num_seqs=8)
    for i in range(4):
        s.add(req(f"r{i}", prompt=1000, out=5))
    res = s.step(0.0)
    assert res.shape.prefill_tokens == 2048
    assert res.shape.num_seqs == 3  # 1000 + 1000 + a 48-token chunk of the third
    assert sorted(rid for rid, _ in res.emitted) == ["r0", "r1"]
    res = s.step(res.duration_s)
    # two decodes, then the third's remaining 952 tokens, then the fourth's 1000
    assert res.shape.decode_tokens == 2
    assert res.shape.prefill_tokens == 952 + 1000
    assert res.shape.num_seqs == 4
    assert res.shape.kv_read_tokens == 1000 + 1000 + 48


def test_max_num_seqs_caps_the_batch():
    d = Driver(sched(max_num_seqs=2, max_num_batched_tokens=4096))
    d.submit(*[req(f"r{i}", prompt=10, out=20) for i in range(5)])
    d.run()
    assert all(sh.num_seqs <= 2 for sh in d.shapes if sh)
    assert max(sh.num_seqs for sh in d.shapes if sh) == 2
    assert {k: len(v) for k, v in d.tokens.items()} == {f"r{i}": 20 for i in range(5)}
    # the first two run together; the third starts only when a slot is free
    assert d.tokens["r2"][0] > d.tokens["r0"][-1] - 1e-12


def test_chunked_prefill_splits_a_long_prompt():
    d = Driver(sched(max_num_batched_tokens=2048, max_num_seqs=16))
    d.submit(req("long", prompt=5000, out=3))
    d.run()
    pre = [sh for sh in d.shapes if sh and sh.prefill_tokens]
    assert [sh.prefill_tokens for sh in pre] == [2048, 2048, 904]
    assert [sh.kv_read_tokens for sh in pre] == [0, 2048, 4096]
    assert pre[1].prefill_attn_pairs == 2048 * (2048 + 2049 / 2)
    # the first token comes out of the step that completes the prompt, not before
    assert len(d.tokens["long"]) == 3
    ends = []
    t = 0.0
    for sh in d.shapes:
        t += d.s.cost.step_time(sh)
        ends.append(t)
    assert d.tokens["long"][0] == pytest.approx(ends[2])
    # decode steps attend to the whole context
    dec = [sh for sh in d.shapes if sh and sh.decode_tokens]
    assert [sh.kv_read_tokens for sh in dec] == [5000, 5001]


def test_without_chunking_a_prompt_runs_whole_or_waits():
    d = Driver(sched(max_num_batched_tokens=2048, enable_chunked_prefill=False))
    d.submit(req("a", prompt=1500, out=2), req("b", prompt=1500, out=2))
    d.run()
    assert [sh.prefill_tokens for sh in d.shapes if sh.prefill_tokens] == [1500, 1500]
    assert d.tokens["b"][0] > d.tokens["a"][0]


def test_decodes_go_first_then_prefills():
    d = Driver(sched(max_num_batched_tokens=600, max_num_seqs=10))
    d.submit(req("a", prompt=10, out=50), req("b", prompt=10, out=50),
             req("c", prompt=2000, out=2, at=0.001))
    d.run()
    mixed = [sh for sh in d.shapes if sh.prefill_tokens and sh.decode_tokens]
    assert mixed and all(sh.prefill_tokens == 600 - sh.decode_tokens for sh in mixed[:-1])


# ---- tokens and finishing ------------------------------------------------------------------


def test_every_request_gets_exactly_its_tokens():
    d = Driver(sched(max_num_batched_tokens=512, max_num_seqs=4))
    outs = [1, 2, 7, 33, 100, 5]
    d.submit(*[req(f"r{i}", prompt=37 * (i + 1), out=o, at=0.01 * i)
               for i, o in enumerate(outs)])
    d.run()
    assert {k: len(v) for k, v in d.tokens.items()} == {f"r{i}": o for i, o in enumerate(outs)}
    for rid, times in d.tokens.items():
        assert times == sorted(times)
        assert d.finished[rid] == times[-1]
    st = d.s.stats
    assert st["running"] == st["waiting"] == 0
    assert st["kv_usage"] == 0.0
    assert st["generation_tokens_total"] == sum(outs)
    assert st["prompt_tokens_total"] == sum(37 * (i + 1) for i in range(6))


def test_zero_output_tokens_finishes_after_prefill():
    d = Driver(sched())
    d.submit(req("z", prompt=50, out=0))
    d.run()
    assert "z" in d.finished and "z" not in d.tokens


# ---- rejection -----------------------------------------------------------------------------


def test_request_that_can_never_fit_is_rejected_not_livelocked():
    s = sched(kv_tokens=1024)
    d = Driver(s)
    d.submit(req("big", prompt=1000, out=100), req("ok", prompt=100, out=10))
    d.run(max_steps=100)
    assert s.rejected == ["big"]
    assert s.reject_reasons["big"] == REJECT_KV
    assert "big" in d.finished and "big" not in d.tokens
    assert len(d.tokens["ok"]) == 10
    assert s.stats["rejected_total"] == 1
    # exactly at capacity fits: prompt + output - 1 tokens of KV (the last token is not cached)
    s2 = sched(kv_tokens=1024)
    d2 = Driver(s2)
    d2.submit(req("edge", prompt=1000, out=25))
    d2.run()
    assert s2.rejected == [] and len(d2.tokens["edge"]) == 25


def test_reject_beyond_budget_without_chunking():
    s = sched(max_num_batched_tokens=1024, enable_chunked_prefill=False)
    s.add(req("x", prompt=1000, out=100))
    assert s.reject_reasons == {"x": REJECT_BUDGET}
    res = s.step(0.0)
    assert res.finished == ["x"] and res.emitted == [] and res.duration_s == 0.0
    assert not s.has_work()


# ---- prefix caching ------------------------------------------------------------------------


def test_prefix_cache_hits_skip_compute():
    s = sched(max_num_batched_tokens=4096)
    d = Driver(s)
    hashes = list(range(1, 21))  # 20 blocks of 16 tokens = 320 tokens
    d.submit(req("a", prompt=320, out=2, prefix_blocks=hashes))
    d.run()
    assert d.shapes[0].prefill_tokens == 320
    d.submit(req("b", prompt=320, out=2, at=d.now, prefix_blocks=hashes))
    n0 = len(d.shapes)
    d.run()
    # 19 blocks hit: the last prompt block is computed again to sample the first token
    assert d.shapes[n0].prefill_tokens == 16
    assert d.shapes[n0].kv_read_tokens == 304
    st = s.stats
    assert st["prefix_cache_queries"] == 640
    assert st["prefix_cache_hits"] == 304
    # a request sharing only the first 10 blocks hits 10, then its own tokens are computed
    d.submit(req("c", prompt=400, out=1, at=d.now, prefix_blocks=[*range(1, 11), 99, 98]))
    n0 = len(d.shapes)
    d.run()
    assert d.shapes[n0].prefill_tokens == 400 - 160
    assert s.stats["prefix_cache_hits"] == 304 + 160


def test_prefix_caching_off_computes_everything():
    s = sched(enable_prefix_caching=False)
    d = Driver(s)
    d.submit(req("a", prompt=320, out=2, prefix_blocks=list(range(20))))
    d.run()
    d.submit(req("b", prompt=320, out=2, at=d.now, prefix_blocks=list(range(20))))
    n0 = len(d.shapes)
    d.run()
    assert d.shapes[n0].prefill_tokens == 320
    assert s.stats["prefix_cache_hits"] == 0


def test_shared_blocks_are_refcounted_and_evicted_lru():
    kv = KVCache(10, 16)
    a, b = SeqKV([1, 2, 3]), SeqKV([1, 2, 3])
    kv.admit(a, 48, 0, 0, 48)
    assert kv.free == 7 and kv.cached_units == 3
    hu, ch = kv.lookup(b, 48)
    assert (hu, ch) == (2, 0)  # at most 47 tokens hit: 2 whole blocks
    assert kv.admit_need(b, hu, ch, 48) == 0  # the third block is shared too (same hash)
    kv.admit(b, 48, hu, ch, 48)
    assert kv.free == 7
    kv.release(a)
    assert kv.free == 7 and kv.evictable == 0  # b still holds all three
    kv.release(b)
    assert kv.evictable == 3 and kv.available == 10 and kv.usage == 0.0
    kv.alloc(8)  # needs one cached block: the oldest freed (b's last block: tail first)
    assert kv.cached_units == 2 and kv.free == 0
    kv.check()


def test_multi_block_prefix_units():
    # Workload hashes covering 64 tokens each (4 KV blocks of 16)
    s = sched(prefix_block_tokens=64)
    d = Driver(s)
    d.submit(req("a", prompt=200, out=1, prefix_blocks=[7, 8, 9, 10]))
    d.run()
    d.submit(req("b", prompt=200, out=1, at=d.now, prefix_blocks=[7, 8, 9, 10]))
    n0 = len(d.shapes)
    d.run()
    assert d.shapes[n0].prefill_tokens == 200 - 192  # three whole 64-token units hit


# ---- preemption ----------------------------------------------------------------------------


def test_preemption_by_recompute_when_kv_runs_out():
    # 8 blocks of 16 = 128 tokens; two requests of 16 + 60 need 75 tokens (5 blocks) each
    s = sched(kv_tokens=128, enable_prefix_caching=False)
    d = Driver(s)
    d.submit(req("a", prompt=16, out=60), req("b", prompt=16, out=60))
    d.run()
    assert {k: len(v) for k, v in d.tokens.items()} == {"a": 60, "b": 60}
    assert s.stats["preemptions_total"] >= 1
    victims = {rid for rid, _ in d.preempted_at}
    assert victims == {"b"}  # the last admitted goes
    # the victim's prompt and generated tokens are prefilled again
    _, emitted = d.preempted_at[0]
    assert emitted > 0
    recompute = [sh.prefill_tokens for sh in d.shapes[2:] if sh and sh.prefill_tokens]
    assert recompute[0] == 16 + emitted
    total_prefill = sum(sh.prefill_tokens for sh in d.shapes if sh)
    assert total_prefill == 32 + sum(16 + k for _, k in d.preempted_at)


def test_preempted_request_reuses_its_cached_blocks():
    s = sched(kv_tokens=128, enable_prefix_caching=True)
    d = Driver(s)
    d.submit(req("a", prompt=16, out=60), req("b", prompt=16, out=60))
    d.run()
    assert {k: len(v) for k, v in d.tokens.items()} == {"a": 60, "b": 60}
    assert s.stats["preemptions_total"] >= 1
    total_prefill = sum(sh.prefill_tokens for sh in d.shapes if sh)
    # prefill computed + cache hits covers the prompts and every recompute exactly
    assert total_prefill + s.stats["hit_tokens_total"] == 32 + sum(
        16 + k for _, k in d.preempted_at)


def test_priority_policy_preempts_lowest_priority():
    s = sched(kv_tokens=128, policy="priority", enable_prefix_caching=False)
    d = Driver(s)
    d.submit(req("low", prompt=16, out=60, priority=5), req("high", prompt=16, out=60,
                                                            priority=0, at=0.0))
    d.run()
    assert {rid for rid, _ in d.preempted_at} == {"low"}
    assert d.tokens["high"][-1] < d.tokens["low"][-1]


def test_preemption_storm_terminates():
    s = sched(kv_tokens=512, max_num_batched_tokens=256, max_num_seqs=64)
    d = Driver(s)
    d.submit(*[req(f"r{i}", prompt=20 + i, out=200 + 6 * i, at=0.001 * i) for i in range(40)])
    steps = d.run(max_steps=200_000)
    assert s.stats["preemptions_total"] > 20
    assert s.rejected == []
    assert {k: len(v) for k, v in d.tokens.items()} == {f"r{i}": 200 + 6 * i for i in range(40)}
    gen = sum(len(v) for v in d.tokens.values())
    assert gen <= sum(sh.decode_tokens + sh.num_seqs - sh.decode_tokens for sh in d.shapes if sh)
    assert steps < 200_000


# ---- abort ---------------------------------------------------------------------------------


def test_abort_frees_blocks():
    s = sched(kv_tokens=10_000)
    d = Driver(s)
    d.submit(req("a", prompt=500, out=100), req("b", prompt=300, out=100),
             req("w", prompt=100, out=5, at=10.0))
    d.step()
    d.step()
    assert s.stats["kv_usage"] > 0
    s.abort("a")
    s.abort("b")
    assert s.stats["kv_usage"] == 0.0
    assert s.stats["running"] == 0
    s.abort("nope")  # unknown: no-op
    d.run()
    assert len(d.tokens["w"]) == 5
    assert "a" not in d.finished
    # abort while waiting
    s.add(req("x", prompt=10, out=5, at=d.now))
    s.abort("x")
    assert not s.has_work()
    s.kv.check()


def test_abort_during_prefill():
    s = sched(max_num_batched_tokens=256)
    d = Driver(s)
    d.submit(req("a", prompt=2000, out=5, prefix_blocks=list(range(100))))
    d.step()
    s.abort("a")
    assert s.stats["kv_usage"] == 0.0 and not s.has_work()
    s.kv.check()


# ---- policies ------------------------------------------------------------------------------


def first_token_order(d: Driver) -> list[str]:
    return sorted(d.tokens, key=lambda rid: (d.tokens[rid][0], rid))


def test_fcfs_order():
    d = Driver(sched(max_num_seqs=1, max_num_batched_tokens=1024))
    d.submit(*[req(f"r{i}", prompt=10, out=3, at=0.0) for i in range(4)])
    d.run()
    assert first_token_order(d) == ["r0", "r1", "r2", "r3"]


def test_priority_order_lower_first_ties_by_arrival():
    d = Driver(sched(max_num_seqs=1, max_num_batched_tokens=1024, policy="priority"))
    d.submit(req("blocker", out=3, priority=9, at=0.0),  # runs alone at first
             req("p2", out=3, priority=2, at=0.001), req("p0b", out=3, priority=0, at=0.001),
             req("p1", out=3, priority=1, at=0.001), req("p0a", out=3, priority=0, at=0.002))
    d.run()
    order = first_token_order(d)
    assert order == ["blocker", "p0b", "p0a", "p1", "p2"]


def test_slo_policy_earliest_deadline_first():
    d = Driver(sched(max_num_seqs=1, max_num_batched_tokens=1024, policy="slo"))
    d.submit(req("first", out=2, at=0.0),  # occupies the engine
             req("loose", out=2, at=0.001, ttft_deadline_s=100.0),
             req("tight", out=2, at=0.002, ttft_deadline_s=5.0),
             req("none", out=2, at=0.001),
             req("mid", out=2, at=0.001, ttft_deadline_s=50.0))
    d.run()
    assert first_token_order(d)[1:] == ["tight", "mid", "loose", "none"]


def test_slo_policy_defers_hopeless_requests():
    # a request whose first-token deadline already passed yields to one that can still make it
    d = Driver(sched(max_num_seqs=1, max_num_batched_tokens=1024, policy="slo"))
    d.submit(req("busy", prompt=10, out=100, at=0.0),
             req("late", prompt=10, out=2, at=0.001, ttft_deadline_s=0.05),
             req("ontime", prompt=10, out=2, at=0.001, ttft_deadline_s=5.0))
    d.run()
    assert first_token_order(d) == ["busy", "ontime", "late"]
    assert d.s.stats["deferrals_total"] == 1
    assert len(d.tokens["late"]) == 2  # best effort: still served


# ---- public API vs the simulator fast path -------------------------------------------------


def test_public_step_matches_simulator_path():
    import pyarrow as pa

    from slobench.engine.simulator import simulate
    from slobench.schema import conform_workload

    reqs = [req(f"r{i}", prompt=50 + 31 * i, out=20 + 13 * (i % 5), at=0.003 * i)
            for i in range(30)]
    cfg = dict(kv_tokens=2048, max_num_batched_tokens=256, max_num_seqs=16)
    d = Driver(sched(**cfg))
    d.submit(*reqs)
    d.run()
    wl = conform_workload(pa.table({
        "request_id": [r.request_id for r in reqs],
        "arrival_s": [r.arrival_s for r in reqs],
        "input_tokens": [r.prompt_tokens for r in reqs],
        "output_tokens": [r.max_output_tokens for r in reqs],
    }))
    res = simulate(wl, lambda: sched(**cfg))
    sim_times = dict(zip(res.records["request_id"].to_pylist(),
                         res.records["token_times"].to_pylist(), strict=True))
    assert sim_times == d.tokens
    assert res.stats["preemptions"] == d.s.stats["preemptions_total"] > 0


# ---- KV cache details ------------------------------------------------------------------------


def test_preempted_chain_is_cached_and_evicted_tail_first():
    kv = KVCache(8, 16)
    a = SeqKV([])
    kv.admit(a, 100, 0, 0, 100)  # 7 blocks
    assert kv.free == 1
    kv.release(a, keep_chain=6)  # preempted: 6 full blocks stay cached as its chain
    assert kv.evictable == 6 and kv.free == 2 and a.chain
    kv.alloc(4)  # takes the 2 plain free blocks, then 2 from the chain's tail
    assert kv.evictable == 4
    assert kv.lookup(a, 101) == (0, 4)  # its 4 leading blocks are still there
    kv.release(SeqKV([]))  # nothing held: no-op
    kv.free += 4  # give back what alloc took (a stand-in for another sequence finishing)
    # 7 blocks of `available`: 4 cached ones claimed back (no compute), 3 new
    assert kv.admit_need(a, 0, 4, 101) == 7
    kv.admit(a, 101, 0, 4, 101)
    assert not a.chain and kv.evictable == 0 and a.priv == 7
    assert kv.hits == 64
    kv.check()


def test_units_registered_by_a_cancelled_step_are_not_cached():
    kv = KVCache(16, 16)
    a = SeqKV([1, 2, 3, 4])
    kv.admit(a, 64, 0, 0, 32)  # first chunk: units 1, 2 registered
    kv.fresh.clear()  # the step ran: they are computed
    kv.grow(a, 64)  # the next chunk registers units 3, 4 ...
    kv.release(a, 0, drop_from=2)  # ... but a is preempted before that step runs
    assert kv.lookup(SeqKV([1, 2, 3, 4]), 65) == (2, 0)  # only the computed units are cached
    assert kv.available == 16
    kv.check()


# ---- randomized operations -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_random_operations_keep_invariants(seed):
    import random

    rnd = random.Random(seed)
    policy = ("fcfs", "priority", "slo")[seed % 3]
    cfg = dict(kv_tokens=rnd.choice([256, 1024, 4096]), policy=policy,
               max_num_batched_tokens=rnd.choice([64, 256, 2048]),
               max_num_seqs=rnd.choice([2, 8, 64]),
               enable_chunked_prefill=seed % 4 != 3,
               enable_prefix_caching=seed % 5 != 4,
               prefix_block_tokens=rnd.choice([16, 32]))
    if cfg["max_num_seqs"] > cfg["max_num_batched_tokens"]:
        cfg["max_num_seqs"] = cfg["max_num_batched_tokens"]
    s = sched(**cfg)
    d = Driver(s)
    want: dict[str, int] = {}
    aborted: set[str] = set()
    for i in range(150):
        if rnd.random() < 0.7:
            p = rnd.randint(1, 600)
            o = rnd.randint(0, 300)
            group = rnd.randint(0, 3)
            r = req(f"r{i}", prompt=p, out=o, at=d.now, priority=rnd.randint(0, 3),
                    ttft_deadline_s=rnd.choice([None, 0.01, 0.5, 5.0]),
                    prefix_blocks=[group * 100 + j for j in range(p // 16)])
            s.add(r)
            want[r.request_id] = o
        elif want and rnd.random() < 0.3:
            victim = rnd.choice(sorted(want))
            if victim not in d.finished:
                s.abort(victim)
                aborted.add(victim)
        for _ in range(rnd.randint(0, 5)):
            d.step()
    d.run(max_steps=500_000)
    s.kv.check()
    assert s.stats["kv_usage"] == 0.0 and not s.has_work()
    for rid, o in want.items():
        if rid in aborted or rid in s.rejected:
            continue
        assert len(d.tokens.get(rid, [])) == o, rid
        assert rid in d.finished
    for rid in s.rejected:
        assert rid not in d.tokens
    # the cache holds nothing but evictable, unreferenced blocks
    assert s.kv.free + s.kv.evictable == s.kv.capacity_blocks
