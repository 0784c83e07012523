"""Replica planning: the fewest replicas on the simulator where the answer is known, prices,
and the CLI over a small what-if grid."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from helpers import LinearCost
from slobench.cli.main import app
from slobench.engine.prices import EXAMPLE_PRICES_PER_GPU_HOUR, load_prices
from slobench.engine.scheduler import Scheduler, SchedulerConfig
from slobench.engine.simulator import simulate
from slobench.errors import UserError
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
