"""Do LLM benchmark clients agree with a real engine about what it did?

Issue 10: on one llama.cpp server at 4 concurrent streams, vLLM's ``bench serve``, guidellm and
AIPerf reported 1042, 580 and 433 output tok/s. measurement_accuracy.py judges the tools against
a scripted server whose schedule is known; this script judges them against a real engine,
llama.cpp's ``llama-server`` (built by scripts/build-llama-server.sh), serving the tiny
random-weight model with Qwen2's real vocabulary that the integration tests use
(tests/llama_server.py), with 4 slots (continuous batching) and ``--metrics``.

Each tool (slobench, and vLLM bench, guidellm and AIPerf where installed: their own venvs,
benchmarks/peers/setup.sh) runs as a child process, one after the other against the same server,
at 4 closed-loop streams with 128-token prompts and 128 forced output tokens (every tool sends
``ignore_eos``; AIPerf only when told, so it is) for a fixed number of requests. The truth is the
server's own count of what it did while that tool ran:

- ``/metrics`` counters read before and after the run: ``llamacpp:tokens_predicted_total``
  (tokens generated), ``prompt_tokens_total`` + ``prompt_tokens_cached_total`` (prompt tokens),
  ``n_decode_total`` (batches) and the busy-slot average (how many streams each batch carried);
- the server log's lines for the same period (llama-server stamps every line with its own
  clock): each request's slot launch and release, its prompt and generated token counts and its
  prompt / generation times. The server's run window is first launch -> last release; its output
  tok/s is the tokens it generated over that window.

Per tool: its reported output tok/s, request count (and failures) and output tokens against the
server's; its own duration against the server's window; TTFT p50 / TPOT p50 as it reports them,
next to the server's own prompt time and time per generated token (no client-side truth for
those here: the server's figures exclude the network and the HTTP layer); and its CPU, the
server's and the rest of the machine's (psutil, over the stretch where the server was busy).

The tools run in rounds, the order reversed each round (the machine may be shared: outside load
moves the server's speed), against one server per thread count (``--threads``, default 1 and 2:
with as many llama.cpp threads as cores, a client's CPU use slows the server itself).

Usage::

    python benchmarks/real_engine_agreement.py           # full: 96 requests per tool, ~9 min
    python benchmarks/real_engine_agreement.py --quick   # 12 requests, 1 thread, under 1 min
    python benchmarks/real_engine_agreement.py --tools slobench,vllm --threads 2 --requests 40

Prints a table per thread count and writes ``benchmarks/results/real_engine_agreement.json``. A
missing tool is reported and skipped; without a llama-server build the script says so and writes
nothing. See docs/performance.md ("Against a real engine").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import re
import resource
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

from measurement_accuracy import (
    Aiperf,
    CpuSampler,
    Guidellm,
    Load,
    Reported,
    Slobench,
    Tool,
    VllmBench,
    _clean,
    _num,
    git_state,
    run_child,
    tool_versions,
)

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
DEFAULT_OUT = ROOT / "results" / "real_engine_agreement.json"
DEFAULT_TOOLS = ("slobench", "vllm", "guidellm", "aiperf")
TOOLS = (*DEFAULT_TOOLS, "aiperf-tok")  # aiperf-tok: AIPerf counting tokens itself (optional)
MODEL = "tiny-qwen2-vocab"  # LlamaServer's --alias
SLOTS, CTX_PER_SLOT = 4, 1024
CONCURRENCY, INPUT_TOKENS, OUTPUT_TOKENS = 4, 128, 128
FULL_REQUESTS, QUICK_REQUESTS = 96, 12
BUSY_CORES = 0.3  # the server is "busy" while it burns more than this (CPU window for the tools)


# -- the tools, as llama.cpp needs them driven ---------------------------------------------------


class LlamaSlobench(Slobench):
    """slobench with the llama.cpp preset (ignore_eos; a fresh connection after each stream, as
    llama-server closes it) and token-exact prompts from the model's own tokenizer."""

    def __init__(self, tokenizer_json: Path) -> None:
        super().__init__(["--tokenizer", str(tokenizer_json)], engine="llamacpp")

    def parse(self, out: Path) -> Reported:
        rep = super().parse(out)
        summary = json.loads((out / "run" / "summary.json").read_text())["summary"]
        d = self.records
        rep.extra.update(
            duration_s=summary["duration_s"],
            duration_definition="first request scheduled -> last response done",
            output_tokens=int(np.nansum(d.column("output_tokens").to_numpy(
                zero_copy_only=False).astype(float))),
            input_tokens=int(np.nansum(d.column("input_tokens").to_numpy(
                zero_copy_only=False).astype(float))),
            tokens_counted="the server's usage.completion_tokens (final chunk)",
            failed=d.num_rows - (rep.requests_ok or 0),
            errors=_count([e for e, ok in zip(d.column("error").to_pylist(),
                                              d.column("status").to_pylist(), strict=True)
                           if ok != "ok"]))
        return rep


