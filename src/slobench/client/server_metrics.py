"""Server metrics: scrape the target's Prometheus ``/metrics`` during a run, normalize each
engine's names into common series, store them with the run, and summarize them.

The scraper runs in its own thread (blocking ``urllib``, no event loop), so neither its network
I/O nor the parsing runs on the client's event loop; a page is cut down to the few metric names
the engine's table needs before ``prometheus_client``'s text parser sees it, which keeps the GIL
time per scrape small. A scrape that fails is counted and noted, never raised: server metrics are
an extra, they never fail a run.

Every scrape is one JSON line appended to ``server_metrics.jsonl`` in the run directory and
flushed at once (a killed run keeps everything scraped); ``finalize`` turns it into
``server_metrics.parquet``. A line holds ``ns`` (``time.perf_counter_ns`` of the scrape),
``origin_ns`` (the run clock's origin at that moment: the clock restarts when dispatch begins, so
readers use the last line's origin) and ``values`` (common series name -> number) or ``error``.

See docs/server-metrics.md for the name table and the sources it was taken from.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from prometheus_client.parser import text_string_to_metric_families

from slobench.client.probe import clean_url, parse_metrics
from slobench.clock import NS_PER_S, RunClock
from slobench.schema import write_table

JOURNAL = "server_metrics.jsonl"
TABLE = "server_metrics.parquet"
MAX_BODY = 16 << 20
DEFAULT_INTERVAL_S = 1.0

# The common series. Gauges are read as they are; counters are cumulative and only their
# differences over an interval mean something (a server restart shows as a drop and is skipped).
GAUGES = ("requests_running", "requests_waiting", "kv_cache_usage", "prefix_cache_hit_rate")
COUNTERS = ("prefix_cache_queries", "prefix_cache_hits", "prompt_tokens", "generation_tokens",
            "engine_steps", "step_tokens", "preemptions")
SERIES = GAUGES + COUNTERS


@dataclass(frozen=True)
class Source:
    """Where one common series comes from: the first of ``names`` (exposition sample names) that
    the page has; ``mean`` averages its label sets (a ratio per engine/rank), otherwise they are
    summed (counts, counters)."""

    names: tuple[str, ...]
    mean: bool = False


def _s(*names: str, mean: bool = False) -> Source:
    return Source(tuple(names), mean)


# Engine (as slobench.client.probe names it) -> common series -> source. Sample names are as they
# appear on the page (counters with their _total suffix, histogram _sum/_count). Sources: see
# docs/server-metrics.md.
_VLLM: dict[str, Source] = {
    "requests_running": _s("vllm:num_requests_running"),
    "requests_waiting": _s("vllm:num_requests_waiting"),
    "kv_cache_usage": _s("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", mean=True),
    "prefix_cache_queries": _s("vllm:prefix_cache_queries_total",
                               "vllm:gpu_prefix_cache_queries_total"),
    "prefix_cache_hits": _s("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    "prompt_tokens": _s("vllm:prompt_tokens_total"),
    "generation_tokens": _s("vllm:generation_tokens_total"),
    # one observation per engine step: count = steps, sum = tokens scheduled in them
    "engine_steps": _s("vllm:iteration_tokens_total_count"),
    "step_tokens": _s("vllm:iteration_tokens_total_sum"),
    "preemptions": _s("vllm:num_preemptions_total"),
}

NORMALIZATION: dict[str, dict[str, Source]] = {
    "vllm": _VLLM,
    # the built-in emulator exports vLLM's names plus its own step counters
    "slobench-emulator": {**_VLLM,
                          "engine_steps": _s("slobench_emulator_steps_total"),
                          "step_tokens": _s("slobench_emulator_step_tokens_total")},
    "sglang": {
        "requests_running": _s("sglang:num_running_reqs"),
        "requests_waiting": _s("sglang:num_queue_reqs"),
        "kv_cache_usage": _s("sglang:token_usage", mean=True),
        "prefix_cache_hit_rate": _s("sglang:cache_hit_rate", mean=True),
        # prompt tokens are the cache's queries; cached (radix-cache hit) tokens its hits
        "prefix_cache_queries": _s("sglang:prompt_tokens_total"),
        "prefix_cache_hits": _s("sglang:cached_tokens_total"),
        "prompt_tokens": _s("sglang:prompt_tokens_total"),
        "generation_tokens": _s("sglang:generation_tokens_total"),
    },
    "tgi": {
        "requests_running": _s("tgi_batch_current_size"),
        "requests_waiting": _s("tgi_queue_size"),
        "prompt_tokens": _s("tgi_request_input_length_sum"),
        "generation_tokens": _s("tgi_request_generated_tokens_sum"),
        # forward passes, prefill and decode (label method); the Rust exporter adds no _total
        "engine_steps": _s("tgi_batch_inference_count", "tgi_batch_inference_count_total"),
    },
    "llama.cpp": {
        "requests_running": _s("llamacpp:requests_processing"),
        "requests_waiting": _s("llamacpp:requests_deferred"),
        "kv_cache_usage": _s("llamacpp:kv_cache_usage_ratio", mean=True),
        "prompt_tokens": _s("llamacpp:prompt_tokens_total"),
        "generation_tokens": _s("llamacpp:tokens_predicted_total"),
        "engine_steps": _s("llamacpp:n_decode_total"),
    },
}


def _wanted(engine: str) -> frozenset[str]:
    return frozenset(n for src in NORMALIZATION[engine].values() for n in src.names)


def _sample_name(line: str) -> str:
    end = len(line)
    for sep in ("{", " ", "\t"):
        i = line.find(sep)
        if 0 <= i < end:
            end = i
    return line[:end]


def normalize(text: str, engine: str) -> dict[str, float | None]:
    """The common series of one ``/metrics`` page of ``engine`` (a key of NORMALIZATION); a
    series the page does not carry is None. Raises ValueError on a page the parser rejects."""
    table = NORMALIZATION[engine]
    wanted = _wanted(engine)
    kept = [line for line in text.splitlines()
            if line and not line.startswith("#") and _sample_name(line) in wanted]
    found: dict[str, list[float]] = {}
    for fam in text_string_to_metric_families("\n".join(kept) + "\n"):
        for s in fam.samples:
            if math.isfinite(s.value):
                found.setdefault(s.name, []).append(float(s.value))
    out: dict[str, float | None] = {}
    for series in SERIES:
        src = table.get(series)
        values = next((found[n] for n in src.names if n in found), None) if src else None
        if not values:
            out[series] = None
        else:
            out[series] = sum(values) / len(values) if src.mean else sum(values)  # type: ignore[union-attr]
    return out


def detect_engine(text: str) -> str | None:
    """The engine behind a ``/metrics`` page (slobench.client.probe's detection), when this
    module has a name table for it."""
    engine = parse_metrics(text)["engine"]
    return engine if engine in NORMALIZATION else None


# -- scraping ------------------------------------------------------------------------------------


class MetricsScraper:
    """Scrapes ``base_url + path`` (the engine preset's ``metrics_path``) every ``interval_s``
    in a daemon thread until ``stop``."""

    def __init__(self, base_url: str, run_dir: Path, clock: RunClock, *,
                 interval_s: float = DEFAULT_INTERVAL_S, engine: str | None = None,
                 headers: dict[str, str] | None = None, path: str = "/metrics") -> None:
        self.url = base_url.rstrip("/") + path
        self.path = Path(run_dir) / JOURNAL
        self.clock = clock
        self.interval_s = interval_s
        self.engine = engine if engine in NORMALIZATION else None
        self.headers = {k: v for k, v in (headers or {}).items()
                        if k.lower() != "content-type"}
        self.timeout_s = min(max(interval_s, 1.0), 5.0)
        self.scrapes = 0
        self.errors = 0
        self.last_error: str | None = None
        self.note: str | None = None
        self.scrape_s_max = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file: Any = None
        self._gave_up = False

    def start(self) -> MetricsScraper:
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open while scraping
        self._thread = threading.Thread(target=self._loop, name="slobench-metrics", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._gave_up:
            self.scrape_once()
            next_t += self.interval_s
            now = time.monotonic()
            if next_t < now:  # a slow scrape: skip the ticks it missed
                next_t = now + self.interval_s
            if self._stop.wait(next_t - now):
                return

    def stop(self) -> dict[str, Any]:
        """Stop, take a last scrape (counters up to the end) and return the account of it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 5)
        if not self._gave_up and self._file is not None:
            self.scrape_once()
        if self._file is not None:
            self._file.close()
        return self.info()

    def info(self) -> dict[str, Any]:
        return {"url": clean_url(self.url), "engine": self.engine, "interval_s": self.interval_s,
                "scrapes": self.scrapes, "errors": self.errors, "last_error": self.last_error,
                "note": self.note, "scrape_s_max": round(self.scrape_s_max, 4)}

    def _fail(self, ns: int, message: str) -> None:
        self.errors += 1
        self.last_error = message[:300]
        self._write({"ns": ns, "origin_ns": self.clock.start_ns, "error": self.last_error})

    def _write(self, line: dict[str, Any]) -> None:
        if self._file is not None and not self._file.closed:
            self._file.write(orjson.dumps(line) + b"\n")
            self._file.flush()

    def scrape_once(self) -> None:
        ns = time.perf_counter_ns()
        started = time.perf_counter()
        req = urllib.request.Request(self.url, headers=self.headers, method="GET")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                body = resp.read(MAX_BODY)
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 405, 501):
                self._gave_up = True
                self.note = f"the target has no Prometheus endpoint (GET /metrics: HTTP {exc.code})"
            self._fail(ns, f"HTTP {exc.code}")
            return
        except (OSError, ValueError) as exc:  # refused, reset, timed out
            self._fail(ns, f"{type(exc).__name__}: {exc}")
            return
        text = body.decode("utf-8", "replace")
        if self.engine is None:
            self.engine = detect_engine(text)
            if self.engine is None:
                self._gave_up = True
                self.note = ("GET /metrics answered, but with no metric names of a known engine "
                             f"({', '.join(NORMALIZATION)})")
                self._fail(ns, "unrecognized metrics")
                return
        try:
            values = normalize(text, self.engine)
        except ValueError as exc:
            self._fail(ns, f"unparseable /metrics page: {exc}")
            return
        self.scrapes += 1
        self.scrape_s_max = max(self.scrape_s_max, time.perf_counter() - started)
        self._write({"ns": ns, "origin_ns": self.clock.start_ns, "values": values})


