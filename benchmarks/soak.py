"""Soak: slobench's client at its rated open-loop load for minutes, watched for slow leaks.

The target is the scripted server (its own subprocess; ``ttft_s`` 5 ms, ``tpot_s`` 1 ms, 16 output
tokens) so the thing under test is the client: ``slobench run`` as a subprocess, one client
process (``--workers 1``), Poisson arrivals at ``--rate`` (default 300 req/s) for ``--minutes``
(default 10; ``--quick``: 1). Every ``--interval`` seconds (default 5) this script samples the
client process from outside: resident memory (``/proc/PID/status`` VmRSS), open file descriptors
(``/proc/PID/fd``), CPU (``/proc/PID/stat``), and the send lag (``sent_s - scheduled_s -
queue_s``) of the requests the client's crash-safe journal gained since the last sample (its p99).

Pass/fail, on the samples after a warm-up (the first 10% of the run, at least 10 s):

* memory flat: RSS slope (least squares) <= ``--max-rss-slope`` MB/min (default 2) and the last
  sample within ``--max-rss-growth`` MB (default 32) of the first;
* no fd leak: fd slope <= 1 per minute and the last sample <= first + 16 (pooled connections come
  and go with concurrency);
* no lag drift: the windowed-p99 slope <= 0.5 ms/min and the median p99 of the last third <=
  2 x that of the first third + 1 ms;
* nothing lost: every scheduled request has a record, and none ended in an error.

Bounded and self-stopping: the client stops sending after the duration; a watchdog kills it
(and the server is stopped) at duration + 120 s. Writes ``benchmarks/results/soak.json``.

Usage::

    python benchmarks/soak.py --quick            # 1 minute
    python benchmarks/soak.py --minutes 10 --rate 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.parquet as pq

from slobench.engine.scripted import ScriptedServerProcess

RESULTS = Path(__file__).parent / "results" / "soak.json"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ProcessLookupError(pid)  # a zombie: exited, not yet reaped


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


class JournalTail:
    """New complete lines of the run's journal since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new_rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # a torn last line waits for the next call
        self.offset += end
        return [orjson.loads(line) for line in data[:end].splitlines() if line.strip()]


def slope_per_min(t_s: list[float], y: list[float]) -> float:
    if len(t_s) < 3:
        return 0.0
    return float(np.polyfit(np.asarray(t_s) / 60.0, np.asarray(y), 1)[0])


