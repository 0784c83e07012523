"""Fitting a pool from a log: round trips through the generator, the MLEs against scipy, the
formats, the saved pool and the ServeGen export, and the errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from slobench.errors import UserError
from slobench.workload.fit import (
    FAMILIES,
    LogColumns,
    _fit_segments,
    export_servegen,
    fit_pool,
    save_fit,
)
from slobench.workload.generate import generate_workload
from slobench.workload.pool import (
    PATTERN_GAMMA,
    PATTERN_WEIBULL,
    ClientPool,
    LengthTable,
    SparseDist,
)
from slobench.workload.profiles import _cdf_distance
from slobench.workload.servegen import load_pool

# Round-trip tolerances (documented in docs/fit.md).
RATE_REL = 0.05  # per-client rate over the whole span, and per 600 s window for busy clients
CV_REL = 0.10  # per-window inter-arrival CV
WEIBULL_SHAPE_REL = 0.05
LENGTH_KS = 0.03  # fitted vs generating length distribution, per client
FAMILY_SHARE = 0.8  # share of windows where the generating family is chosen

N_W = 6
WEIBULL_K = 0.6


def _weibull_cv(k: float) -> float:
    g1, g2 = math.gamma(1 + 1 / k), math.gamma(1 + 2 / k)
    return math.sqrt(g2 / g1 ** 2 - 1)


def _lengths(specs: list[tuple[float, float]], n_blocks: int, rng: np.random.Generator
             ) -> SparseDist:
    """Per client a discretized lognormal (median, sigma), the same in every block."""
    rows = []
    for med, sig in specs:
        v = np.unique(np.rint(rng.lognormal(math.log(med), sig, 20000)).clip(1))
        p = stats.lognorm.pdf(v, sig, scale=med)
        for _ in range(n_blocks):
            rows.append((v, p / p.sum()))
    return SparseDist.from_rows(rows)


def synthetic_pool() -> ClientPool:
    """Four clients: Poisson 20/s, Gamma CV 2.5 at 10/s, Weibull k=0.6 at 5/s, and a trickle
    (0.05/s, under the 1% floor) that must end up in 'other'."""
    rng = np.random.default_rng(7)
    rates = np.array([[20.0] * N_W, [10.0] * N_W, [5.0] * N_W, [0.05] * N_W])
    cvs = np.array([[1.0] * N_W, [2.5] * N_W, [_weibull_cv(WEIBULL_K)] * N_W, [1.0] * N_W])
    pattern = np.array([[PATTERN_GAMMA] * N_W, [PATTERN_GAMMA] * N_W, [PATTERN_WEIBULL] * N_W,
                        [PATTERN_GAMMA] * N_W], dtype=np.int8)
    shape = np.where(pattern == PATTERN_WEIBULL, WEIBULL_K, 1 / cvs ** 2)
    scale = 1 / rates / shape
    n_blocks = 1
    fields = {"input_tokens": _lengths([(200, 0.8), (1500, 0.5), (50, 1.0), (300, 0.3)],
                                       n_blocks, rng),
              "output_tokens": _lengths([(100, 0.6), (20, 0.4), (400, 0.9), (60, 0.3)],
                                        n_blocks, rng)}
    return ClientPool(
        name="synthetic", kind="language", client_ids=np.array(["poisson", "gamma", "weibull",
                                                                "trickle"]),
        window_start=np.arange(N_W) * 600.0, window_dur=np.full(N_W, 600.0), rates=rates,
        cvs=cvs, pattern=pattern, shape=shape, scale=scale,
        lengths=LengthTable(fields, 4, n_blocks), len_row=np.arange(4),
        block=np.zeros(N_W, dtype=np.int64))


@pytest.fixture(scope="module")
def round_trip() -> tuple[ClientPool, pa.Table, object]:
    src = synthetic_pool()
    table = generate_workload(src, N_W * 600.0, seed=3)
    return src, table, fit_pool(table, window_s=600, block_s=3600)


def test_round_trip_rates_and_clients(round_trip) -> None:
    src, table, res = round_trip
    pool, report = res
    assert list(pool.client_ids) == ["poisson", "gamma", "weibull", "other"]
    assert report["clients_merged_into_other"] == 1
    assert pool.n_windows == N_W
    for i in range(3):
        got = pool.rates[i].mean()
        assert abs(got / src.rates[i].mean() - 1) < RATE_REL, (i, got)
    # busy clients: every 600 s window within 5%
    assert np.all(np.abs(pool.rates[0] / 20.0 - 1) < RATE_REL)
    assert np.all(np.abs(pool.rates[1] / 10.0 - 1) < RATE_REL * 2)  # CV 2.5: noisier counts
    # nothing lost: requests in the pool = rows of the log
    assert abs(pool.requests().sum() - table.num_rows) < 1e-6 * table.num_rows
    assert abs(pool.rates[3].mean() / 0.05 - 1) < 0.5


def test_round_trip_cv_and_families(round_trip) -> None:
    src, _, res = round_trip
    pool, win = res.pool, res.windows
    for i in range(3):
        rel = np.abs(pool.cvs[i] / src.cvs[i] - 1)
        assert np.all(rel < CV_REL), (i, pool.cvs[i])
    fam = win.family
    # Poisson: exponential, or Gamma with shape ~1
    ok0 = (fam[0] == 1) | ((fam[0] == 2) & (np.abs(win.params[0, :, 1, 0] - 1) < 0.1))
    assert ok0.mean() >= FAMILY_SHARE
    assert (fam[1] == 1 + FAMILIES.index("gamma")).mean() >= FAMILY_SHARE
    assert (fam[2] == 1 + FAMILIES.index("weibull")).mean() >= FAMILY_SHARE
    assert np.all(pool.pattern[2] == PATTERN_WEIBULL)
    k = win.params[2, :, 2, 0]
    assert np.all(np.abs(k / WEIBULL_K - 1) < WEIBULL_SHAPE_REL), k
    g = win.params[1, :, 1, 0]
    assert np.all(np.abs(g / (1 / 2.5 ** 2) - 1) < 0.15), g
    # the gap fit is good where the family is right
    assert res.report["median_ks"] < 0.03
    assert np.all(np.isfinite(win.aic[:3])) and np.all(win.ks[:3] >= 0)


def test_round_trip_lengths(round_trip) -> None:
    src, _, res = round_trip
    pool = res.pool
    for f in ("input_tokens", "output_tokens"):
        for i in range(3):
            d = _cdf_distance(pool.length_mix(f, clients=np.array([i])),
                              src.length_mix(f, clients=np.array([i])))
            assert d < LENGTH_KS, (f, i, d)


def test_round_trip_builtin_profile() -> None:
    """``language-small`` (Gamma and Weibull windows, many clients): rates and CVs back."""
    from slobench.workload.profiles import load_profile

    src = load_profile("language-small").span(0, 3600)
    table = generate_workload(src, 3600, seed=1)
    res = fit_pool(table, min_share=0.0, max_gaps=2000)
    pool = res.pool
    ids = list(pool.client_ids)
    vol = src.requests().sum(axis=1)
    for j in np.argsort(-vol)[:5]:
        i = ids.index(str(src.client_ids[j]))
        assert abs(pool.rates[i].mean() / src.rates[j].mean() - 1) < RATE_REL
        w = src.rates[j] > 0
        # the generator draws Weibull gaps from the shape (its CV), Gamma ones from the CV
        truth = np.where(src.pattern[j] == PATTERN_WEIBULL,
                         [_weibull_cv(k) if k > 0 else 0 for k in src.shape[j]], src.cvs[j])
        cv_rel = np.abs(pool.cvs[i][w] / truth[w] - 1)
        assert np.median(cv_rel) < CV_REL
        # where the source is Weibull, Weibull is chosen in most windows
        wb = w & (src.pattern[j] == PATTERN_WEIBULL)
        if wb.sum() >= 3:
            assert (res.windows.family[i][wb] == 3).mean() >= FAMILY_SHARE


def test_mle_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    samples = [rng.gamma(0.4, 2.0, 3000), rng.weibull(0.7, 3000) * 3, rng.lognormal(0.3, 1.2,
                                                                                     3000),
               rng.exponential(1.0, 500)]
    x = np.concatenate([s / s.mean() for s in samples])
    starts = np.cumsum([0] + [len(s) for s in samples[:-1]])
    fit = _fit_segments(x, starts)
    for i, s in enumerate(samples):
        xs = s / s.mean()
        a, _, sc = stats.gamma.fit(xs, floc=0)
        assert fit["params"][i, 1, 0] == pytest.approx(a, rel=2e-3)
        assert fit["params"][i, 1, 1] == pytest.approx(sc, rel=2e-3)
        c, _, sc = stats.weibull_min.fit(xs, floc=0)
        assert fit["params"][i, 2, 0] == pytest.approx(c, rel=2e-3)
        assert fit["params"][i, 2, 1] == pytest.approx(sc, rel=2e-3)
        sg, _, sc = stats.lognorm.fit(xs, floc=0)
        assert fit["params"][i, 3, 0] == pytest.approx(sg, rel=2e-3)
        assert fit["params"][i, 3, 1] == pytest.approx(sc, rel=2e-3)
        lw = stats.weibull_min(fit["params"][i, 2, 0], scale=fit["params"][i, 2, 1])
        assert fit["loglik"][i, 2] == pytest.approx(lw.logpdf(xs).sum(), rel=1e-6)
        assert fit["ks"][i, 2] == pytest.approx(stats.kstest(xs, lw.cdf).statistic, abs=1e-6)
        lg = stats.gamma(fit["params"][i, 1, 0], scale=fit["params"][i, 1, 1])
        assert fit["loglik"][i, 1] == pytest.approx(lg.logpdf(xs).sum(), rel=1e-6)
        assert fit["ks"][i, 1] == pytest.approx(stats.kstest(xs, lg.cdf).statistic, abs=1e-6)
    assert list(np.argmin(fit["aic"], axis=1)[:3]) == [1, 2, 3]


def test_saved_pool_loads_and_generates(tmp_path: Path, round_trip) -> None:
    _, _, res = round_trip
    path = tmp_path / "pool.npz"
    save_fit(res, path)
    back = load_pool(path)
    assert list(back.client_ids) == list(res.pool.client_ids)
    np.testing.assert_allclose(back.rates, res.pool.rates, rtol=1e-6)
    np.testing.assert_array_equal(back.pattern, res.pool.pattern)
    assert back.lengths.block_s == 3600
    assert back.report["fit"]["families"] == res.report["families"]
    with np.load(path, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["fit.family"], res.windows.family)
    t = generate_workload(back, 600, seed=0)
    assert t.num_rows > 10000


def test_servegen_export_round_trip(tmp_path: Path, round_trip) -> None:
    _, table, _ = round_trip
    res = fit_pool(table, window_s=600, block_s=21600)
    export_servegen(res.pool, tmp_path / "sg")
    back = load_pool(tmp_path / "sg", cache=False)
    p = res.pool
    for a in ("rates", "cvs", "pattern", "shape", "scale"):
        np.testing.assert_array_equal(getattr(back, a), getattr(p, a), err_msg=a)
    names = json.loads((tmp_path / "sg" / "clients.json").read_text())
    assert [names[str(i)] for i in range(p.n_clients)] == list(p.client_ids)
    for f in ("input_tokens", "output_tokens"):
        for i in range(p.n_clients):
            a = back.length_mix(f, clients=np.array([i]))
            b = p.length_mix(f, clients=np.array([i]))
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_allclose(a[1], b[1], rtol=1e-9)
    # hour blocks are re-pooled into ServeGen's 6-hour blocks, request-weighted
    res2 = fit_pool(table, window_s=600, block_s=600)
    export_servegen(res2.pool, tmp_path / "sg2")
    back2 = load_pool(tmp_path / "sg2", cache=False)
    for f in ("input_tokens", "output_tokens"):
        assert _cdf_distance(back2.length_mix(f), res2.pool.length_mix(f)) < 1e-9


def test_export_needs_600s_windows(tmp_path: Path, round_trip) -> None:
    _, table, _ = round_trip
    res = fit_pool(table, window_s=300, block_s=3600)
    with pytest.raises(UserError, match="600 s windows"):
        export_servegen(res.pool, tmp_path / "sg")


def test_reasoning_sessions_and_apps(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n_sess, turns = 400, 3
    rows = []
    for s in range(n_sess):
        t0 = rng.uniform(0, 3000)
        for k in range(turns if s % 2 else 1):
            out = int(rng.integers(50, 500))
            rows.append({"ts": t0 + 20.0 * k, "user": f"u{s % 2}", "prompt_tokens":
                         int(rng.integers(10, 900)), "completion_tokens": out,
                         "reasoning": int(out * 0.5), "conv": f"c{s}",
                         "kind": "reasoning" if s % 2 else "chatbot"})
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cols = LogColumns(time="ts", client="user", input="prompt_tokens",
                      output="completion_tokens", reasoning="reasoning", session="conv",
                      app="kind")
    pool, report = fit_pool(path, columns=cols)
    assert pool.kind == "reason" and "reason_ratio" in pool.lengths.fields
    assert abs(pool.summary()["lengths"]["reason_ratio"]["mean"] - 0.5) < 0.01
    s = report["sessions"]
    assert s["sessions"] == n_sess
    assert s["turns"]["values"] == [1, 3] and s["turns"]["probs"] == [0.5, 0.5]
    assert s["think_s"]["p50"] == pytest.approx(20.0)
    assert report["apps"]["u1"] == {"reasoning": 1.0}
    t = generate_workload(pool, 600, seed=0)
    assert t.column("reasoning_tokens").to_numpy().sum() > 0


AZURE = "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
    f"2023-11-16 18:{15 + i // 60:02d}:{i % 60:02d}.{(i * 7919) % 10000000:07d},{100 + i},"
    f"{10 + i % 50}\n" for i in range(300))
BURSTGPT = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n" + "".join(
    f"{i // 3},{'GPT-4' if i % 4 == 0 else 'ChatGPT'},{100 + i},{i % 40},{100 + i + i % 40},"
    "Conversation log\n" for i in range(600))
MOONCAKE = "".join(json.dumps({"timestamp": i * 137 % 100000 + i * 50, "input_length": 1000 + i,
                               "output_length": 5 + i % 30, "hash_ids": [1, 2, i]}) + "\n"
                   for i in range(400))


@pytest.mark.parametrize(("name", "text", "clients"), [
    ("azure_code_2023.csv", AZURE, ["azure-code"]),
    ("burstgpt.csv", BURSTGPT, ["ChatGPT", "GPT-4"]),
    ("mooncake_trace.jsonl", MOONCAKE, ["mooncake"]),
])
def test_trace_formats(tmp_path: Path, name: str, text: str, clients: list[str]) -> None:
    path = tmp_path / name
    path.write_text(text)
    pool, report = fit_pool(path)
    assert sorted(pool.client_ids) == sorted(clients)
    assert report["rows"] == len(text.strip().splitlines()) - (0 if name.endswith("l") else 1)
    assert report["client_windows_fitted"] >= 1
    if name.startswith("burstgpt"):
        assert report["timestamp_resolution_s"] == 1.0  # ties spread within each second
    assert all(v > 0 for v in pool.rates.sum(axis=1))
    assert pool.requests().sum() == pytest.approx(report["rows"], rel=1e-9)


def test_generic_csv_iso_times_and_parquet(tmp_path: Path) -> None:
    csv = tmp_path / "log.csv"
    lines = ["when,who,p,c"] + [f"2024-05-10T00:{i // 60:02d}:{i % 60:02d}.{i:03d}Z,"
                                 f"{'a' if i % 3 else 'b'},{10 + i},{i % 7}" for i in range(500)]
    csv.write_text("\n".join(lines) + "\n")
    cols = LogColumns(time="when", client="who", input="p", output="c")
    pool, report = fit_pool(csv, columns=cols)
    assert sorted(pool.client_ids) == ["a", "b"]
    assert report["span_s"] == pytest.approx(499.5, abs=2)
    table = pa.table({"t_ms": np.arange(1000) * 250.0, "input_tokens": np.full(1000, 5),
                      "output_tokens": np.full(1000, 3)})
    pq.write_table(table, tmp_path / "log.parquet")
    pool, report = fit_pool(tmp_path / "log.parquet",
                            columns=LogColumns(time="t_ms", time_unit="ms"))
    assert pool.rates.sum(axis=0)[0] == pytest.approx(4.0, rel=1e-3)
    assert list(pool.client_ids) == ["default"]


@pytest.mark.parametrize(("text", "cols", "needle"), [
    ("ts,i,o\n0,1,2\n1,x,2\n", LogColumns(time="ts", input="i", output="o"), "log.csv:3"),
    ("ts,i,o\n0,1,2\n\n1,-4,2\n", LogColumns(time="ts", input="i", output="o"), "log.csv:4"),
    ("ts,i,o\n0,1,2\n1,3\n", LogColumns(time="ts", input="i", output="o"), "log.csv:3"),
    ("ts,i,o\n0,1,2\n", LogColumns(time="ts", input="inp", output="o"), "--input-col 'inp'"),
    ("a,b\n0,1\n", LogColumns(), "--time-col"),
    ("ts,i,o\n0,1,2\nnope,1,2\n", LogColumns(time="ts", input="i", output="o"), "log.csv:3"),
    ("ts,i,o,r\n0,1,2,5\n", LogColumns(time="ts", input="i", output="o", reasoning="r"),
     "log.csv:2"),
])
def test_malformed_logs(tmp_path: Path, text: str, cols: LogColumns, needle: str) -> None:
    path = tmp_path / "log.csv"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        fit_pool(path, columns=cols)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_malformed_jsonl_and_options(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"arrival_s": 0, "input_tokens": 1, "output_tokens": 1}\n{"arrival_s": 1,'
                    ' "input_tokens": 1.5, "output_tokens": 1}\n')
    with pytest.raises(UserError, match=r"log\.jsonl:2"):
        fit_pool(path)
    path.write_text('{"arrival_s": 0, "input_tokens": 1, "output_tokens": 1}\n{oops\n')
    with pytest.raises(UserError, match=r"log\.jsonl:2"):
        fit_pool(path)
    good = tmp_path / "ok.csv"
    good.write_text("arrival_s,input_tokens,output_tokens\n0,1,1\n1,2,2\n")
    with pytest.raises(UserError, match="multiple of --window"):
        fit_pool(good, block_s=900)
    with pytest.raises(UserError, match="no such file"):
        fit_pool(tmp_path / "missing.csv")
    with pytest.raises(UserError, match="fixed"):
        fit_pool(good, format="azure", columns=LogColumns(time="x"))
