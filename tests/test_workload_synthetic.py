"""Synthetic workloads: arrival processes, rate functions, length distributions, the table."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

from slobench.errors import UserError
from slobench.schema import WORKLOAD_SCHEMA, conform_workload, read_workload, write_table
from slobench.workload import (
    ConstantRate,
    Fixed,
    LinearRampRate,
    LogNormal,
    StepRate,
    Uniform,
    arrival_times,
    parse_app_mix,
    parse_length,
    parse_rate,
    synthetic_workload,
    workload_summary,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def gap_cv(times: np.ndarray) -> float:
    gaps = np.diff(times)
    return float(gaps.std() / gaps.mean())


def one_line_user_error(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


# --- arrival processes ---------------------------------------------------------------------------


def test_poisson_rate_and_cv():
    t = arrival_times("poisson", ConstantRate(10.0), n=20_000, rng=rng(1))
    assert len(t) == 20_000
    assert np.all(np.diff(t) >= 0) and t[0] > 0
    assert (len(t) / t[-1]) == pytest.approx(10.0, rel=0.03)
    assert gap_cv(t) == pytest.approx(1.0, abs=0.05)


def test_gamma_cv_is_respected():
    t = arrival_times("gamma", ConstantRate(50.0), cv=3.0, n=200_000, rng=rng(2))
    assert gap_cv(t) == pytest.approx(3.0, rel=0.10)
    assert (len(t) / t[-1]) == pytest.approx(50.0, rel=0.05)
    smooth = arrival_times("gamma", 50.0, cv=0.25, n=50_000, rng=rng(2))
    assert gap_cv(smooth) == pytest.approx(0.25, rel=0.05)


def test_constant_process_gaps_are_exactly_one_over_rate():
    t = arrival_times("constant", 8.0, n=1000, rng=rng())
    assert t[0] == 0.0
    np.testing.assert_allclose(np.diff(t), 1 / 8.0, rtol=1e-9)
    t = arrival_times("constant", 4.0, duration_s=10.0, rng=rng())
    assert len(t) == 40 and t[-1] == pytest.approx(9.75)


def test_constant_rate_reproduces_the_plain_renewal_process():
    shape = 1 / 2.0**2
    plain = np.cumsum(rng(7).standard_gamma(shape, 5000) / shape) / 5.0
    rescaled = arrival_times("gamma", ConstantRate(5.0), cv=2.0, n=5000, rng=rng(7))
    np.testing.assert_allclose(rescaled, plain, rtol=1e-12)
    plain = np.cumsum(rng(7).standard_exponential(5000)) / 5.0
    rescaled = arrival_times("poisson", ConstantRate(5.0), n=5000, rng=rng(7))
    np.testing.assert_allclose(rescaled, plain, rtol=1e-12)


def test_linear_ramp_counts_follow_the_integral():
    fn = LinearRampRate(100.0, 2000.0, 60.0)
    for process, cv in (("poisson", 1.0), ("gamma", 2.0), ("constant", 1.0)):
        t = arrival_times(process, fn, cv=cv, duration_s=60.0, rng=rng(3))
        for lo, hi in ((0.0, 6.0), (54.0, 60.0)):
            expected = float(fn.integral(hi) - fn.integral(lo))
            got = np.count_nonzero((t >= lo) & (t < hi))
            assert got == pytest.approx(expected, rel=0.10), (process, lo)
    # The expected count in the first tenth is ~1170, in the last ~11800: a real ramp.
    assert float(fn.integral(6.0)) == pytest.approx(6 * 100 + 0.5 * (1900 / 60) * 36)


def test_ramp_holds_the_end_rate_after_the_ramp():
    fn = parse_rate("ramp:0..20/10s")
    assert float(fn.rate(5.0)) == pytest.approx(10.0)
    assert float(fn.rate(100.0)) == 20.0
    t = arrival_times("poisson", fn, duration_s=1010.0, rng=rng(4))
    late = np.count_nonzero(t >= 10.0)
    assert late == pytest.approx(20.0 * 1000.0, rel=0.03)


def test_step_rate_per_interval_counts():
    fn = parse_rate("step:100+100/10s..450")
    assert isinstance(fn, StepRate)
    levels = [100, 200, 300, 400, 450, 450, 450]
    assert [float(fn.rate(10.0 * i + 5)) for i in range(7)] == levels
    t = arrival_times("poisson", fn, duration_s=70.0, rng=rng(5))
    counts = np.histogram(t, bins=np.arange(0, 71, 10))[0]
    for got, level in zip(counts, levels, strict=True):
        assert got == pytest.approx(level * 10, rel=0.10)
    t = arrival_times("constant", fn, duration_s=70.0, rng=rng(5))
    counts = np.histogram(t, bins=np.arange(0, 71, 10))[0]
    assert all(abs(int(c) - level * 10) <= 1 for c, level in zip(counts, levels, strict=True))


@pytest.mark.parametrize(
    "fn",
    [
        ConstantRate(3.5),
        LinearRampRate(1.0, 20.0, 60.0),
        LinearRampRate(20.0, 1.0, 60.0),
        LinearRampRate(0.0, 5.0, 30.0),
        LinearRampRate(7.0, 7.0, 30.0),
        StepRate(2.0, 2.0, 30.0, 20.0),
        StepRate(2.0, 3.0, 30.0, 20.0),
        StepRate(0.5, 10.0, 3.0, 50.0),
        StepRate(5.0, 1.0, 10.0, 5.0),
    ],
)
def test_rate_function_integral_and_inverse(fn):
    t = np.linspace(0.0, 400.0, 4001)
    lam = fn.integral(t)
    assert lam[0] == 0.0 and np.all(np.diff(lam) > 0)
    np.testing.assert_allclose(fn.inverse_integral(lam), t, atol=1e-9)
    # Λ' = rate (midpoint rule, away from step edges).
    mid = t[:-1] + 0.05
    np.testing.assert_allclose(np.diff(lam) / 0.1, fn.rate(mid), rtol=0.02, atol=1e-9)
    y = np.linspace(0.0, float(lam[-1]), 1001)
    np.testing.assert_allclose(fn.integral(fn.inverse_integral(y)), y, atol=1e-9 * lam[-1])


def test_duration_limit_is_respected():
    for process in ("poisson", "gamma", "constant"):
        t = arrival_times(process, 100.0, cv=4.0, duration_s=30.0, rng=rng(6))
        assert len(t) > 0 and np.all(t < 30.0) and np.all(t >= 0.0)
        assert t[-1] > 25.0


def test_n_and_duration_stop_at_whichever_comes_first():
    t = arrival_times("poisson", 10.0, n=50, duration_s=1000.0, rng=rng(8))
    assert len(t) == 50
    t = arrival_times("poisson", 10.0, n=100_000, duration_s=10.0, rng=rng(8))
    assert 50 < len(t) < 200 and np.all(t < 10.0)
    # The duration-limited stream is a prefix of the count-limited one for the same seed.
    full = arrival_times("poisson", 10.0, n=5000, rng=rng(8))
    np.testing.assert_array_equal(t, full[: len(t)])


def test_arrivals_are_deterministic_under_the_seed():
    a = arrival_times("gamma", "ramp:1..20/60s", cv=2.0, duration_s=60.0, rng=rng(11))
    b = arrival_times("gamma", "ramp:1..20/60s", cv=2.0, duration_s=60.0, rng=rng(11))
    c = arrival_times("gamma", "ramp:1..20/60s", cv=2.0, duration_s=60.0, rng=rng(12))
    np.testing.assert_array_equal(a, b)
    assert len(a) != len(c) or not np.array_equal(a, c)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"process": "poisson", "rate_fn": 0.0, "n": 10},
        {"process": "poisson", "rate_fn": -1.0, "n": 10},
        {"process": "poisson", "rate_fn": float("inf"), "n": 10},
        {"process": "poisson", "rate_fn": float("nan"), "n": 10},
        {"process": "gamma", "rate_fn": 1.0, "cv": 0.0, "n": 10},
        {"process": "gamma", "rate_fn": 1.0, "cv": -2.0, "n": 10},
        {"process": "poisson", "rate_fn": 1.0},
        {"process": "poisson", "rate_fn": 1.0, "n": 0},
        {"process": "poisson", "rate_fn": 1.0, "n": -5},
        {"process": "poisson", "rate_fn": 1.0, "n": 2.5},
        {"process": "poisson", "rate_fn": 1.0, "duration_s": 0.0},
        {"process": "poisson", "rate_fn": 1.0, "duration_s": -3.0},
        {"process": "weibull", "rate_fn": 1.0, "n": 10},
        {"process": "poisson", "rate_fn": 1e9, "duration_s": 1e6},
    ],
)
def test_arrival_errors(kwargs):
    process = kwargs.pop("process")
    with pytest.raises(UserError) as excinfo:
        arrival_times(process, rng=rng(), **kwargs)
    one_line_user_error(excinfo)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LinearRampRate(-1.0, 5.0, 10.0),
        lambda: LinearRampRate(1.0, -5.0, 10.0),
        lambda: LinearRampRate(1.0, 0.0, 10.0),
        lambda: LinearRampRate(1.0, 5.0, 0.0),
        lambda: StepRate(0.0, 1.0, 10.0, 5.0),
        lambda: StepRate(1.0, -1.0, 10.0, 5.0),
        lambda: StepRate(1.0, 1.0, 0.0, 5.0),
        lambda: StepRate(10.0, 1.0, 10.0, 5.0),
        lambda: ConstantRate(0.0),
    ],
)
def test_rate_function_errors(make):
    with pytest.raises(UserError) as excinfo:
        make()
    one_line_user_error(excinfo)


# --- rate parser ---------------------------------------------------------------------------------


def test_parse_rate_good_forms():
    assert parse_rate("10") == ConstantRate(10.0)
    assert parse_rate(" 2.5 ") == ConstantRate(2.5)
    assert parse_rate("ramp:1..20/60s") == LinearRampRate(1.0, 20.0, 60.0)
    assert parse_rate("ramp:1..20/60") == LinearRampRate(1.0, 20.0, 60.0)
    assert parse_rate("ramp:0.5..4/2min") == LinearRampRate(0.5, 4.0, 120.0)
    assert parse_rate("step:2+2/30s..20") == StepRate(2.0, 2.0, 30.0, 20.0)
    assert parse_rate("STEP:2 + 2 / 1h .. 20") == StepRate(2.0, 2.0, 3600.0, 20.0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "fast",
        "-5",
        "0",
        "10req/s",
        "ramp:1..20",
        "ramp:1-20/60s",
        "ramp:-1..20/60s",
        "ramp:1..20/0s",
        "ramp:1..0/60s",
        "ramp:1..20/60x",
        "step:2+2/30s",
        "step:2+0/30s..20",
        "step:20+2/30s..10",
        "step:2+2/30s..",
        "linear:1..2/3s",
        "inf",
        "nan",
    ],
)
def test_parse_rate_bad_forms(text):
    with pytest.raises(UserError) as excinfo:
        parse_rate(text)
    msg = one_line_user_error(excinfo)
    assert "--rate" in msg


def test_parse_rate_error_names_the_forms():
    with pytest.raises(UserError) as excinfo:
        parse_rate("fast")
    msg = one_line_user_error(excinfo)
    assert "ramp:1..20/60s" in msg and "step:2+2/30s..20" in msg


# --- lengths -------------------------------------------------------------------------------------


def test_lognormal_mean_and_cv():
    dist = LogNormal(512, 0.8)
    x = dist.sample(100_000, rng(9))
    assert x.dtype == np.int64 and x.min() >= 1
    assert x.mean() == pytest.approx(512, rel=0.05)
    assert x.std() / x.mean() == pytest.approx(0.8, rel=0.05)
    assert dist.mean == 512 and "lognormal" in dist.describe()


def test_lognormal_clipping():
    x = LogNormal(500, 2.0, min=100, max=1000).sample(50_000, rng(10))
    assert x.min() == 100 and x.max() == 1000
    assert np.count_nonzero(x == 100) > 1000 and np.count_nonzero(x == 1000) > 1000
    y = LogNormal(3, 0.1, min=1).sample(1000, rng(10))
    assert set(np.unique(y)) <= {2, 3, 4}


def test_fixed_and_uniform():
    assert np.array_equal(Fixed(7).sample(5, rng()), np.full(5, 7))
    x = Uniform(100, 102).sample(30_000, rng(3))
    assert x.dtype == np.int64 and set(np.unique(x)) == {100, 101, 102}
    assert x.mean() == pytest.approx(101, abs=0.02)
    assert Uniform(5, 5).sample(3, rng()).tolist() == [5, 5, 5]
    assert Fixed(7).mean == 7.0 and Uniform(100, 200).mean == 150.0


def test_parse_length_good_forms():
    assert parse_length("512") == Fixed(512)
    assert parse_length("fixed:512") == Fixed(512)
    assert parse_length("uniform:100..200") == Uniform(100, 200)
    assert parse_length("lognormal:mean=512,cv=0.8") == LogNormal(512.0, 0.8, 1, None)
    assert parse_length("lognormal:cv=0.8, mean=512, min=16, max=8192") == LogNormal(
        512.0, 0.8, 16, 8192
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "-5",
        "1.5",
        "abc",
        "fixed:0",
        "fixed:-3",
        "fixed:",
        "uniform:0..10",
        "uniform:200..100",
        "uniform:100",
        "uniform:1.5..3",
        "lognormal:",
        "lognormal:mean=512",
        "lognormal:cv=0.8",
        "lognormal:mean=0,cv=0.8",
        "lognormal:mean=512,cv=-1",
        "lognormal:mean=512,cv=0.8,min=0",
        "lognormal:mean=512,cv=0.8,min=10,max=5",
        "lognormal:mean=512,cv=0.8,max=1.5",
        "lognormal:mean=512,cv=0.8,foo=3",
        "lognormal:mean=512,mean=3,cv=0.8",
        "normal:mean=5",
    ],
)
def test_parse_length_bad_forms(text):
    with pytest.raises(UserError) as excinfo:
        parse_length(text, what="--output-tokens")
    msg = one_line_user_error(excinfo)
    assert msg.startswith("--output-tokens")


# --- app mix -------------------------------------------------------------------------------------


def test_parse_app_mix():
    assert parse_app_mix("chatbot") == {"chatbot": 1.0}
    assert parse_app_mix("chatbot:0.7,coding:0.3") == pytest.approx({"chatbot": 0.7, "coding": 0.3})
    assert parse_app_mix("chatbot:7, coding:3") == pytest.approx({"chatbot": 0.7, "coding": 0.3})
    assert parse_app_mix("chatbot,coding") == {"chatbot": 0.5, "coding": 0.5}
    assert parse_app_mix("a:1,b:0") == {"a": 1.0, "b": 0.0}


@pytest.mark.parametrize(
    "text",
    ["", ",", "chatbot:", "chatbot:-1", "chatbot:0", "a:0,b:0", "chatbot:x", "chat bot:1",
     "chatbot:1,chatbot:2", "chatbot:1,,coding:1", "chatbot:inf", ":1"],
)
def test_parse_app_mix_bad_forms(text):
    with pytest.raises(UserError) as excinfo:
        parse_app_mix(text)
    assert one_line_user_error(excinfo).startswith("--apps")


# --- the table -----------------------------------------------------------------------------------


def test_table_conforms_to_the_schema_and_round_trips(tmp_path):
    table = synthetic_workload(
        rate="ramp:1..50/20s",
        process="gamma",
        cv=2.0,
        duration_s=60.0,
        input_tokens="uniform:10..20",
        output_tokens=LogNormal(100, 0.5, max=300),
        apps="chatbot:0.6,coding:0.2,reasoning:0.2",
        reasoning_fraction=0.5,
        seed=3,
    )
    assert table.schema.equals(WORKLOAD_SCHEMA)
    assert conform_workload(table).equals(table)
    n = table.num_rows
    assert n > 1000
    rows = table.to_pydict()
    assert rows["request_id"][:2] == ["r000000", "r000001"]
    assert len(set(rows["request_id"])) == n
    assert rows["session_id"] == rows["request_id"]
    assert set(rows["turn"]) == {0} and set(rows["think_s"]) == {0.0}
    assert set(rows["client_id"]) == {"synthetic"}
    assert all(p == [] for p in rows["prefix_blocks"])
    assert all(i == [] for i in rows["image_tokens"])
    assert rows["prompt"] == [None] * n
    assert all(10 <= x <= 20 for x in rows["input_tokens"])
    assert all(1 <= x <= 300 for x in rows["output_tokens"])
    arrivals = np.array(rows["arrival_s"])
    assert np.all(np.diff(arrivals) >= 0) and arrivals.max() < 60.0
    apps = np.array(rows["app"])
    out = np.array(rows["output_tokens"])
    reasoning = np.array(rows["reasoning_tokens"])
    assert np.all(reasoning[apps != "reasoning"] == 0)
    np.testing.assert_array_equal(
        reasoning[apps == "reasoning"], np.rint(0.5 * out[apps == "reasoning"])
    )

    path = tmp_path / "workload.parquet"
    write_table(table, path)
    assert read_workload(path).equals(table)


def test_request_ids_widen_past_a_million():
    table = synthetic_workload(n_requests=1_000_001, rate=1000, input_tokens=1, output_tokens=1)
    ids = table["request_id"]
    assert ids[0].as_py() == "r0000000" and ids[-1].as_py() == "r1000000"


def test_table_is_deterministic_and_fields_are_independent():
    base = {"n_requests": 2000, "rate": "10", "apps": "chatbot:0.5,coding:0.5", "seed": 42}
    a = synthetic_workload(**base)
    assert a.equals(synthetic_workload(**base))
    assert not a.equals(synthetic_workload(**{**base, "seed": 43}))
    # Changing one field's distribution leaves every other field unchanged.
    b = synthetic_workload(**{**base, "output_tokens": "uniform:1..5"})
    for col in ("arrival_s", "input_tokens", "app"):
        assert a[col].equals(b[col]), col
    assert not a["output_tokens"].equals(b["output_tokens"])
    c = synthetic_workload(**{**base, "apps": "chatbot:0.1,coding:0.9", "process": "gamma",
                              "cv": 2.0})
    for col in ("input_tokens", "output_tokens"):
        assert a[col].equals(c[col]), col


def test_app_mix_shares():
    table = synthetic_workload(n_requests=50_000, apps={"chatbot": 3, "coding": 1}, seed=1)
    shares = workload_summary(table)["apps"]
    assert shares["chatbot"] == pytest.approx(0.75, abs=0.01)
    assert shares["coding"] == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_requests": 10, "reasoning_fraction": 0.5},
        {"n_requests": 10, "apps": "reasoning", "reasoning_fraction": 1.5},
        {"n_requests": 10, "apps": "reasoning", "reasoning_fraction": -0.1},
        {"n_requests": 10, "seed": -1},
        {"n_requests": 10, "input_tokens": "0"},
        {"n_requests": 10, "output_tokens": "fixed:0"},
        {"n_requests": 10, "rate": "fast"},
        {"n_requests": 10, "apps": {"chatbot": -1}},
        {"duration_s": 1.0, "rate": 0.001},
        {"duration_s": 0.5, "rate": "step:0.01+1/10s..5"},
        {},
    ],
)
def test_synthetic_workload_errors(kwargs):
    with pytest.raises(UserError) as excinfo:
        synthetic_workload(**kwargs)
    one_line_user_error(excinfo)


def test_summary():
    table = synthetic_workload(
        n_requests=20_000, rate=20, input_tokens=100, output_tokens="uniform:1..9", seed=5
    )
    s = workload_summary(table)
    assert s["requests"] == 20_000
    assert s["rate_rps"] == pytest.approx(20.0, rel=0.03)
    assert s["interarrival_cv"] == pytest.approx(1.0, abs=0.05)
    assert s["span_s"] == pytest.approx(1000.0, rel=0.03)
    assert s["input_tokens"] == {"mean": 100.0, "p50": 100.0, "p99": 100.0}
    assert s["output_tokens"]["mean"] == pytest.approx(5.0, abs=0.1)
    assert s["apps"] == {"chatbot": 1.0} and s["clients"] == {"synthetic": 1.0}
    constant = workload_summary(synthetic_workload(n_requests=100, process="constant", rate=4))
    assert constant["interarrival_cv"] == pytest.approx(0.0, abs=1e-9)
    assert constant["span_s"] == pytest.approx(99 / 4)
    empty = workload_summary(table.slice(0, 0))
    assert empty["requests"] == 0 and empty["rate_rps"] is None


def test_a_million_requests_generate_quickly():
    synthetic_workload(n_requests=1000)  # warm up pyarrow kernels
    start = time.perf_counter()
    table = synthetic_workload(
        n_requests=1_000_000, rate=100, apps="chatbot:0.7,coding:0.2,reasoning:0.1",
        reasoning_fraction=0.3,
    )
    elapsed = time.perf_counter() - start
    assert table.num_rows == 1_000_000
    assert isinstance(table, pa.Table)
    assert elapsed < 2.0, f"1M requests took {elapsed:.2f} s"
