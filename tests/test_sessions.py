"""Sessions made from single-turn workloads (slobench.workload.sessions): turn counts, think
times, context growth, prefix blocks, request rate, determinism, streaming, shape files.

Statistical checks use large samples and fixed seeds; each states its threshold."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from scipy import stats

from slobench.errors import UserError
from slobench.schema import conform_workload, session_links
from slobench.workload.sessions import (
    DEFAULT_SHAPES,
    MAX_TURNS,
    Geometric,
    Pmf,
    SessionShape,
    iter_sessionized,
    load_shapes,
    mean_turns,
    parse_seconds,
    parse_turns,
    session_summary,
    sessionize,
    shapes_for_mode,
)
from slobench.workload.synthetic import synthetic_workload

P_MIN = 1e-3  # goodness-of-fit tests must not reject at this level


def single_turn(n: int, *, clients: int = 1, gap_s: float = 0.1, seed: int = 0,
                app: str = "chatbot", reasoning: bool = False,
                images: bool = False) -> pa.Table:
    """n single requests; client c's inputs lie in [1000c + 100, 1000c + 199] and outputs in
    [1000c + 300, 1000c + 349] so that a length bootstrapped from another client shows."""
    rng = np.random.default_rng(seed)
    client = rng.integers(0, clients, n)
    inp = 1000 * client + 100 + rng.integers(0, 100, n)
    out = 1000 * client + 300 + rng.integers(0, 50, n)
    cols: dict[str, object] = {
        "request_id": [f"q{i:06d}" for i in range(n)],
        "arrival_s": np.arange(n) * gap_s,
        "client_id": [f"c{c}" for c in client],
        "app": [app] * n,
        "session_id": [f"q{i:06d}" for i in range(n)],
        "input_tokens": inp,
        "output_tokens": out,
        "reasoning_tokens": out // 2 if reasoning else np.zeros(n, np.int64),
    }
    if images:
        counts = rng.integers(0, 3, n)
        per = [list(rng.integers(10, 60, k)) for k in counts]
        cols["image_tokens"] = pa.array(per, pa.list_(pa.int64()))
        cols["input_tokens"] = inp + np.array([sum(p) for p in per], dtype=np.int64)
    return conform_workload(pa.table(cols))


def chat(turns: str = "geometric:mean=3", think: str = "exp:mean=10s", **kw: object
         ) -> dict[str, SessionShape]:
    return {"default": SessionShape("chat", turns=turns, think_s=think, **kw)}  # type: ignore[arg-type]


def agent(turns: str = "uniform:2..6", **kw: object) -> dict[str, SessionShape]:
    base = {"think_s": "exp:mean=1s", "system_tokens": 300, "tool_result_tokens": 777}
    return {"default": SessionShape("agent", turns=turns, **{**base, **kw})}  # type: ignore[arg-type]


def under_way(t: pa.Table) -> np.ndarray:
    """The first row of each session under way at 0 (steady start): a follow-up turn whose
    earlier turns came before 0, so not in the table (ids ``<row id>.p<j>.t<k>``)."""
    prev, _ = session_links(t)
    resumed = (prev < 0) & (t["turn"].to_numpy() > 0)
    pre = pc.match_substring(t["request_id"], ".p").to_numpy(zero_copy_only=False)
    assert not (resumed & ~pre).any()
    return resumed


def turns_per_session(t: pa.Table) -> np.ndarray:
    _, counts = np.unique(t["session_id"].to_numpy(zero_copy_only=False), return_counts=True)
    return counts


# --- distributions ----------------------------------------------------------------------------


def test_turn_counts_follow_the_shape_chi_square():
    n = 30_000  # every row starts a session (rate_of="sessions"): 30k draws per shape
    base = single_turn(n, clients=3)
    for spec in ("geometric:mean=3", "pmf:1=0.5,2=0.2,4=0.3",
                 "lognormal:mean=8.8,cv=4.3,max=1000"):
        shape = chat(spec, max_context_tokens=10**9)  # no session is cut by the context limit
        t = sessionize(base, shapes=shape, rate_of="sessions", seed=1, block_tokens=1 << 20,
                       start="empty")
        counts = turns_per_session(t)
        assert len(counts) == n
        cdf = shape["default"].cdf
        pmf = np.diff(np.concatenate([[0.0], cdf]))
        # Bins k = 1..K-1 and a tail bin k >= K, each expected >= 20.
        big = np.flatnonzero(pmf * n >= 20)
        k_max = int(big.max()) + 1
        observed = np.bincount(np.minimum(counts, k_max), minlength=k_max + 1)[1:]
        expected = np.append(pmf[:k_max - 1], 1.0 - cdf[k_max - 2]) * n
        keep = expected > 0
        p = stats.chisquare(observed[keep], expected[keep] * observed.sum() / expected.sum()).pvalue
        assert p > P_MIN, (spec, p)
        assert abs(counts.mean() / mean_turns(parse_turns(spec)) - 1) < 0.05, spec


def test_think_times_follow_the_shape_ks():
    base = single_turn(20_000)
    for spec, ref in (("exp:mean=10s", stats.expon(scale=10)),
                      ("uniform:2s..5s", stats.uniform(2, 3))):
        t = sessionize(base, shapes=chat("geometric:mean=3", spec), rate_of="sessions", seed=2,
                       start="empty")
        think = t["think_s"].to_numpy()[t["turn"].to_numpy() > 0]
        assert len(think) > 20_000
        assert stats.kstest(think, ref.cdf).pvalue > P_MIN, spec
    # lognormal, clipped at max: the clip is an atom at 60 s
    sec = parse_seconds("lognormal:mean=20s,cv=1.5,max=1min")
    sigma = math.sqrt(math.log1p(1.5**2))
    ref = stats.lognorm(s=sigma, scale=math.exp(math.log(20) - sigma**2 / 2))
    t = sessionize(base, shapes=chat("geometric:mean=3", "lognormal:mean=20s,cv=1.5,max=1min"),
                   rate_of="sessions", seed=3, start="empty")
    think = t["think_s"].to_numpy()[t["turn"].to_numpy() > 0]
    assert think.max() == pytest.approx(60.0)
    below = think[think < 60]
    assert stats.kstest(below, lambda x: ref.cdf(x) / ref.cdf(60)).pvalue > P_MIN
    assert abs((think >= 60).mean() - ref.sf(60)) < 0.01
    assert sec.describe().startswith("lognormal")


def test_turn_and_seconds_grammar():
    assert isinstance(parse_turns("geometric:mean=3.5"), Geometric)
    assert parse_turns("pmf:2=1,1=3") == Pmf((1, 2), (0.75, 0.25))
    assert mean_turns(parse_turns("4")) == 4
    assert mean_turns(parse_turns("uniform:2..6")) == pytest.approx(4)
    assert mean_turns(Geometric(3.5)) == pytest.approx(3.5, rel=1e-9)
    for bad in ("geometric:mean=0.5", "pmf:0=1", f"{MAX_TURNS + 1}", "lots", "uniform:5..2"):
        with pytest.raises(UserError):
            parse_turns(bad)
    assert parse_seconds("500ms").mean == pytest.approx(0.5)
    assert parse_seconds("uniform:1s..2min").quantile(np.array([1.0]))[0] == pytest.approx(120)
    assert parse_seconds(3).mean == 3.0
    for bad in ("10m", "exp:mean=-1s", "lognormal:mean=1s", "uniform:5s..1s", "soon"):
        with pytest.raises(UserError):
            parse_seconds(bad)


# --- context, reasoning, images ---------------------------------------------------------------


def test_chat_context_grows_by_exactly_the_formula_and_drops_reasoning():
    base = single_turn(6000, clients=3, reasoning=True)
    t = sessionize(base, shapes=chat("geometric:mean=4"), seed=4)
    prev, _ = session_links(t)
    inp = t["input_tokens"].to_numpy()
    out = t["output_tokens"].to_numpy()
    rea = t["reasoning_tokens"].to_numpy()
    client = np.array([int(c[1:]) for c in t["client_id"].to_pylist()])
    turn = t["turn"].to_numpy()
    resumed = under_way(t)  # steady start: the first turn after 0 of a session under way
    assert ((prev < 0) == ((turn == 0) | resumed)).all() and resumed.sum() > 50
    follow = np.flatnonzero((turn > 0) & ~resumed)
    assert len(follow) > 4000
    p = prev[follow]
    assert (p >= 0).all()
    added = inp[follow] - inp[p] - (out[p] - rea[p])
    # the new message is one of the same client's inputs (reasoning carried would shift by 150+)
    assert ((added >= 1000 * client[follow] + 100) & (added <= 1000 * client[follow] + 199)).all()
    assert (inp[follow] > inp[p]).all()
    # outputs are bootstrapped from the same client, as (output, reasoning) pairs
    assert ((out >= 1000 * client + 300) & (out <= 1000 * client + 349)).all()
    assert (rea == out // 2).all()
    # every prompt holds turn + 1 messages and turn visible answers of its client, the history
    # before 0 of a session under way included
    vis_lo, vis_hi = 500 * client + 150, 500 * client + 175  # out - out // 2
    assert ((inp >= (turn + 1) * (1000 * client + 100) + turn * vis_lo)
            & (inp <= (turn + 1) * (1000 * client + 199) + turn * vis_hi)).all()
    # the first turn is its own row (no system prompt in this shape)
    first = t.filter(pc.equal(t["turn"], 0))
    orig = dict(zip(base["request_id"].to_pylist(), base["input_tokens"].to_pylist(),
                    strict=True))
    assert all(orig[r] == v for r, v in zip(first["request_id"].to_pylist(),
                                            first["input_tokens"].to_pylist(), strict=True))


def test_agent_context_adds_tool_results_and_system_prompt():
    base = single_turn(3000, clients=2, reasoning=True)
    t = sessionize(base, shapes=agent(think_s="exp:mean=20s"), seed=5)
    prev, _ = session_links(t)
    inp, out, rea = (t[c].to_numpy() for c in ("input_tokens", "output_tokens",
                                                "reasoning_tokens"))
    turn = t["turn"].to_numpy()
    resumed = under_way(t)
    follow = np.flatnonzero((turn > 0) & ~resumed)
    p = prev[follow]
    assert (p >= 0).all()
    assert (inp[follow] == inp[p] + out[p] - rea[p] + 777).all()
    # a session under way at 0: system prompt, first input, then per turn an answer and a tool
    # result (the turns before 0 are not in the table, their tokens are)
    client = np.array([int(c[1:]) for c in t["client_id"].to_pylist()])
    r = np.flatnonzero(resumed)
    assert len(r) > 20 and (turn[r] > 0).all() and (prev[r] < 0).all()
    vis_lo, vis_hi = 500 * client[r] + 150, 500 * client[r] + 175
    assert ((inp[r] >= 300 + 1000 * client[r] + 100 + turn[r] * (vis_lo + 777))
            & (inp[r] <= 300 + 1000 * client[r] + 199 + turn[r] * (vis_hi + 777))).all()
    orig = dict(zip(base["request_id"].to_pylist(), base["input_tokens"].to_pylist(),
                    strict=True))
    first = t.filter(pc.equal(t["turn"], 0))
    assert all(orig[r] + 300 == v for r, v in zip(first["request_id"].to_pylist(),
                                                  first["input_tokens"].to_pylist(), strict=True))
    assert (t["think_s"].to_numpy()[follow] > 0).all()
    assert (t["think_s"].to_numpy()[t["turn"].to_numpy() == 0] == 0).all()


def test_context_limit_opens_a_fresh_session_and_keeps_every_turn():
    base = single_turn(2000)
    shapes = chat("10", max_context_tokens=2000)
    t = sessionize(base, shapes=shapes, rate_of="sessions", seed=6, start="empty")
    assert t.num_rows == 10 * 2000  # no turn is lost
    inp = t["input_tokens"].to_numpy()
    turn = t["turn"].to_numpy()
    assert (inp[turn > 0] <= 2000).all()
    assert turns_per_session(t).max() < 10  # sessions were cut
    prev, _ = session_links(t)
    assert ((prev >= 0) == (turn > 0)).all()
    # sessions under way at 0 are cut by the same rule (their history counts)
    steady = sessionize(base, shapes=shapes, rate_of="sessions", seed=6)
    assert steady.num_rows > t.num_rows
    assert (steady["input_tokens"].to_numpy() <= 2000).all()


def test_images_accumulate_in_the_history():
    base = single_turn(3000, clients=2, images=True)
    t = sessionize(base, shapes=chat("geometric:mean=3"), seed=7)
    prev, _ = session_links(t)
    imgs = t["image_tokens"].to_pylist()
    inp = t["input_tokens"].to_numpy()
    resumed = under_way(t)
    assert all(sum(imgs[i]) <= inp[i] for i in np.flatnonzero(resumed))
    assert any(len(imgs[i]) > 2 for i in np.flatnonzero(resumed))  # images sent before 0
    follow = np.flatnonzero((t["turn"].to_numpy() > 0) & ~resumed)
    assert any(imgs[i] for i in follow)
    for i in follow:
        before = imgs[prev[i]]
        assert imgs[i][:len(before)] == before  # history first, then the new message's images
        assert sum(imgs[i]) <= inp[i]


# --- prefix blocks ----------------------------------------------------------------------------


def test_prefix_blocks_reuse_within_sessions_share_system_and_never_collide():
    b = 64
    base = single_turn(1500, clients=3, reasoning=True)
    shapes = {"chatbot": SessionShape("chat", turns="geometric:mean=3", system_tokens=200,
                                      think_s="exp:mean=20s"),
              "coding": SessionShape("agent", turns="uniform:1..5", system_tokens=300,
                                     think_s="exp:mean=5s", tool_result_tokens="uniform:10..200")}
    t = sessionize(base, shapes=shapes, apps={"chatbot": 1, "coding": 1}, block_tokens=b, seed=8)
    assert under_way(t).sum() > 20  # their history blocks are theirs, shared by later turns
    blocks = t["prefix_blocks"].to_pylist()
    inp = t["input_tokens"].to_numpy()
    assert all(len(bl) == math.ceil(n / b) for bl, n in zip(blocks, inp, strict=True))
    # every full block of the previous prompt is a prefix of the next prompt's blocks
    prev, _ = session_links(t)
    for i in np.flatnonzero(prev >= 0):
        full = inp[prev[i]] // b
        assert blocks[i][:full] == blocks[prev[i]][:full]
    # the same content has one id and one id has one content
    sys_full = {"chatbot": 200 // b, "coding": 300 // b}
    key_of: dict[int, tuple] = {}
    id_of: dict[tuple, int] = {}
    rows = zip(blocks, inp, t["client_id"].to_pylist(), t["app"].to_pylist(),
               t["session_id"].to_pylist(), t["request_id"].to_pylist(), strict=True)
    for bl, n, client, app, sid, rid in rows:
        for j, block in enumerate(bl):
            if j < sys_full[app]:
                key: tuple = ("system", client, app, j)
            elif j < n // b:
                key = ("session", sid, j)
            else:
                key = ("partial", rid)
            assert key_of.setdefault(block, key) == key
            assert id_of.setdefault(key, block) == block
    systems = {k for k in id_of if k[0] == "system"}
    assert {(k[1], k[2]) for k in systems} == {(c, a) for c in ("c0", "c1", "c2")
                                               for a in ("chatbot", "coding")}


def test_prefix_reuse_is_visible_to_inspect():
    from slobench.workload.inspect import inspect_workload

    t = sessionize(single_turn(3000, clients=2), shapes=agent(system_tokens=2048), seed=9)
    stats_ = inspect_workload(t)
    assert stats_["sessions"]["multi_turn_sessions"] > 100
    assert stats_["prefix"]["block_reuse"] > 0.5


# --- rate, apps, determinism ------------------------------------------------------------------


def test_request_rate_is_kept_over_a_long_horizon():
    h = 4 * 3600.0
    base = synthetic_workload(rate=20, duration_s=h, seed=0,
                              apps="chatbot:0.6,coding:0.3,summarization:0.1",
                              input_tokens="lognormal:mean=800,cv=1,max=8192",
                              output_tokens="lognormal:mean=250,cv=1,max=2048")
    t = sessionize(base, seed=0)
    a_in, a_out = base["arrival_s"].to_numpy(), t["arrival_s"].to_numpy()
    w = 1800.0  # past the start-up transient (sessions started before 0 are missing)
    n_in = np.count_nonzero((a_in >= w) & (a_in < h))
    n_out = np.count_nonzero((a_out >= w) & (a_out < h))
    assert abs(n_out / n_in - 1) < 0.03, (n_in, n_out)
    # the app mix is the share of requests per app
    shares = {a: np.mean(t["app"].to_numpy(zero_copy_only=False) == a)
              for a in ("chatbot", "coding", "summarization")}
    assert shares["chatbot"] == pytest.approx(0.6, abs=0.03)
    assert shares["coding"] == pytest.approx(0.3, abs=0.03)
    # sessions: every row starts one
    s = sessionize(base.slice(0, 20_000), rate_of="sessions", seed=0)
    assert np.count_nonzero(s["turn"].to_numpy() == 0) >= 20_000
    assert s.num_rows > 40_000


def test_start_up_transient_scale():
    # geometric turns are memoryless: a request's mean age equals the mean session span
    chat_shape = SessionShape("chat", turns="geometric:mean=3.5", think_s="10s")
    assert chat_shape.mean_age_s == pytest.approx(chat_shape.mean_span_s, rel=1e-6)
    assert chat_shape.mean_span_s == pytest.approx(25.0)
    # heavy-tailed turns: long sessions hold many late requests
    coding = DEFAULT_SHAPES["coding"]
    assert coding.mean_age_s > 5 * coding.mean_span_s
    # the requests a finite horizon lacks: about rate x mean age (chat: rel. sd ~ 2%)
    h, rate = 3600.0, 20.0
    base = synthetic_workload(rate=rate, duration_s=h, seed=3, input_tokens="100",
                              output_tokens="50")
    shape = {"default": SessionShape("chat", turns="geometric:mean=3.5", think_s="exp:mean=60s")}
    t = sessionize(base, shapes=shape, seed=3, duration_s=h, start="empty")
    missing = base.num_rows - t.num_rows
    expected = rate * shape["default"].mean_age_s
    assert abs(missing - expected) < 0.25 * expected, (missing, expected)
    # a steady start adds what was missing: the turns after 0 of sessions under way at 0
    # (the same seed draws the same other sessions; rel. sd of the difference ~ 5%)
    steady = sessionize(base, shapes=shape, seed=3, duration_s=h)
    assert steady.filter(pc.invert(pc.match_substring(steady["request_id"], ".p"))).equals(t)
    assert abs(steady.num_rows - t.num_rows - expected) < 0.15 * expected


def test_steady_start_keeps_the_rate_from_time_zero():
    # One hour per default shape. Heavy-tailed coding sessions make counts vary (rel. sd of the
    # hour's count ~0.8% at 400 req/s; over seeds 0-19 it stays within 0.986-1.023 and the
    # first 10% within 0.98-1.03 of the whole), so coding gets the most requests.
    h = 3600.0
    rates = {"chatbot": 50, "coding": 400, "tool": 50, "reasoning": 50}
    base = synthetic_workload(rate=sum(rates.values()), duration_s=h, seed=1,
                              apps=",".join(f"{a}:{r}" for a, r in rates.items()),
                              input_tokens="200", output_tokens="100")
    apps_in = base["app"].to_numpy(zero_copy_only=False)
    starts = {"steady": sessionize(base, seed=1, duration_s=h, block_tokens=1 << 20),
              "empty": sessionize(base, seed=1, duration_s=h, block_tokens=1 << 20,
                                  start="empty")}
    for start, t in starts.items():
        apps, arr = t["app"].to_numpy(zero_copy_only=False), t["arrival_s"].to_numpy()
        for app in rates:
            a = arr[apps == app]
            count = len(a) / np.count_nonzero(apps_in == app)  # vs the input's requests
            first = np.count_nonzero(a < 0.1 * h) / (0.1 * len(a))  # first 6 min vs the hour
            if start == "steady":
                assert abs(count - 1) < 0.03, (app, count)
                assert abs(first - 1) < 0.10, (app, first)
                if app == "coding":  # the first two minutes too
                    assert abs(np.count_nonzero(a < 120) / (120 / h * len(a)) - 1) < 0.10
            elif app == "coding":  # as before: ~15% fewer, the first minutes ~35% lighter
                assert count < 0.92 and first < 0.75, (count, first)
            elif app == "chatbot":
                assert count < 0.995 and first < 0.9, (count, first)


def test_steady_start_with_every_request_starting_a_session():
    h = 3600.0
    base = synthetic_workload(rate=10, duration_s=h, seed=2, input_tokens="100",
                              output_tokens="50")
    shape = chat("geometric:mean=3", "exp:mean=30s")
    arr = sessionize(base, shapes=shape, rate_of="sessions", seed=2, duration_s=h)[
        "arrival_s"].to_numpy()
    # ~108k requests (3 per input row); rel. sd of the first 10% ~2%
    assert abs(len(arr) / (3 * base.num_rows) - 1) < 0.03
    assert abs(np.count_nonzero(arr < 0.1 * h) / (0.1 * len(arr)) - 1) < 0.1


def test_sessions_under_way_at_zero_link_up_and_are_deterministic():
    base = single_turn(8000, clients=4, gap_s=0.1)
    shapes = shapes_for_mode("auto")
    mix = "chatbot:1,coding:1,summarization:1"
    a = sessionize(base, shapes=shapes, apps=mix, seed=11, duration_s=700.0)
    assert a.equals(sessionize(base, shapes=shapes, apps=mix, seed=11, duration_s=700.0))
    assert not a.equals(sessionize(base, shapes=shapes, apps=mix, seed=12, duration_s=700.0))
    assert pc.count_distinct(a["request_id"]).as_py() == a.num_rows
    arr, turn = a["arrival_s"].to_numpy(), a["turn"].to_numpy()
    assert (np.diff(arr) >= 0).all() and arr.min() >= 0 and arr.max() < 700
    prev, nxt = session_links(a)
    resumed = under_way(a)
    assert resumed.sum() > 50 and set(a.filter(pa.array(resumed))["app"].to_pylist()) == {
        "chatbot", "coding"}  # single-turn apps have no session under way
    # chains: consecutive turn numbers, arrival = previous arrival + think, one app and client
    f = np.flatnonzero(prev >= 0)
    assert (turn[prev[f]] == turn[f] - 1).all()
    assert arr[f] == pytest.approx(arr[prev[f]] + a["think_s"].to_numpy()[f])
    sid = a["session_id"].to_numpy(zero_copy_only=False)
    rid = a["request_id"].to_numpy(zero_copy_only=False)
    assert (sid[f] == sid[prev[f]]).all()
    # a session under way: its id is that of its turn 0, which came before 0 (not in the table)
    r = np.flatnonzero(resumed)
    assert not np.isin(sid[r], rid).any()
    assert all(s_.split(".p")[0] in set(base["request_id"].to_pylist()) for s_ in sid[r])
    assert (a["think_s"].to_numpy()[r] > 0).all()  # the think time that straddled 0
    # its prompt already holds its history: longer than the same app's first turns
    coding = a["app"].to_numpy(zero_copy_only=False) == "coding"
    assert np.median(a["input_tokens"].to_numpy()[r[coding[r]]]) > 2 * np.median(
        a["input_tokens"].to_numpy()[coding & (turn == 0)])
    # its later turns reuse its blocks
    blocks = a["prefix_blocks"].to_pylist()
    inp = a["input_tokens"].to_numpy()
    for i in r[nxt[r] >= 0]:
        full = inp[i] // 512
        assert blocks[nxt[i]][:full] == blocks[i][:full]
    with pytest.raises(UserError, match="--session-start 'warm'"):
        sessionize(base, start="warm")
    assert sessionize(base.slice(0, 0)).num_rows == 0


def test_app_mix_per_session_and_per_client():
    base = single_turn(20_000, clients=400)
    mix = {"chatbot": 0.5, "reasoning": 0.5}
    t = sessionize(base, apps=mix, app_scope="client", seed=10)
    per_client = defaultdict(set)
    for c, a in zip(t["client_id"].to_pylist(), t["app"].to_pylist(), strict=True):
        per_client[c].add(a)
    assert all(len(a) == 1 for a in per_client.values())
    share = np.mean([next(iter(a)) == "chatbot" for a in per_client.values()])
    assert 0.4 < share < 0.6  # 400 clients, binomial sd 0.025
    again = sessionize(base.slice(0, 5000), apps=mix, app_scope="client", seed=10)
    for c, a in zip(again["client_id"].to_pylist(), again["app"].to_pylist(), strict=True):
        assert {a} == per_client[c]  # the client's app does not depend on the table's extent
    s = sessionize(base, apps=mix, seed=10)
    sess_apps = defaultdict(set)
    for sid, a in zip(s["session_id"].to_pylist(), s["app"].to_pylist(), strict=True):
        sess_apps[sid].add(a)
    assert all(len(a) == 1 for a in sess_apps.values())
    client_apps = defaultdict(set)
    for c, a in zip(s["client_id"].to_pylist(), s["app"].to_pylist(), strict=True):
        client_apps[c].add(a)
    assert max(len(a) for a in client_apps.values()) == 2


def test_output_is_a_sorted_conforming_workload_with_links_and_determinism():
    base = single_turn(5000, clients=4)
    shapes = shapes_for_mode("auto")
    a = sessionize(base, shapes=shapes, apps="chatbot:1,coding:1,summarization:1", seed=11,
                   start="empty")
    assert a.schema == conform_workload(a).schema
    arr = a["arrival_s"].to_numpy()
    assert (np.diff(arr) >= 0).all()
    assert pc.count_distinct(a["request_id"]).as_py() == a.num_rows
    prev, _ = session_links(a)
    turn = a["turn"].to_numpy()
    assert ((prev >= 0) == (turn > 0)).all()
    f = np.flatnonzero(turn > 0)
    assert (turn[prev[f]] == turn[f] - 1).all()
    assert (arr[f] == pytest.approx(arr[prev[f]] + a["think_s"].to_numpy()[f]))
    assert a.equals(sessionize(base, shapes=shapes, apps="chatbot:1,coding:1,summarization:1",
                               seed=11, start="empty"))
    b = sessionize(base, shapes=shapes, apps="chatbot:1,coding:1,summarization:1", seed=12,
                   start="empty")
    assert not a.equals(b)
    summary = session_summary(a)
    assert summary is not None and summary["mean_turns"] > 1
    assert session_summary(base) is None


def test_horizon_drops_late_turns_and_single_turn_input_is_required():
    base = single_turn(4000, gap_s=0.05)
    t = sessionize(base, shapes=chat(think="exp:mean=30s"), seed=13, duration_s=150.0)
    assert t["arrival_s"].to_numpy().max() < 150.0
    assert sessionize(base, shapes=chat(), seed=13).num_rows > t.num_rows
    with pytest.raises(UserError, match="already has sessions"):
        sessionize(t, shapes=chat())
    with pytest.raises(UserError, match="no session shape for app 'chatbot'"):
        sessionize(base, shapes={"coding": DEFAULT_SHAPES["coding"]})
    with pytest.raises(UserError):
        sessionize(base, rate_of="users")
    with pytest.raises(UserError):
        sessionize(base, app_scope="world")
    assert sessionize(base.slice(0, 0)).num_rows == 0


# --- streaming --------------------------------------------------------------------------------


def _relabel(t: pa.Table) -> list[list[int]]:
    """Block ids renumbered by first appearance (streaming numbers blocks per batch)."""
    seen: dict[int, int] = {}
    return [[seen.setdefault(b, len(seen)) for b in bl] for bl in t["prefix_blocks"].to_pylist()]


def _batches(t: pa.Table, sizes: list[int]) -> list[pa.RecordBatch]:
    out, i = [], 0
    for s in sizes:
        out.append(t.slice(i, s).combine_chunks().to_batches()[0])
        i += s
    return out


def test_streaming_equals_one_shot_up_to_pools_and_block_numbers():
    # Constant lengths per client: the per-batch bootstrap pools give the same values.
    n = 6000
    client = np.arange(n) % 3
    base = conform_workload(pa.table({
        "request_id": [f"r{i}" for i in range(n)], "arrival_s": np.arange(n) * 0.2,
        "client_id": [f"c{c}" for c in client], "app": ["chatbot"] * n,
        "session_id": [f"r{i}" for i in range(n)],
        "input_tokens": 200 + 100 * client, "output_tokens": 50 + 10 * client}))
    shapes = {"chatbot": SessionShape("chat", turns="geometric:mean=4", think_s="exp:mean=20s",
                                      system_tokens=600),
              "coding": DEFAULT_SHAPES["coding"]}
    kw = {"shapes": shapes, "apps": "chatbot:2,coding:1", "block_tokens": 128, "seed": 14,
          "duration_s": 1150.0}
    one = sessionize(base, **kw)
    assert under_way(one).sum() > 20  # steady start: sessions under way at 0 agree too
    parts = list(iter_sessionized(_batches(base, [1, 999, 2500, 500, 2000]), **kw))
    streamed = pa.Table.from_batches(parts)
    assert all(np.all(np.diff(p.column("arrival_s").to_numpy()) >= 0) for p in parts)
    assert streamed.drop_columns(["prefix_blocks"]).equals(one.drop_columns(["prefix_blocks"]))
    assert _relabel(streamed) == _relabel(one)

    # Lengths that vary: the same sessions, turns and times; only bootstrapped lengths differ.
    var = single_turn(6000, clients=3, gap_s=0.2)
    one = sessionize(var, **kw)
    streamed = pa.Table.from_batches(list(iter_sessionized(_batches(var, [3000, 3000]), **kw)))
    same = ["request_id", "arrival_s", "client_id", "app", "turn", "think_s"]
    assert streamed.select(same).equals(one.select(same))
    first = pc.invert(pc.match_substring(one["request_id"], ".t"))  # the rows that started
    assert streamed.filter(first)["output_tokens"].equals(one.filter(first)["output_tokens"])
    with pytest.raises(UserError, match="arrival order"):
        list(iter_sessionized(_batches(var, [3000, 3000])[::-1], **kw))

    # No duration and an input shorter than the window: both use the rate up to its last row.
    short = {**kw, "duration_s": None}
    one = sessionize(var.slice(0, 1000), **short)
    streamed = pa.Table.from_batches(list(iter_sessionized(_batches(var, [300, 700]), **short)))
    assert under_way(one).sum() > 5
    assert streamed.select(same).equals(one.select(same))
    for start in ("steady", "empty"):  # one batch: exactly equal, block numbers included
        one = sessionize(var, **kw, start=start)
        assert pa.Table.from_batches(list(iter_sessionized([var], **kw, start=start))).equals(one)


# --- shape files ------------------------------------------------------------------------------


def test_shapes_from_toml_and_json(tmp_path):
    toml = tmp_path / "shapes.toml"
    toml.write_text('[coding]\nturns = "geometric:mean=12"\nthink_s = "500ms"\n'
                    'system_tokens = 4096\n\n[support]\nkind = "chat"\nturns = 5\n'
                    'think_s = 2.5\n\n[default]\nkind = "single"\n')
    shapes = load_shapes(toml)
    assert shapes["coding"].kind == "agent" and shapes["coding"].mean_turns == pytest.approx(12)
    assert shapes["coding"].think_s.mean == pytest.approx(0.5)
    assert shapes["coding"].tool_result_tokens == DEFAULT_SHAPES["coding"].tool_result_tokens
    assert shapes["support"].mean_turns == 5 and shapes["support"].think_s.mean == 2.5
    assert shapes["default"].kind == "single"
    assert shapes["chatbot"] == DEFAULT_SHAPES["chatbot"]
    js = tmp_path / "shapes.json"
    js.write_text(json.dumps({"chatbot": {"kind": "agent", "tool_result_tokens": 100}}))
    assert load_shapes(js)["chatbot"].kind == "agent"
    assert shapes_for_mode(f"file:{js}")["chatbot"].tool_result_tokens.mean == 100


@pytest.mark.parametrize(("text", "needle"), [
    ('[coding]\nturnz = 3\n', "shapes.toml: [coding] turnz: unknown key; did you mean 'turns'"),
    ('[coding]\nturns = true\n', "shapes.toml: [coding] turns: True has the wrong type"),
    ('[coding]\nturns = "lots"\n', "shapes.toml: [coding] turns: 'lots' is not a turn"),
    ('[coding]\nthink_s = "10m"\n', "shapes.toml: [coding] think_s:"),
    ('[coding]\nmax_context_tokens = 0\n', "shapes.toml: [coding] max_context_tokens:"),
    ('[mine]\nturns = 3\n', "shapes.toml: [mine] kind: required"),
    ('[chatbot]\nkind = "robot"\n', "shapes.toml: [chatbot] kind: 'robot' is not one of"),
    ('[chatbot]\ntool_result_tokens = 10\n', "shapes.toml: [chatbot] tool_result_tokens:"),
    ('[summarization]\nturns = 3\n', "shapes.toml: [summarization] turns:"),
    ('coding = 3\n', "shapes.toml: [coding]: expected a table"),
    ('[coding\n', "shapes.toml: not valid TOML"),
])
def test_bad_shape_files_name_the_file_and_key(tmp_path, text, needle):
    path = tmp_path / "shapes.toml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_shapes(path)
    assert str(info.value).startswith(str(path)[: -len("shapes.toml")] + needle.split(":")[0])
    assert needle.split("shapes.toml")[1] in str(info.value), str(info.value)


def test_modes():
    assert shapes_for_mode("off") is None
    assert shapes_for_mode("auto") == DEFAULT_SHAPES
    forced = shapes_for_mode("agent")
    assert forced["tool"] == DEFAULT_SHAPES["tool"] and forced["chatbot"].kind == "agent"
    assert forced["default"].kind == "agent"
    assert all(s.kind == "chat" for s in shapes_for_mode("chat").values())
    with pytest.raises(UserError, match="--sessions 'sometimes'"):
        shapes_for_mode("sometimes")
    with pytest.raises(UserError, match="cannot read"):
        shapes_for_mode("file:/nonexistent/shapes.toml")
