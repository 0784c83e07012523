"""How much does slobench's load-generating client cost, and how fast can one process pace?

Drives ``slobench.client.runner.Runner`` (the client behind ``slobench run``) against the scripted
OpenAI-compatible server running in its own subprocess with ``ttft_s=0``, so everything measured
in *this* process is client work: payload building, HTTP, SSE parsing, token counting, the journal.
Two servers are used: "burst" (``tpot_s=0``: a whole answer is written at once, so many SSE
chunks arrive in one network read) and "paced" (``tpot_s=0.001``: each chunk is written on its
own, as a real server does, so about one chunk arrives per read).

1. Client CPU per request and per streamed token. Closed loop, 16 users, no think time (the
   server is saturated), a fixed number of requests at 1 and 256 output tokens, one token per
   chunk. Process CPU time (user + system, ``getrusage``) around ``Runner.run`` is fitted to
   ``cpu = a*requests + b*tokens``: ``a`` is µs per request, ``b`` µs per streamed token (for the
   burst and the paced server). Each run is repeated (3 times) and the median is used.
2. Send lag in open loop. Poisson arrivals at fixed rates (default 50, 200, 500 req/s) with
   16-token answers from the paced server: send lag ``sent_s - scheduled_s - queue_s`` per request
   (p50 / p99 / max), client CPU utilisation (whole process), the health check's CPU (the
   runner's samples: process CPU less the measured cost of idle polling), the share of the run
   the dispatcher
   spent in its busy-poll before sends (``RunOutcome.spin_s``; network callbacks run inside it),
   and whether slobench's own health check (``slobench.slo.health.assess``, default 5 ms p99 lag
   and 90% CPU) calls the run valid. Each rate is also run with a pacing-only backend (no HTTP at
   all) to show the floor the operating system's wake-up latency sets on the same machine at the
   same moment. ``--live-display`` runs these with the live progress display ``slobench run``
   shows on a terminal (drawing into a string).
3. Optional (``--display-ab N``): the live display's cost, side by side. At each of
   ``--display-rates`` (default 200, 500 req/s) the open-loop run is repeated N times with the
   display off and N times with it on, alternating, in the same session.

Usage::

    python benchmarks/client_overhead.py            # full: about 80 s
    python benchmarks/client_overhead.py --quick    # smoke: about 20 s
    python benchmarks/client_overhead.py --display-ab 3   # plus display off/on: +2.5 min

Prints tables and writes ``benchmarks/results/client_overhead.json``. See docs/client-overhead.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import io
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from slobench.client.backends.base import Backend
from slobench.client.backends.openai import OpenAIBackend
from slobench.client.backends.presets import get_preset
from slobench.client.journal import Journal, read_journal
from slobench.client.pacing import LoadPlan
from slobench.client.result import RequestResult
from slobench.client.runner import Progress, Runner, Timeouts, new_event_loop
from slobench.clock import RunClock
from slobench.engine.scripted import ScriptedServerProcess
from slobench.prompts.synth import make_synthesizer
from slobench.report.live import LiveDisplay
from slobench.slo.health import DEFAULT_CPU_THRESHOLD, DEFAULT_LAG_THRESHOLD_S, assess, send_lags
from slobench.slo.spec import parse_slo
from slobench.slo.stats import percentiles
from slobench.store.rundir import library_versions
from slobench.workload.synthetic import synthetic_workload

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "client_overhead.json"
MODEL = "scripted-model"
BURST = {"ttft_s": 0.0, "tpot_s": 0.0, "tokens_per_chunk": 1}
PACED = {"ttft_s": 0.0, "tpot_s": 0.001, "tokens_per_chunk": 1}
INPUT_TOKENS = 128  # prompt length of every request (about one word per token)
TIMEOUTS = Timeouts(request_s=60.0, connect_s=10.0, stall_s=30.0)
LAG_LIMIT_MS = DEFAULT_LAG_THRESHOLD_S * 1e3


@dataclass(frozen=True)
class Settings:
    users: int
    short_tokens: int
    long_tokens: int
    short_requests: int
    long_requests: int
    paced_requests: int
    repeats: int
    rates: tuple[float, ...]
    rate_duration_s: float
    baseline_duration_s: float
    rate_output_tokens: int


FULL = Settings(users=16, short_tokens=1, long_tokens=256, short_requests=10000,
                long_requests=1000, paced_requests=240, repeats=3, rates=(50.0, 200.0, 500.0),
                rate_duration_s=10.0, baseline_duration_s=5.0, rate_output_tokens=16)
QUICK = replace(FULL, short_requests=1000, long_requests=100, paced_requests=48,
                rate_duration_s=3.0, baseline_duration_s=1.5)


# -- one client run ------------------------------------------------------------------------------


class PacingOnlyBackend:
    """Builds the same payloads as the real backend but sends nothing: a request is "sent" and
    done the moment the dispatcher starts it. Isolates scheduling (timers, the OS waking the
    process) from HTTP work."""

    name = "pacing-only"

    def __init__(self, real: OpenAIBackend) -> None:
        self.real = real
        self.url = real.url

    def prepare(self, prompt: str, output_tokens: int) -> bytes:
        return self.real.prepare(prompt, output_tokens)

    async def send(self, session: aiohttp.ClientSession, payload: bytes, result: RequestResult,
                   clock: RunClock) -> None:
        result.sent_s = result.first_token_s = result.done_s = clock.now()
        result.status = "ok"


@dataclass
class RunResult:
    requests: int
    ok: int
    tokens: int
    wall_s: float
    cpu_s: float
    cpu_user_s: float
    cpu_sys_s: float
    spin_s: float
    cpu_samples: list[float]
    records: pa.Table

    def tokens_per_read(self) -> float:
        """Streamed tokens per network read: tokens sharing one arrival time came in one read."""
        reads = sum(len(set(t)) for t in self.records["token_times"].to_pylist())
        return self.tokens / reads if reads else float("nan")


@contextlib.contextmanager
def live_display(duration_s: float | None) -> Iterator[Callable[[Progress], None]]:
    """The progress display ``slobench run`` shows on a terminal, drawing into a string. Its
    ``update`` is the runner's progress callback; its SLO evaluation runs on its own thread."""
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with LiveDisplay(console, parse_slo(None), total=None, duration_s=duration_s) as display:
        yield display.update


