"""slobench's ServeGen loader and generator against the reference implementation, side by side.

The reference is alibaba/ServeGen (Apache-2.0), run from a checkout OUTSIDE this repository
(``--reference``); none of its code is copied here. Both implementations get the same pool and
the same request, each in its own subprocess so that peak memory is measured cleanly (the child's
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after each phase):

- **load**: the reference's ``ClientPool(Category, model)`` (it reads ``data/<category>/<model>``
  relative to its working directory) vs ``slobench.workload.servegen.load_pool`` with
  ``missing="drop"``: first with an empty, fresh ``cache_dir`` (a full parse, which also writes
  the cache), then again in a new process with that cache (cached load);
- **generation**: ``--duration`` seconds (default one hour) of traffic at the trace's own rate,
  from the start of the trace: the reference's ``get_scaled_rate_fn(view, 1.0)`` +
  ``generate_workload(view, rate_fn, duration, seed=0)`` on ``pool.span(0, duration)`` vs ours
  ``generate_workload(pool.span(0, duration), duration, rate="trace", mode="servegen",
  correlated=True, seed=0)`` (the reference's arrival mode and its one-random-number-per-request
  sampling, so both do the same work); our default ``renewal`` mode is timed as well, and so is
  a streamed variant that writes 600 s record batches to a Parquet file as they are made
  (``iter_workload_batches`` + ``write_workload_parquet``) instead of holding the table;
- **peak memory**: the whole child process (interpreter, imports, loaded pool, generated
  requests), and the same above the process's size right after its imports. The headline is
  the larger of our first-load and cached-load processes, each holding the generated table in
  memory (as the reference holds its list of requests); the Parquet variant is reported apart.

slobench runs single-threaded here as the reference does (its CSV reads use one thread).

The shared data copy lacks some ``chunk-N-dataset.json`` files (see its README). The reference
reads only clients that have a dataset file and would choke on none of them, but to be sure both
sides see the very same files, the benchmark builds a temporary tree ``data/<category>/<model>``
of symlinks holding only the clients with BOTH files, and points both implementations at it.
All files are read once beforehand so both start from a warm OS page cache.

Usage::

    python benchmarks/servegen_reference.py --reference /tmp/servegen-ref \\
        --data /work/shared/data/servegen [--pool language/m-large] [--quick]

``--reference-python`` is the interpreter for the reference (it needs numpy and scipy; default:
/tmp/servegen-venv/bin/python when it exists, else this interpreter). ``--quick`` generates 600 s
and runs ours once instead of ``--repeats`` times. Prints a table and writes
``benchmarks/results/servegen_reference.json``. See docs/servegen-benchmark.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "servegen_reference.json"
DEFAULT_REF_PY = Path("/tmp/servegen-venv/bin/python")
TARGETS = {"load_first_x": 10.0, "load_cached_x": 100.0, "generate_x": 50.0,
           "peak_memory_ratio": 0.25}
_CHUNK = re.compile(r"^chunk-(\d+)-(trace\.csv|dataset\.json)$")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _cpu_s() -> float:
    """CPU seconds of this process, all threads (about the wall time when single-threaded)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------------------------
# Children (each prints one JSON line on stdout)