def _count(errors: list[Any]) -> dict[str, int]:
    """Distinct error messages (first 200 characters) and how often each came."""
    out: dict[str, int] = {}
    for e in errors:
        key = str(e).strip().splitlines()[-1][:200] if str(e).strip() else "(empty)"
        out[key] = out.get(key, 0) + 1
    return out


class LlamaVllm(VllmBench):
    def command(self, url, load, out, tokenizer):
        argv, env = super().command(url, load, out, tokenizer)
        return [*argv, "--save-detailed"], env  # per-request errors in its JSON

    def parse(self, out: Path) -> Reported:
        rep = super().parse(out)
        d = json.loads((out / "vllm.json").read_text())
        rep.extra.update(
            duration_s=d.get("duration"),
            duration_definition="after its 1-request test run: first send -> last response",
            output_tokens=d.get("total_output_tokens"), input_tokens=d.get("total_input_tokens"),
            tokens_counted="usage.completion_tokens when the stream carries it, else its "
                           "tokenizer on the text",
            failed=d.get("failed") or 0, errors=_count([e for e in d.get("errors") or [] if e]))
        return rep


class LlamaGuidellm(Guidellm):
    def parse(self, out: Path) -> Reported:
        rep = super().parse(out)
        bench = json.loads((out / "guidellm.json").read_text())["benchmarks"][0]
        rep.extra.update(_guidellm_extra(bench))
        return rep


def _guidellm_extra(bench: dict[str, Any]) -> dict[str, Any]:
    m = bench["metrics"]
    start, end = bench.get("start_time"), bench.get("end_time")
    if start is None:
        start = (bench.get("scheduler_state") or {}).get("start_time")
    if end is None:
        end = (bench.get("scheduler_state") or {}).get("end_time")
    out: dict[str, Any] = {
        "duration_s": (end - start) if start is not None and end is not None else None,
        "duration_definition": "its scheduler's start -> end (rates: time-weighted mean of the "
                               "token rate over that window)",
        "tokens_counted": "usage.completion_tokens",
        "failed": sum((m.get("request_totals") or {}).get(k) or 0
                      for k in ("errored", "incomplete"))}
    with_tokens = m.get("output_token_count") or m.get("output_tokens_count")
    if isinstance(with_tokens, dict):
        s = with_tokens.get("successful") or {}
        out["output_tokens"] = s.get("total_sum") or s.get("sum")
    return out


class LlamaAiperf(Aiperf):
    """AIPerf asks for the length with ``max_completion_tokens`` only: without ``ignore_eos`` a
    stream ends at the model's end-of-sequence token, so it is added as an extra input."""

    def command(self, url, load, out, tokenizer):
        argv, env = super().command(url, load, out, tokenizer)
        return [*argv, "--extra-inputs", "ignore_eos:true"], env

    def parse(self, out: Path) -> Reported:
        rep = super().parse(out)
        d = json.loads((out / "aiperf" / "profile_export_aiperf.json").read_text())

        def avg(name: str) -> Any:
            v = d.get(name)
            return v.get("avg") if isinstance(v, dict) else v

        rep.extra.update(
            duration_s=avg("benchmark_duration"),
            duration_definition="its profiling phase: first request sent -> last response",
            output_tokens=avg("total_output_tokens") or avg("output_token_count"),
            input_tokens=avg("total_isl") or avg("input_sequence_length"),
            tokens_counted="usage.completion_tokens (--use-server-token-count)",
            failed=int(avg("error_request_count") or 0),
            errors={str((e.get("error_details") or {}).get("message"))[:200]: e.get("count")
                    for e in d.get("error_summary") or []})
        return rep


