"""Capacity search on the simulator where the answer is known analytically, the saturation
test, and the CLI (simulated trials; a live run is the same loop over run_benchmark)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from helpers import LinearCost
from slobench.cli.capacity import scaled_rate
from slobench.cli.main import app
from slobench.engine.scheduler import Scheduler, SchedulerConfig
from slobench.engine.simulator import simulate
from slobench.errors import UserError
from slobench.slo.capacity import find_capacity, is_saturated, trial_from_summary
from slobench.slo.spec import parse_slo
from slobench.slo.summary import summarize
from slobench.workload.synthetic import synthetic_workload

STEP_S, OUT, DURATION = 0.01, 10, 60.0


def evaluate_on_sim(load: float, base_rps: float = 1.0):
    """One replica that serves one request at a time; every step takes STEP_S, so a request
    of OUT output tokens takes OUT steps: the server carries exactly 1 / (OUT * STEP_S) req/s."""
    wl = synthetic_workload(process="constant", rate=base_rps * load, duration_s=DURATION,
                            input_tokens=64, output_tokens=OUT, seed=1)
    cost = LinearCost(a=STEP_S, b=0.0, c=0.0, d=0.0)
    config = SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=1024)
    res = simulate(wl, lambda: Scheduler(cost, config))
    window = (0.0, DURATION)
    summary = summarize(res.records, parse_slo("*: ttft<=50ms, attain>=90%"), window=window)
    return trial_from_summary(load, summary, saturated=is_saturated(res.records, window))


def test_capacity_matches_the_analytic_service_rate():
    result = find_capacity(evaluate_on_sim, start=1.0, rel_tol=0.02)
    analytic = 1.0 / (OUT * STEP_S)  # 10 req/s
    assert result.capacity_rps is not None
    # a finite trial cannot see a very slight overload (its queue grows too slowly to break
    # the SLO or to look saturated within 60 s): within 3% above, 5% below
    assert 0.95 * analytic <= result.capacity_rps <= analytic * 1.03
    lo, hi = result.bracket
    assert hi / lo - 1 <= 0.02
    # the curve holds every trial: passes below the capacity, fails (saturated) above it
    curve = result.curve()
    assert [t.load for t in curve] == sorted(t.load for t in curve)
    assert all(t.passed for t in curve if t.load <= lo)
    assert all(not t.passed for t in curve if t.load >= hi)
    assert any(t.saturated for t in curve if not t.passed)


def test_search_from_above_halves_down():
    result = find_capacity(evaluate_on_sim, start=64.0, rel_tol=0.05)
    assert result.capacity_rps is not None and 9.0 <= result.capacity_rps <= 10.3
    assert result.trials[0].load == 64.0 and not result.trials[0].passed


def test_saturation_is_seen_only_when_latency_grows_without_bound():
    assert evaluate_on_sim(20.0).saturated  # 20 req/s offered to a 10 req/s server
    assert not evaluate_on_sim(9.0).saturated


def test_no_load_passes_is_reported():
    def never(load: float):
        t = evaluate_on_sim(load)
        t.passed = False
        return t

    result = find_capacity(never, start=1.0, min_load=0.2)
    assert result.capacity_rps is None and "no load passed" in result.stopped


def test_scaled_rate_forms():
    assert scaled_rate("10", 2.5) == "25"
    assert scaled_rate("trace", 3) == "trace*3"
    assert scaled_rate("trace*2", 1.5) == "trace*3"
    assert scaled_rate("peak:50", 0.5) == "peak:25"
    with pytest.raises(UserError, match="steady rate"):
        scaled_rate("ramp:1..20/60s", 2)


def test_cli_on_the_simulator(tmp_path):
    r = CliRunner().invoke(app, ["capacity", "--rate", "8", "-d", "20s", "--tolerance", "0.2",
                                 "--input-tokens", "256", "--output-tokens", "64",
                                 "-o", str(tmp_path), "-q"])
    assert r.exit_code == 0, r.output
    assert "Capacity:" in r.output and "req/s" in r.output
    (folder,) = tmp_path.glob("capacity-*")
    report = json.loads((folder / "capacity.json").read_text())
    assert report["capacity_rps"] > 8 * 0.9 and len(report["curve"]) >= 3
    assert (folder / "capacity.html").stat().st_size > 10_000
    trials = sorted(p.name for p in folder.iterdir() if p.name.startswith("trial-"))
    assert len(trials) == len(report["curve"])  # every trial is a run directory


def test_cli_bad_rate_is_one_line(tmp_path):
    r = CliRunner().invoke(app, ["capacity", "--rate", "ramp:1..5/10s", "-o", str(tmp_path)])
    assert r.exit_code != 0
    assert "steady rate" in r.output and "Traceback" not in r.output


def test_saturation_with_unanswered_requests():
    sched = [0.0, 1.0, 2.0, 7.0, 8.0, 9.0]
    records = pa.table({"scheduled_s": sched,
                        "first_token_s": pa.array([0.1, 1.1, 2.1, None, None, None],
                                                  pa.float64())})
    assert is_saturated(records, (0.0, 9.5))