def child_reference(args: argparse.Namespace) -> dict[str, Any]:
    category, model = args.pool.split("/", 1)
    sys.path.insert(0, str(Path(args.reference).resolve()))
    os.chdir(args.tree)  # the reference reads data/<category>/<model> relative to the cwd
    t0 = time.perf_counter()
    from servegen import Category, ClientPool, generate_workload
    from servegen.utils import get_scaled_rate_fn

    out: dict[str, Any] = {"import_s": time.perf_counter() - t0, "rss_import_mb": _rss_mb()}
    t0, c0 = time.perf_counter(), _cpu_s()
    pool = ClientPool(Category(category), model)
    out["load_s"] = time.perf_counter() - t0
    out["load_cpu_s"] = _cpu_s() - c0
    out["rss_load_mb"] = _rss_mb()
    out["clients"] = len(pool.clients)
    t0, c0 = time.perf_counter(), _cpu_s()
    view = pool.span(0, args.duration)
    rate_fn = get_scaled_rate_fn(view, 1.0)
    out["rate_fn_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    requests = generate_workload(view, rate_fn, duration=int(args.duration), seed=0)
    out["generate_only_s"] = time.perf_counter() - t1
    out["generate_s"] = time.perf_counter() - t0
    out["generate_cpu_s"] = _cpu_s() - c0
    out["rss_peak_mb"] = _rss_mb()
    out["requests"] = len(requests)
    if requests:
        key = "input_tokens" if "input_tokens" in requests[0].data else "text_tokens"
        out["mean_input_tokens"] = sum(r.data[key] for r in requests) / len(requests)
        out["mean_output_tokens"] = sum(r.data["output_tokens"] for r in requests) / len(requests)
    return out


def child_ours(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from slobench.workload.generate import (
        generate_workload,
        iter_workload_batches,
        write_workload_parquet,
    )
    from slobench.workload.servegen import load_pool

    out: dict[str, Any] = {"import_s": time.perf_counter() - t0, "rss_import_mb": _rss_mb()}
    t0, c0 = time.perf_counter(), _cpu_s()
    pool = load_pool(Path(args.tree) / "data" / args.pool, missing="drop",
                     cache_dir=args.cache_dir)
    out["load_s"] = time.perf_counter() - t0
    out["load_cpu_s"] = _cpu_s() - c0
    out["rss_load_mb"] = _rss_mb()
    out["cache"] = pool.report.get("cache")
    out["clients"] = int(pool.n_clients)
    out["missing_dataset"] = len(pool.report.get("missing_dataset") or [])
    t0, c0 = time.perf_counter(), _cpu_s()
    request = {"rate": "trace", "mode": args.mode, "correlated": args.mode == "servegen",
               "seed": 0}
    if args.sink == "parquet":
        # Streamed: 600 s record batches written to a Parquet file as they are made.
        path = Path(args.cache_dir) / "workload.parquet"
        out["requests"] = write_workload_parquet(
            iter_workload_batches(pool.span(0, args.duration), args.duration, batch_s=600.0,
                                  **request), path)
        out["generate_s"] = time.perf_counter() - t0
        out["generate_cpu_s"] = _cpu_s() - c0
        out["rss_peak_mb"] = _rss_mb()
        out["parquet_mb"] = path.stat().st_size / 1e6
        table = pq.read_table(path, columns=["input_tokens", "output_tokens"])  # after the peak
    else:
        table = generate_workload(pool.span(0, args.duration), args.duration, **request)
        out["generate_s"] = time.perf_counter() - t0
        out["generate_cpu_s"] = _cpu_s() - c0
        out["rss_peak_mb"] = _rss_mb()
        out["requests"] = table.num_rows
    if table.num_rows:
        out["mean_input_tokens"] = pc.mean(table.column("input_tokens")).as_py()
        out["mean_output_tokens"] = pc.mean(table.column("output_tokens")).as_py()
    return out


# ---------------------------------------------------------------------------------------------
# Parent


def build_tree(data: Path, pool: str, root: Path) -> dict[str, Any]:
    """``root/data/<pool>`` with symlinks to the clients having both a trace and a dataset."""
    src = data / pool
    if not src.is_dir():
        sys.exit(f"{src}: no such pool directory (give --data and --pool category/model)")
    kinds: dict[int, set[str]] = {}
    for p in src.iterdir():
        if m := _CHUNK.match(p.name):
            kinds.setdefault(int(m[1]), set()).add(m[2])
    both = sorted(n for n, k in kinds.items() if len(k) == 2)
    trace_only = sorted(n for n, k in kinds.items() if k == {"trace.csv"})
    dataset_only = sorted(n for n, k in kinds.items() if k == {"dataset.json"})
    dst = root / "data" / pool
    dst.mkdir(parents=True)
    size = 0
    for n in both:
        for suffix in ("trace.csv", "dataset.json"):
            f = src / f"chunk-{n}-{suffix}"
            (dst / f.name).symlink_to(f.resolve())
            with open(f, "rb") as fh:  # warm the page cache for both sides
                while chunk := fh.read(1 << 22):
                    size += len(chunk)
    return {"source": str(src), "clients_with_both": len(both),
            "trace_only_excluded": [f"chunk-{n}" for n in trace_only],
            "dataset_only_excluded": [f"chunk-{n}" for n in dataset_only],
            "bytes": size}


def run_child(python: str, argv: list[str], timeout: float, env: dict[str, str] | None = None
              ) -> dict[str, Any]:
    cmd = [python, str(Path(__file__).resolve()), *argv]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s", "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail), "wall_s": wall}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_s"] = wall
    return res


