"""``slobench compare``: the bootstrap against brute force and known truths, synthetic runs in real
run directories, the regression gates, and two real runs against the built-in emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from slobench.cli.main import app
from slobench.report.compare import (
    Gate,
    block_weights,
    boot_percentile,
    boot_pooled_percentiles,
    compare_runs,
    delta_of,
    parse_gate,
)
from slobench.schema import conform_records, write_table
from slobench.slo.spec import parse_slo
from slobench.slo.summary import summarize
from slobench.store.rundir import RECORDS, SUMMARY, RunDir

# -- synthetic runs ------------------------------------------------------------------------------


def synth_records(n: int, *, seed: int, workload_seed: int = 0, rate: float = 20.0,
                  ttft_scale: float = 1.0, tpot_scale: float = 1.0, error_rate: float = 0.01,
                  apps: tuple[str, ...] = ("chatbot", "coding"), mean_out: int = 32) -> pa.Table:
    """A Records table of one workload (``workload_seed``: arrivals, classes, output lengths)
    served with random latencies (``seed``): lognormal TTFT (median 300 ms) and per-request TPOT
    (median 30 ms), token gaps jittered around the request's TPOT, some HTTP errors."""
    wl = np.random.default_rng(workload_seed)
    sched = np.sort(wl.uniform(0.0, n / rate, n))
    app_col = wl.choice(np.array(apps), n)
    lengths = wl.integers(2, 2 * mean_out, n)
    rng = np.random.default_rng(seed)
    ok = rng.random(n) >= error_rate
    out = np.where(ok, lengths, 0).astype(np.int64)
    ttft = rng.lognormal(np.log(0.3), 0.5, n) * ttft_scale
    tpot = rng.lognormal(np.log(0.03), 0.3, n) * tpot_scale
    first = sched + ttft
    idx = np.repeat(np.arange(n), out)
    starts = np.cumsum(out) - out
    pos = np.arange(idx.size) - starts[idx]
    step = np.where(pos > 0, tpot[idx] * rng.gamma(20.0, 1 / 20.0, idx.size), 0.0)
    cs = np.cumsum(step)
    times = first[idx] + cs - np.r_[cs, 0.0][starts][idx]
    last = np.r_[times, 0.0][np.maximum(starts + out - 1, 0)]
    offsets = np.r_[0, np.cumsum(out)].astype(np.int32)

    def nullable(x: np.ndarray) -> pa.Array:
        return pa.array(np.where(ok, x, np.nan), from_pandas=True)

    return conform_records(pa.table({
        "request_id": [f"r{i}" for i in range(n)], "client_id": ["c0"] * n,
        "app": app_col.astype(str), "scheduled_s": sched, "sent_s": sched + 1e-4,
        "first_token_s": nullable(first), "first_answer_s": nullable(first),
        "done_s": nullable(last), "input_tokens": np.full(n, 100, dtype=np.int64),
        "output_tokens": out, "reasoning_tokens": np.zeros(n, dtype=np.int64),
        "token_times": pa.ListArray.from_arrays(pa.array(offsets), pa.array(times)),
        "status": np.where(ok, "ok", "http_error").astype(str),
        "token_count_source": ["usage_deltas"] * n,
    }))


def write_run(root: Path, run_id: str, records: pa.Table, *, slo: str | None = None,
              fingerprint: str = "w0", valid: bool = True, window: bool = True) -> Path:
    """A run directory as ``slobench run`` leaves it (manifest, records, summary)."""
    run = RunDir.create(root, run_id)
    slos = parse_slo(slo)
    span = (0.0, float(records["scheduled_s"].to_numpy().max()) + 1e-9)
    write_table(records, run.path / RECORDS)
    health = {"valid": valid, "reasons": [] if valid else ["p99 send lag 40.0 ms exceeds 5 ms"],
              "thresholds": {"send_lag_p99_s": 0.005, "cpu": 0.9}}
    manifest = {"run_id": run_id, "status": "complete", "target": {"model": "m", "url": "x"},
                "config": {"slo": slos.to_text(), "plan": {"warmup_s": 0.0, "cooldown_s": 0.0}},
                "workload": {"source": "synthetic", "requests": records.num_rows,
                             "fingerprint": fingerprint},
                "client_health": health}
    if window:
        manifest["window"] = list(span)
    run.write_json("manifest.json", manifest)
    run.write_json(SUMMARY, {"summary": summarize(records, slos, window=span),
                             "client_health": health})
    return run.path


