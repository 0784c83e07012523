"""Generation from client pools: rates, CVs and lengths match the pool; modes; baseline."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from scipy import stats

from slobench.errors import UserError
from slobench.workload.generate import (
    generate_workload,
    iter_workload_batches,
    naive_workload,
    write_workload_parquet,
)
from slobench.workload.servegen import load_pool
from test_workload_servegen import REAL, write_pool

RATES = [[20.0] * 6, [5.0, 5.0, 0.0, 5.0, 5.0, 5.0], [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return load_pool(write_pool(tmp_path_factory.mktemp("g") / "p", RATES, cv=2.0), cache=False)


def per_client_window(table, pool):
    t = table["arrival_s"].to_numpy()
    c = np.searchsorted(pool.client_ids, table["client_id"].to_numpy(zero_copy_only=False))
    counts = np.zeros((pool.n_clients, pool.n_windows))
    np.add.at(counts, (c, np.minimum((t // 600).astype(int), pool.n_windows - 1)), 1)
    return t, c, counts


def window_cv(t, c, client, window):
    x = np.sort(t[(c == client) & (t >= window * 600) & (t < (window + 1) * 600)])
    g = np.diff(x)
    return g.std() / g.mean()


def test_servegen_mode_fixed_counts_and_cv(pool):
    w = generate_workload(pool, 3600, mode="servegen", seed=3)
    t, c, counts = per_client_window(w, pool)
    np.testing.assert_array_equal(counts, np.rint(np.array(RATES) * 600))
    # CV of gaps within a window: 2 (rescaling to fill the window changes it only slightly)
    assert window_cv(t, c, 0, 1) == pytest.approx(2.0, rel=0.2)


def test_renewal_mode_rates_and_cv_match_pool(pool):
    w = generate_workload(pool, 3600, seed=4)
    t, c, counts = per_client_window(w, pool)
    expected = np.array(RATES) * 600
    # Counts vary like a renewal process: within 5 standard deviations (sd ≈ cv·sqrt(n)).
    assert np.all(np.abs(counts - expected) <= 5 * 2.0 * np.sqrt(expected) + 3)
    assert counts[1, 2] == 0  # the idle window stays idle
    assert not np.array_equal(counts, np.rint(expected))  # not fixed counts
    assert window_cv(t, c, 0, 2) == pytest.approx(2.0, rel=0.2)
    # The aggregate over an hour is within 2% of the pool's.
    assert len(t) == pytest.approx(expected.sum(), rel=0.02)


def test_renewal_keeps_aggregate_rate_over_an_hour_several_seeds(pool):
    expected = np.array(RATES).sum() * 600
    n = [generate_workload(pool, 3600, seed=s).num_rows for s in range(3)]
    assert all(abs(x - expected) / expected < 0.02 for x in n), n


def test_weibull_windows(tmp_path):
    p = load_pool(write_pool(tmp_path / "w", [[20.0] * 2], cv=1.5, pattern="Weibull"),
                  cache=False)
    # shape 1/cv² = 0.444 as a Weibull shape gives a CV of about 2.44
    w = generate_workload(p, 1200, seed=1)
    t, c, counts = per_client_window(w, p)
    assert window_cv(t, c, 0, 0) == pytest.approx(2.44, rel=0.25)
    assert counts.sum() == pytest.approx(24000, rel=0.1)


@pytest.mark.parametrize("mode", ["renewal", "servegen"])
def test_lengths_match_pool_ks(pool, mode):
    w = generate_workload(pool, 3600, mode=mode, seed=5)
    client = w["client_id"].to_numpy(zero_copy_only=False)
    for name in ("input_tokens", "output_tokens"):
        got = w[name].to_numpy()[client == "p/0"]
        values, probs = pool.length_mix(name, clients=np.array([0]))
        ref = np.random.default_rng(9).choice(values, size=len(got), p=probs)
        res = stats.ks_2samp(got, ref)
        # threshold: KS statistic below 0.02 with ~70k samples (p-value > 1e-3)
        assert res.statistic < 0.02 and res.pvalue > 1e-3, (name, res)


def test_independent_vs_correlated_fields(pool):
    ind = generate_workload(pool, 1200, seed=6)
    cor = generate_workload(pool, 1200, seed=6, correlated=True)
    for table, lo, hi in ((ind, -0.05, 0.05), (cor, 0.99, 1.0)):
        sel = pc.equal(table["client_id"], "p/0")
        x = table.filter(sel)
        rho = stats.spearmanr(x["input_tokens"].to_numpy(), x["output_tokens"].to_numpy())[0]
        assert lo <= rho <= hi, rho


def test_deterministic_under_seed(pool):
    a = generate_workload(pool, 1800, seed=7)
    b = generate_workload(pool, 1800, seed=7)
    c = generate_workload(pool, 1800, seed=8)
    assert a.equals(b) and not a.equals(c)


def test_rate_functions_and_zero_windows(pool, tmp_path):
    const = generate_workload(pool, 3600, rate=50.0, seed=1)
    assert const.num_rows == pytest.approx(180000, rel=0.02)
    t = const["arrival_s"].to_numpy()
    # the constant target fills the pool's windows evenly, also at any granularity
    assert np.sum(t < 300) == pytest.approx(15000, rel=0.05)
    peak = generate_workload(pool, 3600, rate="peak:10", mode="servegen", seed=1)
    top = max(sum(r[i] for r in RATES) for i in range(6))
    assert peak.num_rows == pytest.approx(np.array(RATES).sum() * 600 * 10 / top, rel=0.01)
    f = tmp_path / "rates.csv"
    f.write_text("time_s,rate\n0,10\n900,0\n1500,30\n")
    w = generate_workload(pool, 3600, rate=f"file:{f}", seed=2)
    t = w["arrival_s"].to_numpy()
    assert np.sum((t >= 900) & (t < 1500)) == 0
    assert np.sum(t < 900) == pytest.approx(9000, rel=0.1)
    assert np.sum(t >= 1500) == pytest.approx(2100 * 30, rel=0.05)
    step = generate_workload(pool, 600, rate="step:10+10/150s..40", seed=2)
    assert step.num_rows == pytest.approx(150 * (10 + 20 + 30 + 40), rel=0.05)
    f.write_text("0,10\n5,abc\n")
    with pytest.raises(UserError, match=r"rates.csv:2"):
        generate_workload(pool, 60, rate=f"file:{f}")
    # longer than the pool: it repeats cyclically
    assert generate_workload(pool, 7200, seed=1).num_rows == pytest.approx(
        2 * np.array(RATES).sum() * 600, rel=0.02)


def test_reason_and_multimodal_fields(tmp_path):
    rp = load_pool(write_pool(tmp_path / "r", [[2.0, 2.0]], kind="reason"), cache=False)
    w = generate_workload(rp, 1200, seed=1)
    assert set(w["app"].to_pylist()) == {"reasoning"}
    out, rea = w["output_tokens"].to_numpy(), w["reasoning_tokens"].to_numpy()
    ratio = rea[out > 20] / out[out > 20]
    assert np.all((np.abs(ratio - 0.25) < 0.03) | (np.abs(ratio - 0.75) < 0.03))
    mp = load_pool(write_pool(tmp_path / "m", [[3.0, 3.0]], kind="multimodal"), cache=False)
    w = generate_workload(mp, 1200, seed=1)
    imgs = w["image_tokens"].to_pylist()
    counts = np.array([len(x) for x in imgs])
    assert set(counts) <= {0, 1, 3} and np.mean(counts == 3) == pytest.approx(0.3, abs=0.05)
    assert all(set(x) <= {100, 1200} for x in imgs)
    text = w["input_tokens"].to_numpy() - np.array([sum(x) for x in imgs])
    assert text.min() >= 100 and text.max() < 150
    assert set(w["app"].to_pylist()) == {"chatbot"}


def test_streaming_parquet_equals_table(pool, tmp_path):
    full = generate_workload(pool, 3600, seed=9)
    batches = list(iter_workload_batches(pool, 3600, seed=9, batch_s=900))
    assert len(batches) == 4
    n = write_workload_parquet(iter_workload_batches(pool, 3600, seed=9, batch_s=900),
                               tmp_path / "w.parquet")
    back = pq.read_table(tmp_path / "w.parquet")
    assert n == full.num_rows and back.equals(full)


def test_naive_baseline(pool):
    w = naive_workload(pool, 3600, seed=1)
    assert w.num_rows == pytest.approx(pool.mean_rate() * 3600, rel=0.02)
    g = np.diff(w["arrival_s"].to_numpy())
    assert g.std() / g.mean() == pytest.approx(1.0, abs=0.05)
    values, probs = pool.length_mix("input_tokens")
    ref = np.random.default_rng(0).choice(values, size=w.num_rows, p=probs)
    assert stats.ks_2samp(w["input_tokens"].to_numpy(), ref).statistic < 0.02
    assert set(w["client_id"].to_pylist()) == {"naive"}


@pytest.mark.skipif(not (REAL / "reason" / "deepseek-r1").is_dir(), reason="no ServeGen data")
def test_real_reason_pool_hour(tmp_path):
    p = load_pool(REAL / "reason" / "deepseek-r1", cache_dir=tmp_path)
    w = generate_workload(p, 3600, seed=0)
    expected = p.aggregate_rate()[:6].sum() * 600
    assert w.num_rows == pytest.approx(expected, rel=0.05)
    assert (w["reasoning_tokens"].to_numpy() <= w["output_tokens"].to_numpy()).all()
