"""How fast ``slobench fit`` fits a pool: synthetic logs of 1M and 5M rows (100 clients,
Gamma and Weibull gaps, 14 h of 600 s windows); prints rows/s, writes results/fit_speed.json.

    .venv/bin/python benchmarks/fit_speed.py [--rows 1000000 5000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slobench.workload.fit import fit_pool


def synthetic_log(n: int, seed: int = 0, clients: int = 100, span_s: float = 50400.0
                  ) -> pa.Table:
    """``n`` requests over ``span_s``: client shares Zipf-like, each client a renewal process
    (half Gamma CV 2, half Weibull shape 0.7), lognormal lengths."""
    rng = np.random.default_rng(seed)
    share = 1.0 / np.arange(1, clients + 1)
    share /= share.sum()
    per = rng.multinomial(n, share)
    ts, cs = [], []
    for c, m in enumerate(per):
        if m == 0:
            continue
        g = rng.gamma(0.25, 4.0, m) if c % 2 == 0 else rng.weibull(0.7, m)
        t = np.cumsum(g)
        ts.append(t / t[-1] * span_s)
        cs.append(np.full(m, c))
    t = np.concatenate(ts)
    c = np.concatenate(cs)
    order = np.argsort(t, kind="stable")
    return pa.table({
        "arrival_s": t[order],
        "client_id": pa.array([f"c{i}" for i in range(clients)])
        .take(pa.array(c[order])),
        "input_tokens": np.rint(rng.lognormal(6, 1, n)).astype(np.int64),
        "output_tokens": np.rint(rng.lognormal(4.5, 0.8, n)).astype(np.int64),
    })


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).with_name("results") / "fit_speed.json")
    args = ap.parse_args()
    results = []
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "slobench-fit-speed.parquet"
    for n in args.rows:
        pq.write_table(synthetic_log(n), tmp)
        t0 = time.perf_counter()
        res = fit_pool(tmp)
        dt = time.perf_counter() - t0
        r = res.report
        row = {"rows": n, "seconds": round(dt, 3), "rows_per_s": round(n / dt),
               "clients": r["clients"], "client_windows_fitted": r["client_windows_fitted"],
               "families": r["families"], "median_ks": r["median_ks"]}
        results.append(row)
        print(f"{n:>10,} rows: {dt:6.2f} s  {n / dt:>12,.0f} rows/s  "
              f"({r['clients']} clients, {r['client_windows_fitted']} windows fitted, "
              f"families {r['families']})")
    tmp.unlink(missing_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                    "cpus": os.cpu_count(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