# -- storing and loading -------------------------------------------------------------------------


def _schema() -> pa.Schema:
    return pa.schema([pa.field("t_s", pa.float64(), nullable=False)]
                     + [pa.field(name, pa.float64()) for name in SERIES])


def read_journal(path: Path) -> pa.Table:
    """The successful scrapes of a ``server_metrics.jsonl`` as a table (``t_s``: seconds since
    the run clock's final origin; negative before dispatch began); torn lines are skipped."""
    rows: list[dict[str, Any]] = []
    origin = None
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return _schema().empty_table()
    for line in raw.splitlines():
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("ns"), int):
            continue
        if isinstance(obj.get("origin_ns"), int):
            origin = obj["origin_ns"]
        if isinstance(obj.get("values"), dict):
            rows.append(obj)
    if not rows or origin is None:
        return _schema().empty_table()
    cols: dict[str, list[Any]] = {"t_s": [(r["ns"] - origin) / NS_PER_S for r in rows]}
    for name in SERIES:
        cols[name] = [_num(r["values"].get(name)) for r in rows]
    return pa.Table.from_pydict(cols, schema=_schema())


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def finalize(run_dir: Path) -> pa.Table | None:
    """Write ``server_metrics.parquet`` from the journal; None when nothing was scraped."""
    table = read_journal(Path(run_dir) / JOURNAL)
    if not table.num_rows:
        return None
    write_table(table, Path(run_dir) / TABLE)
    return table