def stats(t_s: list[float], y: list[float]) -> dict[str, float]:
    return {"start": y[0], "end": y[-1], "max": max(y), "min": min(y),
            "slope_per_min": slope_per_min(t_s, y)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="1 minute")
    ap.add_argument("--rate", type=float, default=300.0, help="requests/s (open loop, Poisson)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--output-tokens", type=int, default=16)
    ap.add_argument("--max-rss-slope", type=float, default=2.0, help="MB per minute")
    ap.add_argument("--max-rss-growth", type=float, default=32.0, help="MB over the run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    minutes = 1.0 if args.quick else args.minutes
    duration_s = minutes * 60.0
    warmup_s = max(10.0, 0.1 * duration_s)

    work = Path(tempfile.mkdtemp(prefix="slobench-soak-"))
    server = ScriptedServerProcess({"ttft_s": 0.005, "tpot_s": 0.001,
                                    "output_tokens": args.output_tokens})
    url = server.start()
    cmd = [sys.executable, "-m", "slobench", "run", "--target", url, "--rate", f"{args.rate:g}",
           "--duration", f"{duration_s:g}s", "--input-tokens", "128",
           "--output-tokens", str(args.output_tokens), "--apps", "chatbot", "--workers", "1",
           "--out", str(work), "--run-id", "soak", "--no-catalog", "--scrape-interval", "0",
           "--timeout", "30s", "-q"]
    samples: list[dict[str, Any]] = []
    client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = JournalTail(work / "soak" / "records.journal.jsonl")
    t0 = time.monotonic()
    deadline = t0 + duration_s + 120.0
    killed = False
    try:
        prev_cpu, prev_t = 0.0, t0
        next_sample = t0 + args.interval
        while client.poll() is None:
            if time.monotonic() > deadline:
                client.kill()
                killed = True
                break
            time.sleep(max(0.0, next_sample - time.monotonic()))
            next_sample += args.interval
            try:
                now = time.monotonic()
                rss, fds, cpu = rss_mb(client.pid), open_fds(client.pid), cpu_s(client.pid)
            except (FileNotFoundError, ProcessLookupError):
                break  # the client just exited
            rows = journal.new_rows()
            lags = [r["sent_s"] - r["scheduled_s"] - (r.get("queue_s") or 0.0)
                    for r in rows if r.get("sent_s") is not None]
            samples.append({
                "t_s": round(now - t0, 2), "rss_mb": round(rss, 2), "fds": fds,
                "cpu_util": round((cpu - prev_cpu) / (now - prev_t), 3),
                "records": len(rows), "errors": sum(r["status"] != "ok" for r in rows),
                "lag_p99_ms": (round(float(np.percentile(lags, 99)) * 1e3, 3) if lags
                               else None),
            })
            prev_cpu, prev_t = cpu, now
            s = samples[-1]
            print(f"t={s['t_s']:6.1f}s rss={s['rss_mb']:7.1f} MB fds={fds:4d} "
                  f"cpu={s['cpu_util']:.2f} records={s['records']:5d} "
                  f"lag_p99={s['lag_p99_ms']} ms", flush=True)
        _, err = client.communicate(timeout=300)
    finally:
        if client.poll() is None:
            client.kill()
        server.stop()
    wall_s = time.monotonic() - t0

    run_dir = work / "soak"
    records = pq.read_table(run_dir / "records.parquet").to_pylist() if (
        run_dir / "records.parquet").exists() else []
    manifest = json.loads((run_dir / "manifest.json").read_text()) if (
        run_dir / "manifest.json").exists() else {}
    workload_rows = pq.read_metadata(run_dir / "workload.parquet").num_rows if (
        run_dir / "workload.parquet").exists() else None
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1

    # the steady part: after the warm-up, while the client was still sending
    steady = [s for s in samples if warmup_s <= s["t_s"] <= duration_s + 1]
    t = [s["t_s"] for s in steady]
    rss = stats(t, [s["rss_mb"] for s in steady]) if steady else {}
    fds = stats(t, [float(s["fds"]) for s in steady]) if steady else {}
    lag_samples = [s for s in steady if s["lag_p99_ms"] is not None]
    lag = stats([s["t_s"] for s in lag_samples], [s["lag_p99_ms"] for s in lag_samples]
                ) if lag_samples else {}
    third = max(1, len(lag_samples) // 3)
    first_lag = statistics.median(s["lag_p99_ms"] for s in lag_samples[:third]) if lag_samples \
        else 0.0
    last_lag = statistics.median(s["lag_p99_ms"] for s in lag_samples[-third:]) if lag_samples \
        else 0.0
    criteria = {
        "memory_flat": bool(steady) and rss["slope_per_min"] <= args.max_rss_slope
        and rss["end"] - rss["start"] <= args.max_rss_growth,
        "no_fd_leak": bool(steady) and fds["slope_per_min"] <= 1.0
        and fds["end"] <= fds["start"] + 16,
        "no_lag_drift": bool(lag_samples) and lag["slope_per_min"] <= 0.5
        and last_lag <= 2 * first_lag + 1.0,
        "nothing_lost": (not killed and client.returncode == 0 and workload_rows is not None
                         and len(records) == workload_rows and statuses.get("ok", 0)
                         == len(records)),
    }
    thresholds = {
        "memory_flat": f"RSS slope <= {args.max_rss_slope} MB/min and growth <= "
                       f"{args.max_rss_growth} MB after {warmup_s:g} s warm-up",
        "no_fd_leak": "fd slope <= 1/min and end <= start + 16",
        "no_lag_drift": "p99 lag slope <= 0.5 ms/min and last-third median p99 <= "
                        "2 x first-third + 1 ms",
        "nothing_lost": "one record per scheduled request, all ok, client exit 0",
    }
    result = {
        "benchmark": "soak", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_average": os.getloadavg()},
        "settings": {"rate_rps": args.rate, "minutes": minutes, "interval_s": args.interval,
                     "warmup_s": warmup_s, "output_tokens": args.output_tokens,
                     "server": "scripted ttft 5 ms, tpot 1 ms", "client": "slobench run, 1 "
                     "process (--workers 1)"},
        "wall_s": round(wall_s, 1), "client_exit": client.returncode, "killed": killed,
        "requests": {"scheduled": workload_rows, "records": len(records), "statuses": statuses},
        "rss_mb": rss, "fds": fds, "lag_p99_ms": {**lag, "first_third_median": first_lag,
                                                  "last_third_median": last_lag},
        "client_health": manifest.get("client_health") or manifest.get("health"),
        "criteria": criteria, "thresholds": thresholds, "passed": all(criteria.values()),
        "samples": samples,
        "client_stderr_tail": err.decode(errors="replace")[-2000:] if err else "",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"\nsoak {minutes:g} min at {args.rate:g} req/s: {len(records)} records "
          f"of {workload_rows} scheduled, statuses {statuses}")
    if steady:
        print(f"RSS MB: start {rss['start']:.1f} end {rss['end']:.1f} max {rss['max']:.1f} "
              f"slope {rss['slope_per_min']:+.2f}/min")
        print(f"fds: start {fds['start']:.0f} end {fds['end']:.0f} max {fds['max']:.0f} "
              f"slope {fds['slope_per_min']:+.2f}/min")
    if lag_samples:
        print(f"lag p99 ms: start {lag['start']:.2f} end {lag['end']:.2f} max {lag['max']:.2f} "
              f"slope {lag['slope_per_min']:+.3f}/min (first third {first_lag:.2f}, last "
              f"third {last_lag:.2f})")
    for name, ok in criteria.items():
        print(f"{'PASS' if ok else 'FAIL'} {name}: {thresholds[name]}")
    print(f"wrote {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
