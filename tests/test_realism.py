"""``workload.realism``: verdicts on identical workloads, the naive baseline, scaled lengths."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pyarrow as pa
import pytest

from slobench.errors import UserError
from slobench.schema import conform_workload
from slobench.workload.generate import generate_workload, naive_workload, resolve_rate
from slobench.workload.profiles import load_profile
from slobench.workload.realism import (
    BANDS,
    SAMPLE_CAP,
    Band,
    capped_sample,
    compare_workloads,
    distance,
    gini,
    length_distance,
    load_source,
    verdict,
)

DURATION = 1800.0  # 30 whole 60 s windows: every per-scale statistic is judged


@pytest.fixture(scope="module")
def real() -> pa.Table:
    return generate_workload(load_profile("language"), DURATION, seed=0)


@pytest.fixture(scope="module")
def naive() -> pa.Table:
    pool = load_profile("language")
    mean = float(resolve_rate(pool, None, DURATION).integral(DURATION)) / DURATION
    return naive_workload(pool, DURATION, seed=0, rate=mean)


def by_key(report: dict) -> dict[str, dict]:
    return {s["key"]: s for s in report["statistics"]}


def small_table(n: int = 4000, seed: int = 3, **cols: object) -> pa.Table:
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {
        "request_id": [f"r{i}" for i in range(n)],
        "arrival_s": np.sort(rng.random(n)) * 1500.0,
        "client_id": [f"c{i % 7 if i % 3 else 0}" for i in range(n)],
        "input_tokens": rng.integers(10, 2000, n),
        "output_tokens": rng.integers(1, 500, n),
    }
    data.update(cols)
    return conform_workload(pa.table(data))


def test_identical_workloads_are_close_everywhere(real: pa.Table) -> None:
    report = compare_workloads(real, real)
    verdicts = {s["key"]: s["verdict"] for s in report["statistics"]}
    assert set(verdicts.values()) == {"close"}, verdicts
    assert report["verdict"] == "close"
    assert report["counts"]["far"] == report["counts"]["differs"] == 0
    for key in ("mean_rate", "dispersion_1s", "dispersion_10s", "dispersion_60s", "count_cv_1s",
                "peak_to_mean_60s", "gap_cv", "input_ks", "output_w1", "spearman", "gini",
                "top5_share"):
        assert key in verdicts
    # Strict JSON: no NaN, numpy scalars converted.
    orjson.dumps(report)


def test_identical_with_sessions_and_prefixes_are_close() -> None:
    n = 4000
    t = small_table(n, session_id=[f"s{i // 4}" for i in range(n)],
                    turn=np.arange(n, dtype=np.int32) % 4,
                    think_s=np.where(np.arange(n) % 4, 2.0, 0.0),
                    prefix_blocks=[[i // 40, 10_000 + i] for i in range(n)])
    report = compare_workloads(t, t)
    keys = by_key(report)
    for key in ("followup_share", "turns_per_session", "think_p50", "block_reuse"):
        assert keys[key]["verdict"] == "close", keys[key]
    assert keys["turns_per_session"]["a"] == pytest.approx(4.0)
    # Sessions on one side only: the session statistics are far.
    plain = small_table(n)
    keys = by_key(compare_workloads(plain, t))
    assert keys["followup_share"]["verdict"] == "far"
    assert keys["think_p50"]["verdict"] == "far"
    assert keys["block_reuse"]["verdict"] == "far"


def test_naive_baseline_departs_in_burstiness_and_clients(real: pa.Table,
                                                          naive: pa.Table) -> None:
    report = compare_workloads(naive, real, names=("naive", "profile"))
    keys = by_key(report)
    assert keys["mean_rate"]["verdict"] == "close"
    for w in ("1s", "10s", "60s"):
        assert keys[f"dispersion_{w}"]["verdict"] == "far", keys[f"dispersion_{w}"]
        assert keys[f"count_cv_{w}"]["verdict"] in ("differs", "far")
        assert keys[f"dispersion_{w}"]["a"] < 1.3 < 3 < keys[f"dispersion_{w}"]["b"]
    assert keys["gap_cv"]["verdict"] in ("differs", "far")
    for key in ("clients", "top1_share", "top5_share", "gini"):
        assert keys[key]["verdict"] == "far", keys[key]
    assert keys["clients"]["a"] == 1 and keys["gini"]["a"] == 0
    assert report["groups"]["burstiness"] == "far" and report["groups"]["clients"] == "far"
    assert report["verdict"] == "far"
    assert report["summary"].startswith("naive vs profile:")


def test_two_seeds_of_a_profile_agree_on_rate_and_burstiness(real: pa.Table) -> None:
    other = generate_workload(load_profile("language"), DURATION, seed=1)
    report = compare_workloads(other, real)
    keys = by_key(report)
    for key in ("mean_rate", "gap_cv", "dispersion_1s", "dispersion_10s", "count_cv_1s",
                "input_ks", "output_ks", "input_w1", "top1_share", "gini"):
        assert keys[key]["verdict"] == "close", keys[key]


def test_scaled_lengths_are_detected(real: pa.Table) -> None:
    scaled = real.set_column(real.schema.get_field_index("input_tokens"), "input_tokens",
                             pa.array(np.rint(real["input_tokens"].to_numpy() * 1.5)
                                      .astype(np.int64)))
    keys = by_key(compare_workloads(scaled, real))
    assert keys["input_ks"]["verdict"] in ("differs", "far")
    assert keys["input_w1"]["verdict"] == "far"
    assert keys["input_w1"]["distance"] == pytest.approx(0.5, rel=0.02)
    assert keys["output_ks"]["verdict"] == keys["output_w1"]["verdict"] == "close"
    assert keys["mean_rate"]["verdict"] == "close"
    # Rank correlation is unchanged by a monotone scaling.
    assert keys["spearman"]["verdict"] == "close"


def test_distance_and_verdict_bands() -> None:
    assert distance(1.1, 1.0, "rel") == pytest.approx(0.1)
    assert distance(2.0, 8.0, "ratio") == pytest.approx(4.0)
    assert distance(8.0, 2.0, "ratio") == pytest.approx(4.0)
    assert distance(0.0, 2.0, "ratio") == math.inf
    assert distance(0.0, 0.0, "rel") == 0.0
    assert distance(None, 1.0, "abs") is None
    band = Band("abs", 0.05, 0.15)
    assert [verdict(d, band) for d in (0.0, 0.05, 0.1, 0.15, 0.2, None)] == [
        "close", "close", "differs", "differs", "far", "n/a"]
    assert all(b.close < b.far for b in BANDS.values())


def test_gini_and_capped_samples() -> None:
    assert gini(np.array([5])) == 0.0
    assert gini(np.array([3, 3, 3])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 10])) == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    x = rng.lognormal(5, 1, 3 * SAMPLE_CAP)
    s = capped_sample(x)
    assert s.size == SAMPLE_CAP and np.all(np.diff(s) >= 0)
    ks, w1 = length_distance(x, x * 1.0)
    assert ks == 0.0 and w1 == 0.0
    ks, _ = length_distance(x, rng.lognormal(5, 1, 50_000))
    assert ks < 0.02


def test_short_span_scales_are_not_judged() -> None:
    t = small_table(500)  # 1500 s: 25 windows at 60 s, judged; a 600 s scale would not be
    report = compare_workloads(t, t, scales_s=(1.0, 600.0))
    keys = by_key(report)
    assert keys["dispersion_600s"]["verdict"] == "n/a"
    assert keys["dispersion_1s"]["verdict"] == "close"
    assert report["counts"]["n/a"] >= 3


def test_too_few_requests_is_a_user_error() -> None:
    t = small_table(1)
    with pytest.raises(UserError, match="at least 2"):
        compare_workloads(t, small_table(10), names=("x.parquet", "y"))


def test_load_source_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="no such file"):
        load_source(str(tmp_path / "missing.parquet"))
    with pytest.raises(UserError, match="not a built-in profile"):
        load_source("profile:nope")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError):
        load_source(str(tmp_path / "empty_dir"))
    table, desc = load_source("profile:language-small", duration_s=30, seed=2)
    assert table.num_rows > 1000 and "seed 2" in desc