def load(run_dir: Path) -> pa.Table | None:
    """A run's server-metric series (the Parquet file, else the journal of a killed run)."""
    run_dir = Path(run_dir)
    if (run_dir / TABLE).exists():
        import pyarrow.parquet as pq

        try:
            return pq.read_table(run_dir / TABLE)
        except (pa.ArrowInvalid, OSError):
            pass
    if (run_dir / JOURNAL).exists():
        table = read_journal(run_dir / JOURNAL)
        return table if table.num_rows else None
    return None


# -- deriving and summarizing ----------------------------------------------------------------------


def _col(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.asarray(table[name].to_numpy(zero_copy_only=False), dtype=np.float64)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 and math.isfinite(num) and math.isfinite(den) else None


def interval_series(table: pa.Table) -> dict[str, np.ndarray]:
    """Per interval between consecutive scrapes (at the later scrape's time): the prefix-cache
    hit rate and tokens per engine step from counter differences (the engine's own hit-rate gauge
    where it has no counters), and preemptions per second. NaN where undefined."""
    t = _col(table, "t_s")
    n = len(t)
    out = {"t_s": t[1:] if n > 1 else np.zeros(0)}

    def delta(name: str) -> np.ndarray:
        c = _col(table, name)
        d = np.diff(c) if n > 1 else np.zeros(0)
        d[~np.isfinite(d) | (d < 0)] = np.nan  # missing, or a counter reset
        return d

    def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)

    hits, queries = delta("prefix_cache_hits"), delta("prefix_cache_queries")
    hit_rate = div(hits, queries)
    gauge = _col(table, "prefix_cache_hit_rate")[1:] if n > 1 else np.zeros(0)
    out["prefix_cache_hit_rate"] = np.where(np.isnan(queries), gauge, hit_rate)
    out["tokens_per_step"] = div(_step_tokens(table, delta), delta("engine_steps"))
    dt = np.diff(t) if n > 1 else np.zeros(0)
    out["preemptions_per_s"] = div(delta("preemptions"), dt)
    return out


def _step_tokens(table: pa.Table, delta: Any) -> np.ndarray:
    """Tokens computed by engine steps: the engine's own count where it has one, else prompt
    plus generated tokens (an approximation: it counts a prompt when it was accepted)."""
    own = delta("step_tokens")
    if np.isfinite(own).any():
        return own
    return delta("prompt_tokens") + delta("generation_tokens")


