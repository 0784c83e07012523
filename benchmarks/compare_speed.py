"""How fast ``slobench compare`` is on large runs: two simulated runs of the same synthetic
workload (default 100,000 requests, output lengths as ``slobench run``'s default, mean 128
tokens, three classes) on an H100 and an H200; times ``compare_runs`` (2,000 resamples) and
appends to results/compare_speed.json.

    .venv/bin/python benchmarks/compare_speed.py [--requests 100000] [--output-tokens SPEC]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from slobench.benchmark import run_simulation
from slobench.engine.config import EngineConfig
from slobench.report.compare import compare_runs
from slobench.slo.metrics import derive
from slobench.store.rundir import RunDir
from slobench.workload.synthetic import synthetic_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--output-tokens", default="lognormal:mean=128,cv=0.6,max=1024")
    args = ap.parse_args()
    duration = args.requests / args.rate
    workload = synthetic_workload(rate=args.rate, duration_s=duration, seed=0,
                                  apps="chatbot:0.6,coding:0.3,summarization:0.1",
                                  output_tokens=args.output_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "runs"
        paths = []
        for gpu in ("h100", "h200"):
            run_simulation(workload, EngineConfig(model="llama-3.1-8b", gpu=gpu), out=out,
                           run_id=gpu)
            paths.append(out / gpu)
        records, _, _ = RunDir(paths[0]).load_records()
        tokens = int(derive(records).n_token_times.sum())
        walls = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            cmp = compare_runs(paths)
            walls.append(time.perf_counter() - t)
        t = time.perf_counter()
        for p in paths:  # the floor: reading and deriving the records, nothing else
            derive(RunDir(p).load_records()[0])
        load_s = time.perf_counter() - t
    result = {
        "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
        "output_tokens": args.output_tokens, "requests_per_run": records.num_rows,
        "tokens_per_run": tokens, "classes": cmp.classes, "resamples": cmp.resamples,
        "wall_s_median": statistics.median(walls), "wall_s_best": min(walls),
        "load_and_derive_s": load_s,
    }
    print(json.dumps(result, indent=2))
    dest = Path(__file__).with_name("results") / "compare_speed.json"
    cases = json.loads(dest.read_text()) if dest.exists() else []
    dest.write_text(json.dumps([*cases, result], indent=2) + "\n")


if __name__ == "__main__":
    main()