def drive(backend: Backend, workload: pa.Table, plan: LoadPlan, journal_path: Path, *,
          display: bool = False) -> RunResult:
    """Run the client once; CPU and wall time are taken around ``Runner.run`` only. Without the
    display no progress callback is given, as with ``slobench run --quiet``."""
    with contextlib.ExitStack() as stack:
        on_progress = stack.enter_context(live_display(plan.duration_s)) if display else None
        return _drive(backend, workload, plan, journal_path, on_progress)


def _drive(backend: Backend, workload: pa.Table, plan: LoadPlan, journal_path: Path,
           on_progress: Callable[[Progress], None] | None) -> RunResult:
    journal = Journal(journal_path)
    loop = new_event_loop()
    try:
        runner = Runner(workload, backend, plan, journal=journal, timeouts=TIMEOUTS,
                        synthesizer=make_synthesizer(), on_progress=on_progress)
        gc.collect()
        r0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        outcome = loop.run_until_complete(runner.run(drain_timeout_s=60.0))
        r1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    finally:
        loop.close()
    records, torn = read_journal(journal_path)
    if torn:
        raise RuntimeError(f"{journal_path}: {torn} torn journal lines")
    ok = records.filter(pc.equal(records["status"], "ok"))
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    return RunResult(
        requests=records.num_rows,
        ok=ok.num_rows,
        tokens=int(pc.sum(ok["output_tokens"]).as_py() or 0),
        wall_s=wall1 - wall0,
        cpu_s=user + system,
        cpu_user_s=user,
        cpu_sys_s=system,
        spin_s=outcome.spin_s,
        cpu_samples=outcome.cpu_samples,
        records=records,
    )


