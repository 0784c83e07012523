"""Replica planning: the fewest replicas on the simulator where the answer is known, prices,
and the CLI over a small what-if grid."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from helpers import LinearCost
from slobench.cli.main import app
from slobench.engine.prices import EXAMPLE_PRICES_PER_GPU_HOUR, load_prices
from slobench.engine.scheduler import Scheduler, SchedulerConfig
from slobench.engine.simulator import simulate
from slobench.errors import UserError
from slobench.planning import replica_schedule
from slobench.slo.capacity import is_saturated, min_replicas, trial_from_summary
from slobench.slo.spec import parse_slo
from slobench.slo.summary import summarize
from slobench.workload.synthetic import synthetic_workload


@pytest.mark.parametrize("rate,want", [(5.0, 1), (25.0, 3), (61.0, 7)])
def test_fewest_replicas_match_the_analytic_answer(rate, want):
    # each replica serves one request at a time, 10 steps of 10 ms: 10 req/s per replica;
    # round robin over constant arrivals gives each replica rate / n
    wl = synthetic_workload(process="constant", rate=rate, duration_s=30.0, input_tokens=64,
                            output_tokens=10, seed=1)
    cost = LinearCost(a=0.01, b=0.0, c=0.0, d=0.0)
    config = SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=1024)
    slos = parse_slo("*: ttft<=50ms, attain>=90%")

    def evaluate(n: int):
        res = simulate(wl, lambda: Scheduler(cost, config), replicas=n, router="round_robin")
        window = (0.0, 30.0)
        return trial_from_summary(float(n), summarize(res.records, slos, window=window),
                                  saturated=is_saturated(res.records, window))

    best, trials = min_replicas(evaluate, max_replicas=16)
    assert best == want
    assert all(t.passed == (t.load >= want) for t in trials)


def test_prices_file_overrides_and_errors(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"h100": 2.0, "L40S": 0.9}))
    prices = load_prices(f)
    assert prices["h100-sxm"] == 2.0 and prices["l40s"] == 0.9
    assert prices["a100-80gb"] == EXAMPLE_PRICES_PER_GPU_HOUR["a100-80gb"]
    f.write_text(json.dumps({"h100": "cheap"}))
    with pytest.raises(UserError, match="dollars"):
        load_prices(f)
    f.write_text("{nope")
    with pytest.raises(UserError, match="not valid"):
        load_prices(f)


def test_cli_grid(tmp_path):
    r = CliRunner().invoke(app, ["plan", "--rate", "30", "-d", "60s", "--gpu", "h100,l40s",
                                 "--tp", "1", "-j", "1", "-o", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "Cheapest:" in r.output
    (folder,) = tmp_path.glob("plan-*")
    plan = json.loads((folder / "plan.json").read_text())
    assert {x["gpu"] for x in plan["results"]} == {"h100-sxm", "l40s"}
    assert all(x["replicas"] >= 1 and x["dollars_per_hour"] > 0 for x in plan["results"])
    # sorted cheapest first
    costs = [x["dollars_per_hour"] for x in plan["results"]]
    assert costs == sorted(costs)


def test_cli_bad_grid_value(tmp_path):
    r = CliRunner().invoke(app, ["plan", "--tp", "one", "-o", str(tmp_path)])
    assert r.exit_code != 0 and "whole number" in r.output and "Traceback" not in r.output


def test_scaling_out_that_cannot_help_stops_early():
    from slobench.slo.capacity import Trial

    calls = []

    def evaluate(n: int) -> Trial:  # an SLO no replica count can meet, never overloaded
        calls.append(n)
        return Trial(load=n, offered_rps=1.0, attainment=0.5, goodput_rps=0.5, passed=False)

    best, trials = min_replicas(evaluate, max_replicas=256)
    assert best is None and calls == [1, 2] and len(trials) == 2


def _steps(rates: list[float], span_s: float) -> pa.Table:
    """Constant arrivals whose rate steps every ``span_s``: a tiny 'diurnal' workload."""
    parts = []
    for i, rate in enumerate(rates):
        wl = synthetic_workload(process="constant", rate=rate, duration_s=span_s,
                                input_tokens=64, output_tokens=10, seed=i)
        ids = pa.array([f"w{i}-{x}" for x in wl["request_id"].to_pylist()])
        wl = wl.set_column(wl.schema.get_field_index("request_id"), "request_id", ids)
        arr = pc.add(wl["arrival_s"], i * span_s)
        parts.append(wl.set_column(wl.schema.get_field_index("arrival_s"), "arrival_s", arr))
    return pa.concat_tables(parts)


def test_replica_schedule_follows_the_load_window_by_window():
    # 10 req/s per replica (one request at a time, 100 ms each): the rate steps 5, 25, 61, 15
    # need 1, 3, 7, 2 replicas; the peak window holds most requests, so one static count must
    # serve the peak: 7 replicas all along, twice the replica-hours.
    wl = _steps([5.0, 25.0, 61.0, 15.0], 30.0)
    cost = LinearCost(a=0.01, b=0.0, c=0.0, d=0.0)
    config = SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=1024)
    plan = replica_schedule(wl, lambda: Scheduler(cost, config),
                            parse_slo("*: ttft<=50ms, attain>=90%"), router="round_robin",
                            horizon_s=120.0, window_s=30.0, max_replicas=16)
    assert [w["replicas"] for w in plan["schedule"]] == [1, 3, 7, 2]
    assert all(w["passed"] for w in plan["schedule"]) and plan["windows_failed"] == 0
    assert plan["replica_hours"] == pytest.approx((1 + 3 + 7 + 2) * 30 / 3600)
    assert plan["static_replicas"] == 7 and plan["static_windows_failed"] == 0
    assert plan["static_replica_hours"] == pytest.approx(4 * 7 * 30 / 3600)


def test_simulator_routes_only_to_the_replicas_in_rotation():
    wl = _steps([20.0, 20.0], 10.0)
    cost = LinearCost(a=0.001, b=0.0, c=0.0, d=0.0)
    res = simulate(wl, lambda: Scheduler(cost, SchedulerConfig()), replicas=4,
                   router="round_robin", replica_schedule=[(0.0, 1), (10.0, 4)])
    per = [r["generation_tokens"] for r in res.stats["replicas"]]
    # the first 10 s (200 requests) all on replica 0; then round robin over all four
    assert per[1] == per[2] == per[3] == 50 * 10 and per[0] == 250 * 10


def test_cli_windows(tmp_path):
    r = CliRunner().invoke(app, ["plan", "--rate", "20", "-d", "120s", "--windows", "60s",
                                 "--gpu", "h100", "-j", "1", "-o", str(tmp_path)])
    assert r.exit_code == 0, r.output
    (folder,) = tmp_path.glob("plan-*")
    plan = json.loads((folder / "plan.json").read_text())
    (res,) = plan["results"]
    assert len(res["schedule"]) == 2 and res["static_replicas"] >= 1
    assert res["dollars_per_hour"] > 0 and (folder / "plan.html").stat().st_size > 100_000
    r = CliRunner().invoke(app, ["plan", "-d", "60s", "--windows", "2min", "-o", str(tmp_path)])
    assert r.exit_code != 0 and "shorter window" in r.output