class LlamaAiperfClientCount(LlamaAiperf):
    """AIPerf as it runs by default: output tokens counted by its own tokenizer on the streamed
    text, not taken from the server's usage."""

    name = "aiperf-tok"

    def command(self, url, load, out, tokenizer):
        argv, env = super().command(url, load, out, tokenizer)
        return [a for a in argv if a != "--use-server-token-count"], env

    def parse(self, out: Path) -> Reported:
        rep = super().parse(out)
        rep.extra["tokens_counted"] = "its tokenizer on the streamed text (AIPerf's default)"
        return rep


def make_tools(names: list[str], tokenizer_json: Path) -> list[Tool]:
    known = {"slobench": lambda: LlamaSlobench(tokenizer_json), "vllm": LlamaVllm,
             "guidellm": LlamaGuidellm, "aiperf": LlamaAiperf,
             "aiperf-tok": LlamaAiperfClientCount}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown tool(s) {unknown}; choose from {', '.join(TOOLS)}")
    return [known[n]() for n in names]


# -- the server's own record ---------------------------------------------------------------------


METRICS = ("tokens_predicted_total", "tokens_predicted_seconds_total", "prompt_tokens_total",
           "prompt_tokens_cached_total", "prompt_seconds_total", "n_decode_total",
           "n_busy_slots_per_decode")


def scrape(url: str) -> dict[str, float]:
    """llama-server's Prometheus counters (names without the ``llamacpp:`` prefix)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("llamacpp:"):
            name, _, value = line.partition(" ")
            out[name.removeprefix("llamacpp:")] = float(value)
    return out


# "0.06.777.929 I slot launch_slot_: id  3 | task 2 | processing task": minutes.seconds.ms.us
_STAMP = re.compile(r"^(\d+)\.(\d\d)\.(\d{3})\.(\d{3}) ")
_LAUNCH = re.compile(r"launch_slot_: id +\d+ \| task (\d+) \| processing task")
_PROMPT = re.compile(r"print_timing: id +\d+ \| task (\d+) \| prompt eval time = +([\d.]+) ms "
                     r"/ +(\d+) tokens")
_EVAL = re.compile(r"print_timing: id +\d+ \| task (\d+) \| +eval time = +([\d.]+) ms / +(\d+) "
                   r"tokens")
_RELEASE = re.compile(r"release: id +\d+ \| task (\d+) \| stop processing")


@dataclass
class Task:
    """One request as llama-server's log tells it (times on the server's log clock, s)."""

    launch: float = math.nan
    release: float = math.nan
    prompt_ms: float = math.nan
    prompt_tokens: int = 0  # processed, not taken from the prompt cache
    eval_ms: float = math.nan
    generated: int = 0


@dataclass
class ServerLog:
    tasks: dict[int, Task] = field(default_factory=dict)
    stamped: int = 0  # lines with a timestamp

    def finished(self) -> list[Task]:
        return sorted((t for t in self.tasks.values()
                       if not math.isnan(t.launch) and not math.isnan(t.release)),
                      key=lambda t: t.launch)


def parse_log(text: str) -> ServerLog:
    log = ServerLog()
    for line in text.splitlines():
        m = _STAMP.match(line)
        if not m:
            continue
        log.stamped += 1
        t = int(m[1]) * 60 + int(m[2]) + int(m[3]) / 1e3 + int(m[4]) / 1e6
        if x := _LAUNCH.search(line):
            log.tasks.setdefault(int(x[1]), Task()).launch = t
        elif x := _PROMPT.search(line):
            task = log.tasks.setdefault(int(x[1]), Task())
            task.prompt_ms, task.prompt_tokens = float(x[2]), int(x[3])
        elif x := _EVAL.search(line):
            task = log.tasks.setdefault(int(x[1]), Task())
            task.eval_ms, task.generated = float(x[2]), int(x[3])
        elif x := _RELEASE.search(line):
            log.tasks.setdefault(int(x[1]), Task()).release = t
    return log


def read_from(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def settle(url: str, log_path: Path, offset: int, timeout_s: float = 5.0
           ) -> tuple[dict[str, float], ServerLog]:
    """The server's counters and log once it has finished all it was given (its log is written
    by a thread of its own: wait until every launched request has its release line)."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = scrape(url)
        log = parse_log(read_from(log_path, offset))
        pending = [t for t in log.tasks.values() if math.isnan(t.release)]
        if not pending or time.monotonic() > deadline:
            return metrics, log
        time.sleep(0.2)