def first_error(records: pa.Table) -> str:
    bad = records.filter(pc.not_equal(records["status"], "ok"))
    if not bad.num_rows:
        return ""
    return f"{bad['status'][0].as_py()}: {bad['error'][0].as_py()}"


def backend_for(base_url: str) -> OpenAIBackend:
    return OpenAIBackend(base_url, model=MODEL, preset=get_preset("generic"))


# -- 1. CPU per request and per token ------------------------------------------------------------


def closed_loop_run(base_url: str, tmp: Path, name: str, n: int, tokens: int,
                    users: int) -> RunResult:
    wl = synthetic_workload(process="constant", rate=1000.0, n_requests=n,
                            input_tokens=INPUT_TOKENS, output_tokens=tokens, seed=0)
    plan = LoadPlan(mode="closed", users=users, think_s=0.0, max_requests=n)
    res = drive(backend_for(base_url), wl, plan, tmp / f"{name}.jsonl")
    if res.ok != n or res.tokens != n * tokens:
        raise RuntimeError(f"{name}: {res.ok}/{n} ok, {res.tokens} tokens (want {n * tokens}); "
                           f"first error: {first_error(res.records)}")
    return res


def measure_cpu(burst_url: str, paced_url: str, tmp: Path, s: Settings,
                console: Console) -> dict[str, Any]:
    cases = (
        ("short", burst_url, s.short_requests, s.short_tokens),
        ("long_burst", burst_url, s.long_requests, s.long_tokens),
        ("long_paced", paced_url, s.paced_requests, s.long_tokens),
    )
    # Warm-up: imports, first connections and allocator growth stay out of the measurement.
    for kind, url, n, tokens in cases:
        closed_loop_run(url, tmp, f"warmup-{kind}", max(n // 10, 16), tokens, s.users)
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind, *_ in cases}
    for rep in range(s.repeats):
        for kind, url, n, tokens in cases:
            r = closed_loop_run(url, tmp, f"{kind}-{rep}", n, tokens, s.users)
            row = {
                "requests": r.requests, "output_tokens": tokens, "tokens": r.tokens,
                "wall_s": r.wall_s, "cpu_s": r.cpu_s, "cpu_user_s": r.cpu_user_s,
                "cpu_sys_s": r.cpu_sys_s,
                "cpu_us_per_request": r.cpu_s / r.requests * 1e6,
                "cpu_utilisation": r.cpu_s / r.wall_s,
                "requests_per_s": r.requests / r.wall_s,
                "tokens_per_s": r.tokens / r.wall_s,
                "tokens_per_read": r.tokens_per_read(),
            }
            runs[kind].append(row)
            console.print(f"  [dim]{kind:10} rep {rep + 1}: {n:5} req × {tokens:3} tok in "
                          f"{r.wall_s:5.2f} s, CPU {r.cpu_s:5.2f} s = "
                          f"{row['cpu_us_per_request']:6.0f} µs/req, "
                          f"{row['cpu_utilisation']:4.0%} of a core[/dim]")

    def med(kind: str, key: str) -> float:
        return statistics.median(row[key] for row in runs[kind])

    span = s.long_tokens - s.short_tokens

    def fit(c_short: float, c_long: float) -> tuple[float, float]:
        """Per request: c = a + b * tokens; two lengths give a and b."""
        b = (c_long - c_short) / span
        return c_short - b * s.short_tokens, b

    c = {kind: med(kind, "cpu_us_per_request") for kind in runs}
    a, b_burst = fit(c["short"], c["long_burst"])
    _, b_paced = fit(c["short"], c["long_paced"])
    fits = []
    for short, burst, paced in zip(runs["short"], runs["long_burst"], runs["long_paced"],
                                   strict=True):
        ai, bi = fit(short["cpu_us_per_request"], burst["cpu_us_per_request"])
        fits.append({"us_per_request": ai, "us_per_token_burst": bi,
                     "us_per_token_paced": fit(short["cpu_us_per_request"],
                                               paced["cpu_us_per_request"])[1]})
    return {
        "setup": {"mode": "closed", "users": s.users, "think_s": 0.0,
                  "input_tokens": INPUT_TOKENS, "tokens_per_chunk": 1, "repeats": s.repeats,
                  "cases": {kind: {"server": "paced" if url == paced_url else "burst",
                                   "requests": n, "output_tokens": tokens}
                            for kind, url, n, tokens in cases}},
        "runs": runs,
        "median_cpu_us_per_request": c,
        "us_per_request": a,
        "us_per_token_burst": b_burst,
        "us_per_token_paced": b_paced,
        "fit_per_repeat": fits,
        "requests_per_s_short": med("short", "requests_per_s"),
        "tokens_per_s_burst": med("long_burst", "tokens_per_s"),
        "tokens_per_s_paced": med("long_paced", "tokens_per_s"),
        "tokens_per_read_burst": med("long_burst", "tokens_per_read"),
        "tokens_per_read_paced": med("long_paced", "tokens_per_read"),
    }


# -- 2. open-loop send lag -----------------------------------------------------------------------


def open_loop_run(backend: Backend, tmp: Path, name: str, rate: float, duration_s: float,
                  output_tokens: int, display: bool = False) -> dict[str, Any]:
    wl = synthetic_workload(process="poisson", rate=rate, duration_s=duration_s,
                            input_tokens=INPUT_TOKENS, output_tokens=output_tokens, seed=1)
    r = drive(backend, wl, LoadPlan(mode="open", duration_s=duration_s), tmp / f"{name}.jsonl",
              display=display)
    lag = percentiles(send_lags(r.records), (50, 90, 99))
    health = assess(r.records, r.cpu_samples)
    return {
        "rate_rps": rate,
        "duration_s": duration_s,
        "scheduled": wl.num_rows,
        "sent": r.requests,
        "ok": r.ok,
        "errors": r.requests - r.ok,
        "first_error": first_error(r.records),
        "tokens": r.tokens,
        "send_lag_ms": {k: lag[k] * 1e3 for k in ("p50", "p90", "p99", "max", "mean")},
        "late_over_1ms": float(np.mean(send_lags(r.records) > 1e-3)),
        # process CPU over Runner.run (getrusage: every thread, the pre-send busy-poll included)
        "cpu_utilisation": r.cpu_s / r.wall_s,
        # the runner's own samples as the health check sees them: process CPU per 0.5 s less
        # the measured cost of the idle send poll (mean, max, fraction at >= 98%)
        "health_cpu": health["cpu"],
        # wall time the dispatcher spent in its busy-poll before sends (callbacks run inside it)
        "spin_s": r.spin_s,
        "spin_share": r.spin_s / r.wall_s,
        "wall_s": r.wall_s,
        "live_display": display,
        "valid": health["valid"],
        "reasons": health["reasons"],
    }


def measure_rates(paced_url: str, tmp: Path, s: Settings, console: Console,
                  display: bool) -> list[dict]:
    http = backend_for(paced_url)
    pacing = PacingOnlyBackend(http)
    out = []
    for rate in s.rates:
        r = open_loop_run(http, tmp, f"rate-{rate:g}", rate, s.rate_duration_s,
                          s.rate_output_tokens, display)
        base = open_loop_run(pacing, tmp, f"pacing-{rate:g}", rate, s.baseline_duration_s, 1)
        r["pacing_only"] = {k: base[k] for k in ("sent", "send_lag_ms", "late_over_1ms",
                                                   "cpu_utilisation", "valid")}
        out.append(r)
        console.print(f"  [dim]{rate:5g} req/s: p99 lag {r['send_lag_ms']['p99']:6.3f} ms "
                      f"(pacing only {base['send_lag_ms']['p99']:6.3f} ms), "
                      f"CPU {r['cpu_utilisation']:4.0%}, valid {r['valid']}[/dim]")
    return out


# -- 3. live display on vs off -------------------------------------------------------------------

DISPLAY_KEYS = ("lag_p50_ms", "lag_p99_ms", "lag_max_ms", "cpu_utilisation", "spin_share")


def measure_display(paced_url: str, tmp: Path, s: Settings, rates: tuple[float, ...],
                    repeats: int, console: Console) -> dict[str, Any]:
    """Each rate ``repeats`` times with the display off and on, alternating which goes first,
    with a short pacing-only run beside each pair as the machine's own floor at that moment."""
    http = backend_for(paced_url)
    pacing = PacingOnlyBackend(http)
    per_rate = []
    for rate in rates:
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        floor = []
        for rep in range(repeats):
            order = (False, True) if rep % 2 == 0 else (True, False)
            for display in order:
                key = "on" if display else "off"
                r = open_loop_run(http, tmp, f"display-{key}-{rate:g}-{rep}", rate,
                                  s.rate_duration_s, s.rate_output_tokens, display)
                lag = r["send_lag_ms"]
                runs[key].append({"lag_p50_ms": lag["p50"], "lag_p99_ms": lag["p99"],
                                  "lag_max_ms": lag["max"], "cpu_utilisation":
                                  r["cpu_utilisation"], "spin_share": r["spin_share"],
                                  "errors": r["errors"], "valid": r["valid"],
                                  "load_1min": os.getloadavg()[0]})
                console.print(f"  [dim]{rate:5g} req/s display {key:3}: p99 lag "
                              f"{lag['p99']:6.3f} ms, max {lag['max']:6.2f} ms, "
                              f"CPU {r['cpu_utilisation']:4.0%}, valid {r['valid']}[/dim]")
            base = open_loop_run(pacing, tmp, f"display-pacing-{rate:g}-{rep}", rate,
                                 s.baseline_duration_s, 1)
            floor.append(base["send_lag_ms"]["p99"])
        per_rate.append({
            "rate_rps": rate,
            "runs": runs,
            "median": {key: {k: statistics.median(x[k] for x in rows) for k in DISPLAY_KEYS}
                       for key, rows in runs.items()},
            "valid": {key: sum(x["valid"] for x in rows) for key, rows in runs.items()},
            "pacing_only_p99_ms": floor,
        })
    return {"repeats": repeats, "duration_s": s.rate_duration_s,
            "output_tokens": s.rate_output_tokens, "rates": per_rate}


# -- output --------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = None
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": model,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "libraries": library_versions(),
    }