def summarize(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    out: dict[str, Any] = {"runs": runs, "repeats": len(ok)}
    if not ok:
        return out
    for k in keys:
        vals = [r[k] for r in ok if k in r]
        if vals:
            out[k] = statistics.median(vals)
            out[f"{k}_best"] = min(vals)
    for k in ("requests", "clients", "cache", "mean_input_tokens", "mean_output_tokens",
              "missing_dataset"):
        if k in ok[-1]:
            out[k] = ok[-1][k]
    return out


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    return f"{v:.0f} MB" if unit == "MB" else f"{v:.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", help="a checkout of github.com/alibaba/ServeGen")
    ap.add_argument("--reference-python", default=None)
    ap.add_argument("--data", default="/work/shared/data/servegen")
    ap.add_argument("--pool", default="language/m-large")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds of traffic to generate (default 3600; 600 with --quick)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each of ours (median)")
    ap.add_argument("--ref-repeats", type=int, default=1, help="runs of the reference")
    ap.add_argument("--ref-timeout", type=float, default=3600.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--child", choices=("reference", "ours"), help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="servegen", help=argparse.SUPPRESS)
    ap.add_argument("--sink", choices=("table", "parquet"), default="table",
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.duration is None:
        args.duration = 600.0 if args.quick else 3600.0
    if args.child:
        fn = child_reference if args.child == "reference" else child_ours
        print(json.dumps(fn(args)))
        return
    if args.quick:
        args.repeats = 1
    ref_py = args.reference_python or (str(DEFAULT_REF_PY) if DEFAULT_REF_PY.exists()
                                       else sys.executable)
    common = ["--pool", args.pool, "--duration", repr(args.duration)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    with tempfile.TemporaryDirectory(prefix="servegen-bench-") as tmp:
        root = Path(tmp)
        tree = build_tree(Path(args.data), args.pool, root / "tree")
        print(f"pool {args.pool}: {tree['clients_with_both']} clients with trace + dataset "
              f"({len(tree['trace_only_excluded'])} trace-only excluded from both sides), "
              f"{tree['bytes'] / 1e6:.0f} MB; {args.duration:g} s at the trace's rate",
              flush=True)
        common += ["--tree", str(root / "tree")]

        ours_first, ours_cached, ours_renewal, ours_parquet = [], [], [], []
        for i in range(args.repeats):
            cache = root / f"cache-{i}"
            cache.mkdir()
            argv = ["--child", "ours", *common, "--cache-dir", str(cache)]
            ours_first.append(run_child(sys.executable, argv, 600, env))
            ours_cached.append(run_child(sys.executable, argv, 600, env))
            ours_renewal.append(run_child(sys.executable, [*argv, "--mode", "renewal"], 600, env))
            ours_parquet.append(run_child(sys.executable, [*argv, "--sink", "parquet"], 600, env))
            print(f"  ours run {i + 1}: first load {fmt(ours_first[-1].get('load_s'), 's')}, "
                  f"cached {fmt(ours_cached[-1].get('load_s'), 's')}, generate "
                  f"{fmt(ours_cached[-1].get('generate_s'), 's')}, peak "
                  f"{fmt(ours_first[-1].get('rss_peak_mb'), 'MB')} / "
                  f"{fmt(ours_cached[-1].get('rss_peak_mb'), 'MB')} / "
                  f"{fmt(ours_parquet[-1].get('rss_peak_mb'), 'MB')} (first / cached / "
                  "Parquet)", flush=True)
        for r in ours_first + ours_cached + ours_renewal + ours_parquet:
            if "error" in r:
                sys.exit(f"our implementation failed: {r['error']}")

        ref_runs: list[dict[str, Any]] = []
        if args.reference:
            for i in range(args.ref_repeats):
                ref_runs.append(run_child(ref_py, ["--child", "reference", *common,
                                                   "--reference", args.reference],
                                          args.ref_timeout, env))
                r = ref_runs[-1]
                print(f"  reference run {i + 1}: " + (r["error"] if "error" in r else
                      f"load {fmt(r['load_s'], 's')}, generate {fmt(r['generate_s'], 's')}"),
                      flush=True)
        shutil.rmtree(root / "tree", ignore_errors=True)

    keys = ("load_s", "generate_s", "rss_peak_mb", "rss_load_mb", "rss_import_mb", "import_s",
            "load_cpu_s", "generate_cpu_s")
    ref = summarize(ref_runs, (*keys, "rate_fn_s", "generate_only_s"))
    first, cached = summarize(ours_first, keys), summarize(ours_cached, keys)
    renewal = summarize(ours_renewal, keys)
    parquet = summarize(ours_parquet, (*keys, "parquet_mb"))

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    ratios: dict[str, Any] = {}
    if "load_s" in ref:
        ref_above = ref["rss_peak_mb"] - ref["rss_import_mb"]
        ours_above = max(first["rss_peak_mb"] - first["rss_import_mb"],
                         cached["rss_peak_mb"] - cached["rss_import_mb"])
        ours_peak = max(first["rss_peak_mb"], cached["rss_peak_mb"])
        ratios = {
            "load_first_x": ratio(ref["load_s"], first["load_s"]),
            "load_cached_x": ratio(ref["load_s"], cached["load_s"]),
            "generate_x": ratio(ref["generate_s"], cached["generate_s"]),
            "generate_renewal_x": ratio(ref["generate_s"], renewal["generate_s"]),
            "peak_memory_ratio": ratio(ours_peak, ref["rss_peak_mb"]),
            "peak_memory_above_imports_ratio": ratio(ours_above, ref_above),
            "peak_memory_parquet_ratio": ratio(parquet["rss_peak_mb"], ref["rss_peak_mb"]),
            "generate_parquet_x": ratio(ref["generate_s"], parquet["generate_s"]),
        }
        ratios["meets_targets"] = {
            k: (ratios[k] <= t if k == "peak_memory_ratio" else ratios[k] >= t)
            for k, t in TARGETS.items()
        }

    rows = [
        ("load, first (parse)", ref.get("load_s"), first["load_s"], "s",
         ratio(ref.get("load_s"), first["load_s"])),
        ("load, cached", ref.get("load_s"), cached["load_s"], "s",
         ratio(ref.get("load_s"), cached["load_s"])),
        ("generate (servegen mode)", ref.get("generate_s"), cached["generate_s"], "s",
         ratio(ref.get("generate_s"), cached["generate_s"])),
        ("generate (ours: renewal)", ref.get("generate_s"), renewal["generate_s"], "s",
         ratio(ref.get("generate_s"), renewal["generate_s"])),
        ("RSS after load, first", ref.get("rss_load_mb"), first["rss_load_mb"], "MB",
         ratio(first["rss_load_mb"], ref.get("rss_load_mb"))),
        ("RSS after load, cached", ref.get("rss_load_mb"), cached["rss_load_mb"], "MB",
         ratio(cached["rss_load_mb"], ref.get("rss_load_mb"))),
        ("peak RSS (process)", ref.get("rss_peak_mb"),
         max(first["rss_peak_mb"], cached["rss_peak_mb"]), "MB", ratios.get("peak_memory_ratio")),
        ("peak RSS, to Parquet", ref.get("rss_peak_mb"), parquet["rss_peak_mb"], "MB",
         ratios.get("peak_memory_parquet_ratio")),
        ("generate, to Parquet", ref.get("generate_s"), parquet["generate_s"], "s",
         ratios.get("generate_parquet_x")),
        ("peak RSS above imports",
         None if "rss_peak_mb" not in ref else ref["rss_peak_mb"] - ref["rss_import_mb"],
         max(first["rss_peak_mb"] - first["rss_import_mb"],
             cached["rss_peak_mb"] - cached["rss_import_mb"]), "MB",
         ratios.get("peak_memory_above_imports_ratio")),
    ]
    print(f"\n{'':26} {'reference':>12} {'slobench':>12} {'ratio':>10}")
    for name, a, b, unit, r in rows:
        shown = "-" if r is None else (f"{r:.3g}x" if unit == "s" else f"{r:.3f}")
        print(f"{name:26} {fmt(a, unit):>12} {fmt(b, unit):>12} {shown:>10}")
    print(f"requests: reference {ref.get('requests', '-')}, ours {cached.get('requests')} "
          f"(servegen mode), {renewal.get('requests')} (renewal)")
    for name, runs in (("reference load", ref_runs), ("ours first load", ours_first)):
        vals = [r["load_s"] for r in runs if "load_s" in r]
        if vals:
            print(f"spread, {name}: {min(vals):.2f}..{max(vals):.2f} s")
    for name, runs in (("reference generate", ref_runs), ("ours generate", ours_cached)):
        vals = [r["generate_s"] for r in runs if "generate_s" in r]
        if vals:
            print(f"spread, {name}: {min(vals):.3f}..{max(vals):.3f} s")
    if ref_runs and "load_s" not in ref:
        print(f"reference failed: {ref_runs[-1].get('error')}")
    if ratios:
        print("targets (load 10x / cached 100x / generate 50x / memory <= 0.25): "
              + ", ".join(f"{k} {'met' if v else 'MISSED'}"
                          for k, v in ratios["meets_targets"].items()))

    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "reference_python": ref_py,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "pool": args.pool,
        "duration_s": args.duration,
        "request": "trace's own rate from t=0; servegen arrival mode, correlated fields, seed 0",
        "tree": tree,
        "reference": ref,
        "ours_first_load": first,
        "ours_cached_load": cached,
        "ours_renewal": renewal,
        "ours_parquet": parquet,
        "ratios": ratios,
        "targets": TARGETS,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