def with_errors(records: pa.Table, rows: list[int]) -> pa.Table:
    status = np.asarray(records["status"].to_pylist(), dtype=object)
    status[rows] = "http_error"
    return records.set_column(records.schema.get_field_index("status"), "status",
                              pa.array(status.astype(str)))


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["compare", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base: 3,000 requests; slow: another draw with TTFT ×1.3; same: another draw, no change."""
    root = tmp_path_factory.mktemp("cmp") / "runs"
    write_run(root, "base", synth_records(3000, seed=1))
    write_run(root, "slow", synth_records(3000, seed=2, ttft_scale=1.3))
    write_run(root, "same", synth_records(3000, seed=3))
    return root


# -- the bootstrap itself ------------------------------------------------------------------------


def test_exact_percentile_bootstrap_matches_brute_force() -> None:
    """The order-statistic draws have the distribution of resampling requests and taking
    np.percentile of the defined values (NaN = undefined, e.g. failed requests)."""
    rng = np.random.default_rng(5)
    v = rng.lognormal(0, 0.7, 150)
    v[rng.random(150) < 0.1] = np.nan
    resamples = 20000
    brute_idx = rng.integers(0, v.size, (resamples, v.size))
    for q in (50, 90, 99):
        fast = boot_percentile(v, q, resamples, np.random.default_rng(q))
        brute = np.nanpercentile(v[brute_idx], q, axis=1)
        f, b = np.percentile(fast, [2.5, 50, 97.5]), np.percentile(brute, [2.5, 50, 97.5])
        width = b[2] - b[0]
        assert np.all(np.abs(f - b) < 0.05 * width), (q, f, b)


def clustered(n_req: int, rng: np.random.Generator, scale: float = 1.0
              ) -> tuple[np.ndarray, np.ndarray]:
    """Token gaps of n_req requests: each request has its own speed, so its gaps correlate."""
    lens = rng.integers(2, 60, n_req)
    speed = rng.lognormal(0, 0.4, n_req)
    owner = np.repeat(np.arange(n_req), lens)
    return speed[owner] * rng.gamma(5, 1 / 5, owner.size) * scale, owner


def test_pooled_itl_bootstrap_resamples_requests_not_gaps() -> None:
    """ITL percentiles pool every gap: the draws match resampling whole requests (brute force),
    and are much wider than resampling gaps, which would ignore that a slow request's gaps are
    all slow."""
    rng = np.random.default_rng(7)
    gaps, owner = clustered(300, rng)
    resamples = 3000
    block, weights = block_weights(300, resamples, np.random.default_rng(1))
    fast = boot_pooled_percentiles(gaps, owner, block, weights, (50, 90, 99),
                                   np.random.default_rng(2))
    counts = np.stack([np.bincount(rng.integers(0, 300, 300), minlength=300)
                       for _ in range(resamples)])
    for q in (50, 90, 99):
        brute = np.array([np.percentile(np.repeat(gaps, c[owner]), q) for c in counts[:1500]])
        iid = np.array([np.percentile(gaps[rng.integers(0, gaps.size, gaps.size)], q)
                        for _ in range(300)])
        f, b = np.percentile(fast[q], [2.5, 97.5]), np.percentile(brute, [2.5, 97.5])
        width = b[1] - b[0]
        assert np.all(np.abs(f - b) < 0.12 * width), (q, f, b)
        iid_width = np.subtract(*np.percentile(iid, [97.5, 2.5]))
        assert width > 1.8 * iid_width, (q, width, iid_width)


def test_pooled_bootstrap_of_discrete_gaps() -> None:
    """Gaps that take few values (zeros from multi-token chunks, a simulator's step times): the
    resampled percentiles are those values, as np.percentile gives them, not points between."""
    rng = np.random.default_rng(3)
    lens = rng.integers(2, 40, 300)
    owner = np.repeat(np.arange(300), lens)
    busy = rng.random(300) < 0.3
    gaps = np.where(rng.random(owner.size) < 0.45, 0.0, np.where(busy[owner], 0.02, 0.01))
    gaps[rng.random(owner.size) < 0.02] = 0.05
    block, weights = block_weights(300, 2000, np.random.default_rng(1))
    fast = boot_pooled_percentiles(gaps, owner, block, weights, (50, 90, 99),
                                   np.random.default_rng(2))
    for q in (50, 90, 99):
        brute = [np.percentile(np.repeat(gaps, np.bincount(rng.integers(0, 300, 300),
                                                           minlength=300)[owner]), q)
                 for _ in range(300)]
        assert set(np.unique(fast[q])) <= {0.0, 0.01, 0.02, 0.05}
        assert np.percentile(fast[q], 50) == np.percentile(brute, 50) == np.percentile(gaps, q)


def test_many_requests_use_blocks_with_the_same_spread() -> None:
    """Above 1,000 requests they are dealt into 1,000 random blocks: the spread of the draws
    stays that of resampling requests (checked against the exact per-request bootstrap at
    3,000 requests)."""
    rng = np.random.default_rng(11)
    gaps, owner = clustered(3000, rng)
    resamples = 1500
    out = {}
    for max_blocks in (1000, 3000):
        block, weights = block_weights(3000, resamples, np.random.default_rng(3), max_blocks)
        out[max_blocks] = boot_pooled_percentiles(gaps, owner, block, weights, (90,),
                                                  np.random.default_rng(4))[90]
    sd_blocks, sd_requests = out[1000].std(), out[3000].std()
    assert 0.85 < sd_blocks / sd_requests < 1.15


def test_interval_coverage() -> None:
    """Over repeated experiments with known truths, the 95% interval of the difference of two
    runs covers the true difference about 95% of the time: p90 of a per-request metric (exact
    bootstrap) and p99 of pooled token gaps (block bootstrap)."""
    z90 = 1.2815515655446004
    rng = np.random.default_rng(2024)
    # p90: lognormal(0, 0.6) against the same ×1.15; 10% of the requests failed (NaN)
    true_p90 = np.exp(0.6 * z90) * 0.15
    hits = 0
    trials = 300
    for _ in range(trials):
        a = rng.lognormal(0, 0.6, 400)
        b = rng.lognormal(np.log(1.15), 0.6, 400)
        a[rng.random(400) < 0.1] = np.nan
        b[rng.random(400) < 0.1] = np.nan
        da, db = boot_percentile(a, 90, 1000, rng), boot_percentile(b, 90, 1000, rng)
        d = delta_of(float(np.nanpercentile(a, 90)), float(np.nanpercentile(b, 90)), da, db,
                     0.95, "lower")
        assert d is not None and d.ci_abs is not None
        hits += d.ci_abs[0] <= true_p90 <= d.ci_abs[1]
    assert 0.91 <= hits / trials <= 0.985, hits / trials
    # pooled p99: the truth from a very large population of requests
    big, _ = clustered(200_000, np.random.default_rng(99))
    true_delta = float(np.percentile(big, 99)) * 0.1  # run b is run a slowed by 10%
    hits = 0
    trials = 150
    for _ in range(trials):
        ga, oa = clustered(400, rng)
        gb, ob = clustered(400, rng, scale=1.1)
        draws = []
        for g, o in ((ga, oa), (gb, ob)):
            block, weights = block_weights(400, 1000, rng)
            draws.append(boot_pooled_percentiles(g, o, block, weights, (99,), rng)[99])
        d = delta_of(float(np.percentile(ga, 99)), float(np.percentile(gb, 99)), draws[0],
                     draws[1], 0.95, "lower")
        assert d is not None and d.ci_abs is not None
        hits += d.ci_abs[0] <= true_delta <= d.ci_abs[1]
    assert 0.88 <= hits / trials <= 0.99, hits / trials


# -- runs from the same distribution, and a real shift ---------------------------------------------


def test_same_distribution_is_rarely_significant(tmp_path: Path) -> None:
    """Runs drawn from one distribution: about 95% of the metric differences are not
    significant (with 95% intervals, about 5% are by chance)."""
    root = tmp_path / "runs"
    flagged = total = 0
    for pair in range(3):
        a = write_run(root, f"a{pair}", synth_records(2000, seed=100 + pair))
        b = write_run(root, f"b{pair}", synth_records(2000, seed=200 + pair))
        cmp = compare_runs([a, b], resamples=1000, seed=pair)
        assert cmp.notes == [] and cmp.warnings == []
        for scope in cmp.scopes.values():
            for res in scope.values():
                d = res.deltas[1]
                if d is not None and d.significant is not None:
                    total += 1
                    flagged += d.significant
    assert total >= 140
    assert flagged / total <= 0.09, (flagged, total)


def test_ttft_shift_is_significant_and_values_match_the_report(shifted: Path) -> None:
    code, out, err = invoke(str(shifted / "base"), str(shifted / "slow"), str(shifted / "same"),
                            "--json")
    assert code == 0, err
    doc = json.loads(out)
    overall = doc["scopes"]["overall"]
    for q in ("p50", "p90", "p99"):
        slow = overall[f"ttft.{q}"]["deltas"][1]
        assert slow["significant"] and slow["direction"] == "worse"
        assert 0.2 < slow["rel"] < 0.4 and slow["ci_rel"][0] < slow["rel"] < slow["ci_rel"][1]
        assert not overall[f"ttft.{q}"]["deltas"][2]["significant"]
        assert overall[f"ttft.{q}"]["best"] == [0, 2]  # base and same tie; slow is worse
    assert all(not overall[f"{m}.{q}"]["deltas"][1]["significant"]
               for m in ("tpot", "itl") for q in ("p50", "p90"))
    # the point values are those of `slobench report` (summary.json)
    for i, name in enumerate(("base", "slow", "same")):
        summary = json.loads((shifted / name / SUMMARY).read_text())["summary"]
        for scope, block in [("overall", summary["overall"]), *summary["classes"].items()]:
            got = doc["scopes"][scope]
            assert got["ttft.p99"]["values"][i] == pytest.approx(block["latency"]["ttft"]["p99"])
            assert got["itl.p90"]["values"][i] == pytest.approx(block["latency"]["itl"]["p90"])
            assert got["e2e.p50"]["values"][i] == pytest.approx(block["latency"]["e2e"]["p50"])
            assert got["goodput"]["values"][i] == pytest.approx(block["goodput_rps"])
            assert got["attainment"]["values"][i] == pytest.approx(
                block["slo"]["attainment"])
            assert got["throughput"]["values"][i] == pytest.approx(
                block["throughput"]["output_tokens_per_s"])
            assert got["requests"]["values"][i] == block["requests"]


@pytest.mark.parametrize(("gate", "code"), [
    ("ttft.p90 > +10%", 1),
    ("ttft.p90 > +60%", 0),  # +30% does not pass +60%
    ("tpot.p50 > +10%", 0),
    ("chatbot:ttft.p99 > +50ms", 1),
    ("coding:ttft.p50 > +1s", 0),
    ("e2e.p50 > 0.5s", 0),  # E2E carries the TTFT shift: about +115 ms
    ("e2e.p50 > 0.05s", 1),
])
def test_fail_if_detects_the_shift(shifted: Path, gate: str, code: int) -> None:
    got, out, err = invoke(str(shifted / "base"), str(shifted / "slow"), "--fail-if", gate)
    assert got == code, (out, err)
    if code:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"regression: '{gate}': #1 slow vs #0 base")
        assert "significant" in lines[0]
    else:
        assert err == ""
        assert f"gate ok: '{gate}'" in " ".join(out.split())


def test_terminal_table_fits_and_marks(shifted: Path) -> None:
    code, out, _ = invoke(str(shifted / "base"), str(shifted / "slow"), str(shifted / "same"))
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 100
    ttft = next(line for line in out.splitlines() if line.startswith("TTFT p90"))
    assert "*" in ttft and "#0 #2" in ttft
    assert "SLO attainment per class" in out and "chatbot" in out
    assert "alone is best at (significantly): #0 base 0, #1 slow 0, #2 same" in " ".join(
        out.split())
    code, out, _ = invoke(str(shifted / "base"), str(shifted / "slow"), "--class", "coding")
    assert code == 0 and "Class coding" in out and "SLO attainment per class" not in out


def test_baseline_option_and_run_ids(shifted: Path) -> None:
    code, out, err = invoke("slow", "base", "--runs-dir", str(shifted), "--baseline", "1",
                            "--json", "--resamples", "500")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["baseline"] == 1 and doc["runs"][0]["run_id"] == "slow"
    d = doc["scopes"]["overall"]["ttft.p50"]["deltas"][0]
    assert d["significant"] and d["direction"] == "worse" and d["rel"] > 0.2
    assert doc["scopes"]["overall"]["ttft.p50"]["deltas"][1] is None


def test_strict_ignores_significance(tmp_path: Path) -> None:
    """60 requests, 3 more failures: goodput drops ~5%, far inside the noise of 60 requests."""
    root = tmp_path / "runs"
    rec = synth_records(60, seed=4, error_rate=0.0)
    a = write_run(root, "a", rec)
    b = write_run(root, "b", with_errors(rec, [0, 1, 2]))
    code, out, err = invoke(str(a), str(b), "--fail-if", "goodput < -2%")
    assert code == 0, err
    assert "not significant (--strict to fail anyway)" in " ".join(out.split())
    code, out, err = invoke(str(a), str(b), "--fail-if", "goodput < -2%", "--strict")
    assert code == 1 and err.startswith("regression: 'goodput < -2%'"), (out, err)
    code, _, err = invoke(str(a), str(b), "--fail-if", "error_rate > +2pp", "--strict")
    assert code == 1 and "+5.0pp" in err  # 0 -> 3/60
    code, _, err = invoke(str(a), str(b), "--fail-if", "error_rate > +10pp", "--strict")
    assert code == 0, err


# -- SLOs, workloads, health -------------------------------------------------------------------


def test_runs_judged_with_other_slos_are_rejudged(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    rec = synth_records(800, seed=8)
    a = write_run(root, "a", rec)
    b = write_run(root, "b", rec, slo="chatbot: ttft<=1ms")  # its own summary: chatbot all fail
    cmp = compare_runs([a, b], resamples=500)
    assert cmp.slo_source == "baseline" and any("re-judged" in n for n in cmp.notes)
    att = cmp.scopes["chatbot"]["attainment"]
    assert att.values[0] == att.values[1] > 0.9  # the same records judged by the same spec
    cmp = compare_runs([a, b], resamples=500, slo="chatbot: ttft<=1ms")
    assert cmp.slo_source == "--slo" and cmp.scopes["chatbot"]["attainment"].values == [0, 0]
    assert any("--slo" in n for n in cmp.notes)
    code, _, err = invoke(str(a), str(b), "--slo", "chatbto: ttft<=1s")
    assert code == 2 and "did you mean 'chatbot'" in one_error_line(err)


def test_warnings_for_other_workloads_and_unhealthy_clients(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    a = write_run(root, "a", synth_records(300, seed=1))
    b = write_run(root, "b", synth_records(300, seed=2), fingerprint="other", valid=False,
                  window=False)  # killed before the end: no window in its manifest
    cmp = compare_runs([a, b], resamples=500)
    assert any("different workload" in w and "fingerprint other vs w0" in w
               for w in cmp.warnings)
    assert any("client unhealthy" in w and "send lag" in w for w in cmp.warnings)
    assert not cmp.runs[1].client_valid
    code, out, _ = invoke(str(a), str(b))
    assert code == 0
    assert "warning: #1 b ran a different workload" in " ".join(out.split())
    assert "[client unhealthy]" in out


def test_no_single_winner(tmp_path: Path) -> None:
    """One run has the faster first token, the other the faster stream: each is best at
    something, and where they do not differ significantly the table says so."""
    root = tmp_path / "runs"
    a = write_run(root, "a", synth_records(2000, seed=21))
    b = write_run(root, "b", synth_records(2000, seed=22, ttft_scale=0.7, tpot_scale=1.3))
    c = write_run(root, "c", synth_records(2000, seed=23))
    cmp = compare_runs([a, b, c], resamples=1000)
    overall = cmp.scopes["overall"]
    assert overall["ttft.p50"].best == [1]
    assert 1 not in overall["tpot.p50"].best and 0 in overall["tpot.p50"].best
    assert overall["requests"].best is None  # counts have no better side
    wins = cmp.wins()
    assert "ttft.p90" in wins["runs"][1]
    assert "tpot.p90" in wins["ties"] or "tpot.p90" in wins["runs"][0] + wins["runs"][2]
    doc = cmp.as_dict()
    assert doc["wins"]["overall"] == wins
    json.dumps(doc)  # JSON-safe: no NaN, no numpy types


# -- gate expressions and other input -------------------------------------------------------------


def test_gate_grammar() -> None:
    assert parse_gate("chatbot:ttft.p99 > +50ms") == Gate(
        "chatbot:ttft.p99 > +50ms", "chatbot", "ttft.p99", ">", 0.05, False)
    assert parse_gate("goodput < -5%") == Gate("goodput < -5%", "overall", "goodput", "<",
                                                -0.05, True)
    assert parse_gate(" attainment<-2pp ").value == pytest.approx(-0.02)
    assert parse_gate("goodput < -1.5req/s").value == -1.5
    assert parse_gate("throughput < -100tok/s").metric == "throughput"
    assert parse_gate("error_rate > 0.01") == Gate("error_rate > 0.01", "overall",
                                                    "error_rate", ">", 0.01, False)
    assert parse_gate("itl.p50 > 250us").value == pytest.approx(250e-6)
    assert parse_gate("e2e.P90 > +1min").value == 60.0


@pytest.mark.parametrize(("expr", "needles"), [
    ("goodpt < -5%", ["unknown metric 'goodpt'", "did you mean 'goodput'", "character 1"]),
    ("ttft > +10%", ["'ttft' needs a percentile", "ttft.p99"]),
    ("ttft.p95 > +10%", ["unknown statistic 'p95'", "p50, p90 or p99"]),
    ("goodput.p50 < -5%", ["takes no statistic"]),
    ("goodput <= -5%", ["operator '<=' is not supported", "'<'"]),
    ("goodput -5%", ["missing operator"]),
    ("goodput <", ["missing value", "-5%"]),
    ("ttft.p99 > 50", ["'50' has no unit", "+50ms"]),
    ("ttft.p99 > +50 parsecs", ["not a duration"]),
    ("goodput < -5ms", ["unit 'ms' does not fit 'goodput'", "req/s"]),
    ("goodput < five", ["'five' is not a value"]),
    ("", ["not a gate expression"]),
    ("nosuch:goodput < -5%", ["class 'nosuch'", "chatbot"]),
])
def test_bad_gate_is_one_line_and_exit_2(shifted: Path, expr: str, needles: list[str]) -> None:
    code, out, err = invoke(str(shifted / "base"), str(shifted / "slow"), "--fail-if", expr,
                            "--resamples", "200")
    assert code == 2, (out, err)
    line = one_error_line(err)
    assert line.startswith("error: --fail-if: ")
    for needle in needles:
        assert needle in line, line


@pytest.mark.parametrize(("args", "needle"), [
    (["base"], "at least two runs"),
    (["base", "nope"], "nope: no run directory"),
    (["base", "slow", "--baseline", "2"], "--baseline: 2"),
    (["base", "slow", "--class", "chatbt"], "did you mean 'chatbot'"),
    (["base", "slow", "--confidence", "1.5"], "--confidence"),
    (["base", "slow", "--resamples", "10"], "--resamples"),
])
def test_bad_input_is_one_line(shifted: Path, args: list[str], needle: str) -> None:
    code, _, err = invoke(*args, "--runs-dir", str(shifted))
    assert code == 2
    assert needle in one_error_line(err)


# -- end to end: two real runs against the built-in emulator -------------------------------------


def slobench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run([sys.executable, "-m", "slobench", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=env,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same workload (seed) against an emulated H100 and an emulated L4."""
    d = tmp_path_factory.mktemp("e2e")
    for gpu in ("h100", "l4"):
        proc = slobench("run", "-d", "3s", "-r", "6", "--input-tokens", "200",
                        "--output-tokens", "24", "--apps", "chatbot:0.5,coding:0.5",
                        "--gpu", gpu, "--out", "runs", "--run-id", gpu, "-q", cwd=d)
        assert proc.returncode == 0, proc.stderr
    return d


def test_emulated_h100_against_l4(emulated: Path) -> None:
    proc = slobench("compare", "h100", "l4", "--json", cwd=emulated)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    runs = doc["runs"]
    assert runs[0]["workload_fingerprint"] == runs[1]["workload_fingerprint"]
    assert not any("different workload" in w for w in doc["warnings"])
    assert "h100" in runs[0]["description"] and "l4" in runs[1]["description"]
    overall = doc["scopes"]["overall"]
    for key in ("tpot.p50", "tpot.p90", "itl.p50", "e2e.p50"):
        d = overall[key]["deltas"][1]
        assert d["significant"] and d["direction"] == "worse" and d["rel"] > 1.0, key
        assert overall[key]["best"] == [0]
    assert doc["scopes"]["overall"]["requests"]["values"][0] >= 10
    table = slobench("compare", "runs/h100", "runs/l4", cwd=emulated)
    assert table.returncode == 0, table.stderr
    assert max(len(line) for line in table.stdout.splitlines()) <= 100
    assert "TPOT p50" in table.stdout and "built-in emulator" in table.stdout


def test_html_page(emulated: Path) -> None:
    code, out, err = invoke("h100", "l4", "--runs-dir", str(emulated / "runs"), "--html",
                            str(emulated / "cmp.html"))
    assert code == 0, err
    page = (emulated / "cmp.html").read_text()
    assert "Comparison page written to" in out
    assert page.lstrip().lower().startswith("<!doctype html") and "l4" in page


@pytest.mark.parametrize(("gate", "code"), [
    ("tpot.p50 > +100%", 1),  # the L4 streams about ten times slower
    ("tpot.p50 < -50%", 0),
    ("coding:tpot.p90 > +20ms", 1),
    ("tpot.p50 > +fast", 2),
])
def test_emulated_gates(emulated: Path, gate: str, code: int) -> None:
    got, out, err = invoke("h100", "l4", "--runs-dir", str(emulated / "runs"),
                           "--fail-if", gate)
    assert got == code, (out, err)