def server_truth(before: dict[str, float], after: dict[str, float], log: ServerLog,
                 counted: int | None) -> dict[str, Any]:
    """What the server did during one tool's run; ``counted``: the requests the tool reports
    (when the server served more, the extra ones were the tool's warm-up, sent first)."""
    def delta(name: str) -> float:
        return after.get(name, math.nan) - before.get(name, math.nan)

    decodes = delta("n_decode_total")
    busy = (after.get("n_busy_slots_per_decode", math.nan) * after.get("n_decode_total", 0)
            - before.get("n_busy_slots_per_decode", math.nan) * before.get("n_decode_total", 0))
    tasks = log.finished()
    truth: dict[str, Any] = {
        "output_tokens": int(delta("tokens_predicted_total")),
        "prompt_tokens": int(delta("prompt_tokens_total") + delta("prompt_tokens_cached_total")),
        "prompt_tokens_cached": int(delta("prompt_tokens_cached_total")),
        "decode_calls": int(decodes),
        "streams_per_decode": busy / decodes if decodes > 0 else None,
        "generation_s_sum": delta("tokens_predicted_seconds_total"),
        "requests": len(tasks), "log_lines": log.stamped}
    truth["all"] = _span(tasks)
    extra = len(tasks) - counted if counted is not None else 0
    truth["warmup_requests"] = extra if extra > 0 else 0
    truth["measured"] = _span(tasks[extra:]) if extra > 0 else truth["all"]
    if tasks:
        truth["prompt_ms_p50"] = float(np.median([t.prompt_ms for t in tasks]))
        # llama.cpp times generation from its first token: (n - 1) gaps, as a client's TPOT
        truth["tpot_ms_p50"] = float(np.median([t.eval_ms / (t.generated - 1) for t in tasks
                                                if t.generated > 1]))
        truth["generated_per_request"] = sorted({t.generated for t in tasks})
    return truth


def _span(tasks: list[Task]) -> dict[str, Any]:
    if not tasks:
        return {"requests": 0, "window_s": None, "output_tokens": 0,
                "output_tokens_per_s": None, "requests_per_s": None}
    window = max(t.release for t in tasks) - tasks[0].launch
    tokens = sum(t.generated for t in tasks)
    return {"requests": len(tasks), "window_s": window, "output_tokens": tokens,
            "output_tokens_per_s": tokens / window if window > 0 else None,
            "requests_per_s": len(tasks) / window if window > 0 else None}


# -- the model, the tokenizer and the server -----------------------------------------------------


def llama_kit() -> Any:
    """tests/llama_server.py (imported by path: the tests' own helper for a real llama-server)."""
    sys.path.insert(0, str(REPO / "tests"))
    import llama_server

    return llama_server


