"""How much faster than real time does ``slobench simulate`` run?

Simulates Llama-3.1-8B on one H100 (``RooflineCostModel``, vLLM-default scheduler settings:
8192-token budget, 256 sequences, chunked prefill, prefix caching) over synthetic Poisson
workloads (lognormal lengths, mean 512 tokens in / 256 out, cv 1) lasting ``--duration`` seconds
(default 300), at 20 req/s and at 3x that (overload: the queue grows the whole run). For each,
it reports the wall time of ``slobench.engine.simulator.simulate`` (the workload is built
beforehand), simulated seconds per wall second (``sim_end_s / wall``: the virtual time until the
last request finished), requests per wall second, engine steps per wall second, and the
simulated latencies for context. Each case runs once to warm up, then ``--repeats`` times
(default 5); the median and the best are reported. ``--single-step`` also times the simulator
with fast-forward off.

Usage::

    python benchmarks/simulator_speed.py                 # about 10-20 s
    python benchmarks/simulator_speed.py --quick         # 60 s workloads, 2 repeats

Prints a table and writes ``benchmarks/results/simulator_speed.json``. See docs/simulator.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from slobench.engine.scheduler import Scheduler, SchedulerConfig
from slobench.engine.simulator import simulate
from slobench.workload.synthetic import synthetic_workload

TARGET_X = 1000.0


def cost_model() -> tuple[Any, str]:
    from slobench.engine.costmodel import RooflineCostModel

    return RooflineCostModel("llama-3.1-8b", "h100"), "RooflineCostModel(llama-3.1-8b, h100, tp=1)"


def run_case(rate: float, duration: float, repeats: int, fast_forward: bool) -> dict[str, Any]:
    cost, cost_name = cost_model()
    config = SchedulerConfig()
    wl = synthetic_workload(
        rate=rate,
        duration_s=duration,
        input_tokens="lognormal:mean=512,cv=1,max=8192",
        output_tokens="lognormal:mean=256,cv=1,max=4096",
        seed=0,
    )
    walls: list[float] = []
    res = simulate(wl, lambda: Scheduler(cost, config), fast_forward=fast_forward)  # warm-up
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = simulate(wl, lambda: Scheduler(cost, config), fast_forward=fast_forward)
        walls.append(time.perf_counter() - t0)
    rec = res.records
    first = rec["first_token_s"].to_numpy(zero_copy_only=False)
    sched = rec["scheduled_s"].to_numpy()
    done = rec["done_s"].to_numpy()
    out = rec["output_tokens"].to_numpy()
    ttft = first - sched
    many = out > 1
    tpot = (done[many] - first[many]) / (out[many] - 1)
    med = statistics.median(walls)
    best = min(walls)
    st = res.stats
    return {
        "rate_rps": rate,
        "workload_s": duration,
        "requests": rec.num_rows,
        "output_tokens": int(out.sum()),
        "fast_forward": fast_forward,
        "cost_model": cost_name,
        "sim_end_s": res.sim_end_s,
        "steps": st["steps"],
        "preemptions": st["preemptions"],
        "max_waiting": st["max_waiting"],
        "wall_s_median": med,
        "wall_s_best": best,
        "x_realtime_median": res.sim_end_s / med,
        "x_realtime_best": res.sim_end_s / best,
        "requests_per_wall_s_median": rec.num_rows / med,
        "steps_per_wall_s_median": st["steps"] / med,
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "ttft_p99_s": float(np.percentile(ttft, 99)),
        "tpot_p50_s": float(np.percentile(tpot, 50)),
        "tpot_p99_s": float(np.percentile(tpot, 99)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=20.0, help="base load, req/s (default 20)")
    ap.add_argument("--overload", type=float, default=3.0, help="overload factor (default 3)")
    ap.add_argument("--duration", type=float, default=300.0, help="workload seconds (300)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--single-step", action="store_true", help="also time fast-forward off")
    ap.add_argument("--quick", action="store_true", help="60 s workloads, 2 repeats")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "simulator_speed.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.repeats = 60.0, 2

    cases = []
    for rate in (args.rate, args.rate * args.overload):
        modes = (True, False) if args.single_step else (True,)
        for ff in modes:
            c = run_case(rate, args.duration, args.repeats, ff)
            cases.append(c)
            print(
                f"{rate:6.1f} req/s {'ff' if ff else 'single':6s} "
                f"{c['requests']:6d} req  sim {c['sim_end_s']:8.1f} s  "
                f"wall {c['wall_s_median']:6.3f} s (best {c['wall_s_best']:.3f})  "
                f"{c['x_realtime_median']:7.0f}x real time (best {c['x_realtime_best']:.0f}x)  "
                f"{c['requests_per_wall_s_median']:8.0f} req/wall-s  "
                f"{c['steps_per_wall_s_median']:8.0f} steps/wall-s  "
                f"TTFT p50 {c['ttft_p50_s'] * 1e3:.0f} ms p99 {c['ttft_p99_s'] * 1e3:.0f} ms  "
                f"TPOT p50 {c['tpot_p50_s'] * 1e3:.1f} ms",
                flush=True,
            )
    base = cases[0]
    ok = base["x_realtime_median"] >= TARGET_X
    print(f"target >= {TARGET_X:.0f}x real time at {args.rate:g} req/s: "
          f"{'met' if ok else 'NOT met'} ({base['x_realtime_median']:.0f}x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "target_x_realtime": TARGET_X,
        "cases": cases,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