def _stats(values: np.ndarray) -> dict[str, float] | None:
    v = values[np.isfinite(values)]
    if not v.size:
        return None
    return {"mean": round(float(v.mean()), 6), "max": round(float(v.max()), 6)}


def summarize_series(table: pa.Table | None, window: tuple[float, float] | list[float] | None
                     ) -> dict[str, Any] | None:
    """The server side of a run over its summary window: mean and max of the gauges over the
    scrapes inside it, and counter differences from the last scrape at or before its start to
    the first at or after its end (the prefix-cache hit rate, tokens per step, preemptions)."""
    if table is None or not table.num_rows:
        return None
    t = _col(table, "t_s")
    w0, w1 = (window or (0.0, float(t.max())))[:2]
    inside = (t >= w0) & (t <= w1)
    if not inside.any():
        inside = t >= min(0.0, float(t.max()))
    out: dict[str, Any] = {"samples": int(inside.sum()), "window": [w0, w1]}
    for name in ("requests_running", "requests_waiting", "kv_cache_usage"):
        out[name] = _stats(_col(table, name)[inside])
    before = np.nonzero(t <= w0)[0]
    after = np.nonzero(t >= w1)[0]
    i0 = int(before[-1]) if before.size else 0
    i1 = int(after[0]) if after.size else len(t) - 1

    def delta(name: str) -> float:
        c = _col(table, name)
        d = c[i1] - c[i0] if i1 > i0 else math.nan
        return d if math.isfinite(d) and d >= 0 else math.nan

    counters = {name: delta(name) for name in COUNTERS}
    out["counters"] = {k: (None if math.isnan(v) else round(v, 3)) for k, v in counters.items()}
    hit_rate = _ratio(counters["prefix_cache_hits"], counters["prefix_cache_queries"])
    if hit_rate is None:
        gauge = _col(table, "prefix_cache_hit_rate")[inside]
        gauge = gauge[np.isfinite(gauge)]
        hit_rate = float(gauge.mean()) if gauge.size else None
    out["prefix_cache_hit_rate"] = None if hit_rate is None else round(hit_rate, 6)
    step_tokens = counters["step_tokens"]
    if math.isnan(step_tokens):
        step_tokens = counters["prompt_tokens"] + counters["generation_tokens"]
    tps = _ratio(step_tokens, counters["engine_steps"])
    out["tokens_per_step"] = None if tps is None else round(tps, 3)
    out["preemptions"] = (None if math.isnan(counters["preemptions"])
                          else int(counters["preemptions"]))
    return out


def prompt_cache_share(records: pa.Table, window: tuple[float, float] | list[float] | None = None
                       ) -> dict[str, Any] | None:
    """Client side: the share of prompt tokens the server says it took from its prefix cache
    (``usage.prompt_tokens_details.cached_tokens``), over the ok requests in ``window`` that
    report it; None when none does."""
    if "cached_tokens" not in records.column_names or not records.num_rows:
        return None
    cached = np.asarray(records["cached_tokens"].to_numpy(zero_copy_only=False), dtype=np.float64)
    prompt = np.asarray(records["input_tokens"].to_numpy(zero_copy_only=False), dtype=np.float64)
    ok = np.asarray(records["status"].to_numpy(zero_copy_only=False), dtype=object) == "ok"
    keep = ok & np.isfinite(cached)
    if window is not None:
        sched = np.asarray(records["scheduled_s"].to_numpy(zero_copy_only=False), dtype=float)
        keep &= (sched >= window[0]) & (sched < window[1])
    if not keep.any():
        return None
    total_cached, total_prompt = float(cached[keep].sum()), float(prompt[keep].sum())
    return {"requests": int(keep.sum()), "cached_tokens": int(total_cached),
            "prompt_tokens": int(total_prompt),
            "hit_share": round(total_cached / total_prompt, 6) if total_prompt > 0 else None}


def run_summary(run_dir: Path, info: dict[str, Any] | None, records: pa.Table,
                window: tuple[float, float] | list[float] | None) -> dict[str, Any]:
    """The ``server_metrics`` block of a run's summary.json and manifest: how scraping went
    (``info``, from MetricsScraper.stop), the server-side summary over the window and the
    client-side prompt-cache share."""
    out: dict[str, Any] = dict(info or {"note": "scraping was off (--scrape-interval 0)"})
    table = load(run_dir)
    out["summary"] = summarize_series(table, window)
    out["prompt_cache"] = prompt_cache_share(records, window)
    if out["summary"] is None and not out.get("note"):
        out["note"] = ("no scrape of GET /metrics succeeded"
                       + (f" ({out['last_error']})" if out.get("last_error") else ""))
    return out