def cpu_table(cpu: dict[str, Any]) -> Table:
    t = Table(title="Client CPU cost (closed loop, 16 users, server saturated; medians)")
    for col in ("case", "server", "requests", "tok/req", "wall s", "CPU µs/req", "client CPU",
                "req/s", "tokens/s", "tok/read"):
        t.add_column(col, justify="right")
    for kind, rows in cpu["runs"].items():
        case = cpu["setup"]["cases"][kind]

        def med(key: str, rows: list[dict[str, Any]] = rows) -> float:
            return statistics.median(r[key] for r in rows)

        t.add_row(kind, case["server"], f"{case['requests']}", f"{case['output_tokens']}",
                  f"{med('wall_s'):.2f}", f"{med('cpu_us_per_request'):.0f}",
                  f"{med('cpu_utilisation'):.0%}", f"{med('requests_per_s'):.0f}",
                  f"{med('tokens_per_s'):.0f}", f"{med('tokens_per_read'):.1f}")
    return t


def fit_table(cpu: dict[str, Any]) -> Table:
    t = Table(title="Fit: client CPU = a·requests + b·tokens")
    t.add_column("", justify="left")
    t.add_column("median", justify="right")
    t.add_column("per repeat", justify="right")
    fits = cpu["fit_per_repeat"]
    t.add_row("a  µs / request", f"{cpu['us_per_request']:.0f}",
              "  ".join(f"{f['us_per_request']:.0f}" for f in fits))
    t.add_row("b  µs / token, burst (many chunks per read)", f"{cpu['us_per_token_burst']:.1f}",
              "  ".join(f"{f['us_per_token_burst']:.1f}" for f in fits))
    t.add_row("b  µs / token, paced (~1 chunk per read)", f"{cpu['us_per_token_paced']:.1f}",
              "  ".join(f"{f['us_per_token_paced']:.1f}" for f in fits))
    return t