def prepare(kit: Any, folder: Path) -> tuple[Path, Path]:
    """The tiny GGUF model and its tokenizer as a Hugging Face folder every tool can load."""
    vocab = kit.read_vocab(kit.vocab_file())
    model = kit.write_tiny_model(folder / "tiny-qwen2-vocab.gguf", vocab)
    tok = kit.write_hf_tokenizer(folder / "tokenizer", vocab)
    # transformers' AutoTokenizer (vLLM bench, guidellm, AIPerf) wants a class and a model type
    config = json.loads((tok / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="PreTrainedTokenizerFast", model_max_length=1_000_000)
    (tok / "tokenizer_config.json").write_text(json.dumps(config))
    n_vocab = len(vocab["tokenizer.ggml.tokens"])
    (tok / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": n_vocab}))
    return model, tok


@contextlib.contextmanager
def no_prompt_memory() -> Iterator[None]:
    """Start llama-server without its RAM prompt cache (``LLAMA_ARG_CACHE_RAM=0``, read at its
    start): each round's tools send the same prompts as the round before, which the cache would
    hand back without prefill. A slot still reuses the prefix it shares with its last prompt
    (the chat template), as a server in service does."""
    old = os.environ.get("LLAMA_ARG_CACHE_RAM")
    os.environ["LLAMA_ARG_CACHE_RAM"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LLAMA_ARG_CACHE_RAM", None)
        else:
            os.environ["LLAMA_ARG_CACHE_RAM"] = old


def server_version(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url + "/props", timeout=10) as resp:
            props = json.loads(resp.read())
        return props.get("build_info") or props.get("version")
    except (urllib.error.URLError, OSError, ValueError):
        return None


# -- one tool ------------------------------------------------------------------------------------


class MachineSampler(CpuSampler):
    """CpuSampler plus the whole machine's busy CPU time: on a shared machine, what other
    processes took during a run (it moves the server's speed, and so the truth)."""

    def __init__(self, tool_pid: int, server_pid: int | None) -> None:
        self.machine: list[tuple[float, float]] = []
        super().__init__(tool_pid, server_pid)

    def _sample(self) -> None:
        super()._sample()
        c = psutil.cpu_times()
        busy = c.user + c.nice + c.system + getattr(c, "irq", 0.0) + \
            getattr(c, "softirq", 0.0) + getattr(c, "steal", 0.0)
        self.machine.append((time.perf_counter(), busy))

    def machine_over(self, a: float, b: float) -> float:
        """Busy CPU seconds of the whole machine between perf_counter times a and b."""
        if len(self.machine) < 2 or b <= a:
            return math.nan
        t, busy = (np.asarray(x) for x in zip(*self.machine, strict=True))
        return float(np.interp(b, t, busy) - np.interp(a, t, busy))


def busy_window(sampler: MachineSampler) -> tuple[float, float] | None:
    """perf_counter span where the server burned more than BUSY_CORES (its run, without the
    tool's start-up and report writing), less 10% at each end."""
    if len(sampler.samples) < 3:
        return None
    t, _, server = (np.asarray(x) for x in zip(*sampler.samples, strict=True))
    rate = np.diff(server) / np.diff(t)
    busy = np.flatnonzero(rate > BUSY_CORES)
    if busy.size == 0:
        return None
    a, b = t[busy[0]], t[busy[-1] + 1]
    trim = 0.1 * (b - a)
    return (a + trim, b - trim) if b - a > 1.0 else (a, b)


def run_tool(tool: Tool, srv: Any, load: Load, tmp: Path, tokenizer: Path,
             console: Console) -> dict[str, Any]:
    row: dict[str, Any] = {"tool": tool.name, "concurrency": load.concurrency,
                           "requests": load.requests}
    reason = tool.missing()
    if reason:
        console.print(f"  [yellow]{tool.name}: missing ({reason})[/yellow]")
        return {**row, "status": "missing", "reason": reason}
    out = tmp / tool.name
    out.mkdir(parents=True)
    argv, env = tool.command(srv.base_url, load, out, tokenizer)
    row["command"] = argv
    before = scrape(srv.base_url)
    offset = srv.log.stat().st_size
    limit_s = 300 + 10 * load.requests
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.perf_counter()
    rc, sampler = run_child(argv, out, limit_s, lambda pid: MachineSampler(pid, srv.proc.pid),
                            env=env, cwd=out)
    wall = time.perf_counter() - wall0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    after, log = settle(srv.base_url, srv.log, offset)
    row.update(wall_s=wall, exit_code=rc,
               tool_cpu_total_s=(ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime))
    tail = (out / "stderr.txt").read_text(errors="replace")[-1500:]
    if rc != 0:
        why = "timed out" if rc is None else f"exit code {rc}"
        console.print(f"  [red]{tool.name}: failed ({why})[/red] {tail[-300:]}")
        return {**row, "status": "failed", "reason": why, "stderr_tail": tail,
                "server": server_truth(before, after, log, None)}
    try:
        rep = tool.parse(out)
    except (OSError, KeyError, IndexError, TypeError, ValueError) as exc:
        console.print(f"  [red]{tool.name}: unreadable results {exc!r}[/red]")
        return {**row, "status": "failed", "reason": f"unreadable results: {exc!r}",
                "stderr_tail": tail, "server": server_truth(before, after, log, None)}
    truth = server_truth(before, after, log, rep.requests_ok)
    cpu: dict[str, Any] = {"window_s": None, "tool_cores": None, "server_cores": None,
                           "other_cores": None, "tool_cpu_us_per_token": None}
    win = busy_window(sampler)
    if win:
        tool_s, server_s = sampler.over(*win)
        span = win[1] - win[0]
        rate = truth["measured"]["output_tokens_per_s"]
        other = sampler.machine_over(*win) - tool_s - server_s
        cpu = {"window_s": span, "tool_cores": tool_s / span, "server_cores": server_s / span,
               "other_cores": max(other, 0.0) / span,
               # cores / (tokens per s) = CPU seconds per token
               "tool_cpu_us_per_token": tool_s / span / rate * 1e6 if rate else None}
    reported = {k: v for k, v in vars(rep).items()}
    meas = truth["measured"]
    ratio = (rep.output_tokens_per_s / meas["output_tokens_per_s"]
             if meas["output_tokens_per_s"] and not math.isnan(rep.output_tokens_per_s)
             else None)
    row.update(status="ok", reported=reported, server=truth, cpu=cpu,
               output_tokens_per_s_ratio=ratio)
    console.print(f"  [dim]{tool.name:9} {wall:5.1f} s: reported "
                  f"{_num(rep.output_tokens_per_s, '.1f')} out tok/s, server "
                  f"{_num(meas['output_tokens_per_s'], '.1f')} ({meas['requests']} requests, "
                  f"{meas['output_tokens']} tokens in {_num(meas['window_s'], '.2f')} s; "
                  f"{truth['warmup_requests']} warm-up); "
                  f"{_num(cpu['tool_cores'], '.2f')} tool cores[/dim]")
    return row


# -- output --------------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]], load: Load, threads: int) -> Table:
    t = Table(title=f"llama-server ({threads} thread(s)), {load.concurrency} streams "
                    f"(closed loop), {load.input_tokens}-token prompts, {load.output_tokens} "
                    f"output tokens, {load.requests} requests per tool: each tool's report vs "
                    "the server's count")
    for col in ("tool", "out tok/s rep / server", "rep/server", "requests rep / server",
                "out tokens rep / server", "duration s rep / server", "streams/batch",
                "TTFT p50 ms", "TPOT p50 ms", "cores tool/server/other", "tool CPU µs/tok"):
        t.add_column(col, justify="right")
    t.caption = ("server: llama.cpp's /metrics counters and its log (first slot launch -> last "
                 "release) for the requests the tool counts; +1: a warm-up request the tool "
                 "sent first and does not count; failed: requests the tool reports as errors. "
                 "TTFT/TPOT as reported, the server's own prompt time / time per generated "
                 "token in brackets. Cores: over the server's busy stretch; other: the rest of "
                 "the (shared) machine")
    last = None
    for r in rows:
        if last is not None and r.get("round") != last:
            t.add_section()
        last = r.get("round")
        name = f"{r['tool']} ({r['round']})" if "round" in r else r["tool"]
        if r.get("status") != "ok":
            t.add_row(name, f"[yellow]{r['status']}[/yellow]", *[""] * 9)  # why: printed above
            continue
        rep, s, cpu = r["reported"], r["server"], r["cpu"]
        m = s["measured"]
        x = rep["extra"]
        warm = f" +{s['warmup_requests']}" if s["warmup_requests"] else ""
        failed = f" [red]({x['failed']} failed)[/red]" if x.get("failed") else ""
        t.add_row(
            name,
            f"{_num(rep['output_tokens_per_s'], '.1f')} / {_num(m['output_tokens_per_s'], '.1f')}",
            _num(r["output_tokens_per_s_ratio"], ".3f"),
            f"{rep['requests_ok']}{failed} / {m['requests']}{warm}",
            f"{_num(x.get('output_tokens'), '.0f')} / {m['output_tokens']}",
            f"{_num(x.get('duration_s'), '.2f')} / {_num(m['window_s'], '.2f')}",
            _num(s.get("streams_per_decode"), ".2f"),
            f"{rep['ttft_p50'] * 1e3:.1f} ({_num(s.get('prompt_ms_p50'), '.1f')})",
            f"{rep['tpot_p50'] * 1e3:.2f} ({_num(s.get('tpot_ms_p50'), '.2f')})",
            f"{_num(cpu['tool_cores'], '.2f')}/{_num(cpu['server_cores'], '.2f')}/"
            f"{_num(cpu['other_cores'], '.2f')}",
            _num(cpu["tool_cpu_us_per_token"], ".0f"))
    return t


# -- main ----------------------------------------------------------------------------------------


def _ints(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(",") if x)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_REQUESTS} requests per tool instead of {FULL_REQUESTS}")
    p.add_argument("--tools", default=",".join(DEFAULT_TOOLS),
                   help=f"comma-separated subset of {','.join(TOOLS)}")
    p.add_argument("--requests", type=int, help="requests per tool")
    p.add_argument("--rounds", type=int,
                   help="runs of every tool, the order reversed each round (default: 2; "
                        "--quick: 1); outside load on a shared machine differs run to run")
    p.add_argument("--threads", type=_ints,
                   help="llama-server thread counts, one server each (default 1,2; --quick: 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file ({DEFAULT_OUT})")
    p.add_argument("--keep", type=Path,
                   help="keep the model, server log and each tool's output in this new folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    started = time.perf_counter()
    kit = llama_kit()
    binary = kit.server_binary()
    if binary is None:
        console.print("[yellow]llama-server is not built: run scripts/build-llama-server.sh "
                      "(needs cmake, a C++ compiler and PyPI access once); nothing measured, "
                      f"{args.out} left as it was[/yellow]")
        return 0
    requests = args.requests or (QUICK_REQUESTS if args.quick else FULL_REQUESTS)
    rounds = args.rounds or (1 if args.quick else 2)
    threads = args.threads or ((1,) if args.quick else (1, 2))
    load = Load(CONCURRENCY, requests, 1, input_tokens=INPUT_TOKENS,
                output_tokens=OUTPUT_TOKENS, model=MODEL)
    from client_overhead import machine_info
    info = machine_info()
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    servers: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="slobench-real-engine-") as tmpdir:
        tmp = Path(tmpdir)
        if args.keep:
            args.keep.mkdir(parents=True)
            tmp = args.keep
        try:
            model, tokenizer = prepare(kit, tmp)
        except (ImportError, OSError, ValueError) as exc:
            console.print(f"[yellow]cannot write the tiny model or its tokenizer ({exc!r}); "
                          f"nothing measured, {args.out} left as it was[/yellow]")
            return 0
        tools = make_tools([t for t in args.tools.split(",") if t], tokenizer / "tokenizer.json")
        console.print(f"[bold]real-engine agreement[/bold] ({'quick' if args.quick else 'full'}):"
                      f" {info['cpu_count']} CPUs, load {load_before[0]:.2f}; llama-server "
                      f"{SLOTS} slots, threads {', '.join(map(str, threads))}; {requests} "
                      f"requests per tool, {rounds} round(s); tools "
                      f"{', '.join(t.name for t in tools)}")
        for n in threads:
            console.print(f"llama-server with {n} thread(s)")
            try:
                with no_prompt_memory(), \
                        kit.LlamaServer(binary, model, slots=SLOTS, ctx_per_slot=CTX_PER_SLOT,
                                        log=tmp / f"server-t{n}.log", threads=n) as srv:
                    servers.append({"threads": n, "version": server_version(srv.base_url),
                                    "command": [str(x) for x in srv.proc.args]})
                    for r in range(rounds):
                        for tool in (tools if r % 2 == 0 else tools[::-1]):
                            row = run_tool(tool, srv, load, tmp / f"t{n}-round{r + 1}",
                                           tokenizer, console)
                            rows.append({"server_threads": n, "round": r + 1, **row})
            except RuntimeError as exc:  # the server did not start
                console.print(f"[red]llama-server ({n} threads) failed: {exc}[/red]")
                servers.append({"threads": n, "error": str(exc)[-1500:]})
    for n in threads:
        console.print(table([r for r in rows if r["server_threads"] == n], load, n))
    result = {
        "benchmark": "real_engine_agreement",
        "mode": "quick" if args.quick else "full",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
        "tool_versions": {**tool_versions(),
                          "llama-server": next((x.get("version") for x in servers), None)},
        "machine": info,
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "server": {"binary": str(binary), "slots": SLOTS, "ctx_per_slot": CTX_PER_SLOT,
                   "model": "tiny random-weight llama GGUF with Qwen2's vocabulary "
                            "(tests/llama_server.py)", "runs": servers},
        "load": {"concurrency": load.concurrency, "requests": load.requests, "rounds": rounds,
                 "input_tokens": load.input_tokens, "output_tokens": load.output_tokens},
        "rows": rows,
        "runtime_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_clean(result), indent=2) + "\n")
    console.print(f"wrote {args.out} in {result['runtime_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