def rate_table(rates: list[dict[str, Any]], output_tokens: int) -> Table:
    t = Table(title=f"Open loop, Poisson arrivals, {output_tokens}-token answers (paced server)")
    for col in ("req/s", "sent", "errors", "lag p50 ms", "lag p99 ms", "lag max ms",
                "client CPU", "health CPU", "spin", "valid", "pacing-only p99 ms"):
        t.add_column(col, justify="right")
    for r in rates:
        lag = r["send_lag_ms"]
        t.add_row(f"{r['rate_rps']:g}", f"{r['sent']}", f"{r['errors']}", f"{lag['p50']:.3f}",
                  f"{lag['p99']:.3f}", f"{lag['max']:.2f}", f"{r['cpu_utilisation']:.0%}",
                  f"{r['health_cpu'].get('mean', float('nan')):.0%}", f"{r['spin_share']:.0%}",
                  "[green]yes[/green]" if r["valid"] else "[red]no[/red]",
                  f"{r['pacing_only']['send_lag_ms']['p99']:.3f}")
    return t


def display_table(comparison: dict[str, Any]) -> Table:
    t = Table(title=f"Live display off vs on (medians of {comparison['repeats']} runs of "
                    f"{comparison['duration_s']:g} s each)")
    for col in ("req/s", "display", "lag p50 ms", "lag p99 ms", "lag max ms", "client CPU",
                "valid runs", "p99 per run", "pacing-only p99 ms"):
        t.add_column(col, justify="right")
    for r in comparison["rates"]:
        for key in ("off", "on"):
            m = r["median"][key]
            t.add_row(f"{r['rate_rps']:g}", key, f"{m['lag_p50_ms']:.3f}",
                      f"{m['lag_p99_ms']:.2f}", f"{m['lag_max_ms']:.2f}",
                      f"{m['cpu_utilisation']:.0%}", f"{r['valid'][key]}/{comparison['repeats']}",
                      " ".join(f"{x['lag_p99_ms']:.1f}" for x in r["runs"][key]),
                      " ".join(f"{x:.1f}" for x in r["pacing_only_p99_ms"]) if key == "on"
                      else "")
    return t


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer requests, 3 s per rate (< 40 s)")
    p.add_argument("--rates", type=lambda v: tuple(float(x) for x in v.split(",")),
                   help="open-loop rates in req/s, comma separated (default 50,200,500)")
    p.add_argument("--rate-duration", type=float, help="seconds per open-loop rate")
    p.add_argument("--repeats", type=int, help="repeats of each CPU measurement (default 3)")
    p.add_argument("--live-display", action="store_true",
                   help="open loop: run slobench's live progress display (as on a terminal)")
    p.add_argument("--display-ab", type=int, default=0, metavar="N",
                   help="also compare the live display off vs on, N runs each per rate")
    p.add_argument("--display-rates", type=lambda v: tuple(float(x) for x in v.split(",")),
                   default=(200.0, 500.0),
                   help="rates for --display-ab, comma separated (default 200,500)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file ({DEFAULT_OUT})")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = QUICK if args.quick else FULL
    if args.rates:
        s = replace(s, rates=args.rates)
    if args.rate_duration:
        s = replace(s, rate_duration_s=args.rate_duration,
                    baseline_duration_s=min(s.baseline_duration_s, args.rate_duration))
    if args.repeats:
        s = replace(s, repeats=args.repeats)
    console = Console() if sys.stdout.isatty() else Console(width=132)
    started = time.perf_counter()
    info = machine_info()
    load_before = os.getloadavg()
    console.print(f"[bold]slobench client overhead[/bold] ({'quick' if args.quick else 'full'}): "
                  f"{info['cpu_count']} CPUs, Python {info['python']}, load average "
                  f"{load_before[0]:.2f}; servers: scripted, own processes, burst {BURST}, "
                  f"paced {PACED}")

    with tempfile.TemporaryDirectory(prefix="slobench-overhead-") as tmpdir, \
            ScriptedServerProcess(BURST, model=MODEL) as burst, \
            ScriptedServerProcess(PACED, model=MODEL) as paced:
        tmp = Path(tmpdir)
        console.print("1. client CPU per request and per token (closed loop)")
        cpu = measure_cpu(burst.base_url, paced.base_url, tmp, s, console)
        console.print(cpu_table(cpu))
        console.print(fit_table(cpu))
        console.print(f"2. send lag in open loop ({s.rate_duration_s:g} s per rate)")
        rates = measure_rates(paced.base_url, tmp, s, console, args.live_display)
        console.print(rate_table(rates, s.rate_output_tokens))
        comparison = None
        if args.display_ab > 0:
            console.print(f"3. live display off vs on ({args.display_ab} runs each)")
            comparison = measure_display(paced.base_url, tmp, s, args.display_rates,
                                         args.display_ab, console)
            console.print(display_table(comparison))
        server_err = (burst.stderr_text() + paced.stderr_text()).strip()

    valid = [r["rate_rps"] for r in rates if r["valid"]]
    noisy = [r["rate_rps"] for r in rates if r["pacing_only"]["send_lag_ms"]["p99"] > LAG_LIMIT_MS]
    per_req = cpu["us_per_request"] + cpu["us_per_token_paced"] * s.rate_output_tokens
    result = {
        "benchmark": "client_overhead",
        "mode": "quick" if args.quick else "full",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "servers": {"kind": "slobench.engine.scripted, own subprocess", "burst": BURST,
                    "paced": PACED},
        "client": {"backend": "openai-chat", "engine_preset": "generic", "stream": True,
                   "input_tokens": INPUT_TOKENS, "event_loop": "uvloop",
                   "live_display": args.live_display,
                   "health_thresholds": {"send_lag_p99_ms": LAG_LIMIT_MS,
                                         "cpu": DEFAULT_CPU_THRESHOLD}},
        "settings": asdict(s),
        "cpu": cpu,
        "open_loop": rates,
        "display_comparison": comparison,
        "summary": {
            "us_per_request": cpu["us_per_request"],
            "us_per_token_burst": cpu["us_per_token_burst"],
            "us_per_token_paced": cpu["us_per_token_paced"],
            "requests_per_s_sustained_1_token": cpu["requests_per_s_short"],
            "tokens_per_s_sustained_burst": cpu["tokens_per_s_burst"],
            "tokens_per_s_sustained_paced": cpu["tokens_per_s_paced"],
            "max_valid_rate_tested_rps": max(valid) if valid else None,
            f"cpu_us_per_{s.rate_output_tokens}_token_request_paced": per_req,
            # open-loop rate at which this work alone fills one core (spin and server excluded)
            "rate_filling_one_core_rps": 1e6 / per_req if per_req > 0 else None,
        },
        "machine_noisy_at_rates": noisy,
        "server_stderr": server_err[-2000:],
        "runtime_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    sm = result["summary"]
    console.print(
        f"[bold]a = {sm['us_per_request']:.0f} µs/request; b = {sm['us_per_token_burst']:.1f} "
        f"µs/token burst, {sm['us_per_token_paced']:.1f} µs/token paced; sustained "
        f"{sm['tokens_per_s_sustained_burst']:.0f} tokens/s (burst); highest tested rate the "
        f"health check passed: {sm['max_valid_rate_tested_rps'] or 'none'} req/s[/bold]")
    if noisy:
        console.print(f"[yellow]note: at {', '.join(f'{x:g}' for x in noisy)} req/s even the "
                      f"pacing-only run missed the schedule by > {LAG_LIMIT_MS:g} ms (p99): the "
                      "machine was busy with other work; rerun on a quiet machine[/yellow]")
    console.print(f"wrote {args.out} in {result['runtime_s']:.0f} s; load average "
                  f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
