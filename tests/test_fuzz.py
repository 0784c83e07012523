"""Hostile input: property-based fuzzing (hypothesis) of every parser of outside input.

The contract, for any input: a parser returns a valid result or raises ``UserError`` whose message
is one non-empty line naming where the problem is (the option, or the file); no other exception,
and bounded time and memory on huge inputs. The servers (the engine emulator, the scripted server)
answer any request body with an HTTP status (4xx for a bad one), stay up and log no traceback; the
client turns any hostile SSE stream into a record with a definite status.

Runs are deterministic (``derandomize=True``, no example database): CI fuzzes the same inputs every
time. ``SLOBENCH_FUZZ_COUNTS=path.json`` writes how many inputs each parser was fed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import tempfile
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import bench, fixed_workload, records_of
from slobench.client.runner import Timeouts
from slobench.client.sse import SSEParser
from slobench.errors import UserError

FUZZED: Counter[str] = Counter()
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def fuzz(n: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Deterministic hypothesis settings: ``n`` examples, no deadline (the machine is loaded),
    no example database, no health check about slow data generation."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=False)


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    total = sum(v for k, v in FUZZED.items() if " status " not in k)  # statuses: a breakdown
    print(f"\nfuzzed {total} inputs: " + ", ".join(f"{k}={v}" for k, v in sorted(FUZZED.items())))
    out = os.environ.get("SLOBENCH_FUZZ_COUNTS")
    if out:
        Path(out).write_text(json.dumps({"total": total, "per_parser": dict(FUZZED)}, indent=1))


def contract(name: str, call: Callable[[], Any], where: str | None = None) -> Any:
    """Run one parser call: a result, or a one-line UserError (naming ``where`` if given)."""
    FUZZED[name] += 1
    try:
        return call()
    except UserError as exc:
        msg = str(exc)
        assert msg.strip(), f"{name}: empty UserError"
        assert len(msg.splitlines()) == 1, f"{name}: multi-line UserError {msg!r}"
        assert not _CONTROL.search(msg), f"{name}: control character in UserError {msg!r}"
        if where is not None:
            assert where in msg, f"{name}: error does not name {where!r}: {msg!r}"
        return None


# ============================================================================ text grammars

def tokens_text(tokens: list[str], max_size: int = 14) -> st.SearchStrategy[str]:
    """Texts made of grammar-ish tokens (finds more than uniform noise), or arbitrary text."""
    return st.one_of(
        st.lists(st.sampled_from(tokens), max_size=max_size).map("".join),
        st.text(max_size=40),
    )


NUMBERS = ["0", "1", "-1", "2.5", ".5", "1e400", "-0", "1e-400", "nan", "inf", "-inf",
           "9" * 30, "0x10", "1_000", "١", "+3", "1e", "3."]
SPACES = [" ", "\t", "\n", "\r", "\x00", "\u00a0", "\u2028"]
SLO_TOKENS = [*NUMBERS, *SPACES, "ttft", "tpot", "itl", "e2e", "ttfa", "deadline", "attain",
              "TTFT", "chatbot", "*", "coding", ":", ";", ",", "<=", ">=", "<", "=", "≤", "≥",
              "s", "ms", "us", "µs", "min", "h", "%", "+", "/tok", "/", "é"]


@fuzz(600)
@given(tokens_text(SLO_TOKENS, 20))
def test_slo_spec(text: str) -> None:
    from slobench.slo.spec import parse_slo

    slos = contract("slo.parse_slo", lambda: parse_slo(text), "--slo")
    if slos is not None:  # a valid spec round-trips through its text form
        for cls in slos.classes.values():
            assert all(c.limit_s > 0 and math.isfinite(c.limit_s) for c in cls.constraints)
            assert 0 <= cls.attain <= 1
        assert parse_slo(slos.to_text()) == slos


DURATION_TOKENS = [*NUMBERS, *SPACES, "s", "ms", "us", "µs", "min", "h", "m", "d", "e", "."]


@fuzz(300)
@given(tokens_text(DURATION_TOKENS, 6))
def test_units_duration(text: str) -> None:
    from slobench.units import parse_duration

    value = contract("units.parse_duration", lambda: parse_duration(text, "--duration"),
                     "--duration")
    if value is not None:
        assert math.isfinite(value) and value >= 0


RATE_TOKENS = [*NUMBERS, *SPACES, "ramp:", "step:", "..", "/", "+", "s", "ms", "min", "h", ",",
               "poisson", "gamma", ":"]


@fuzz(400)
@given(tokens_text(RATE_TOKENS, 12))
def test_rate_spec(text: str) -> None:
    from slobench.workload.arrivals import parse_rate

    rate = contract("arrivals.parse_rate", lambda: parse_rate(text))
    if rate is not None:
        r = np.asarray(rate.rate(np.array([0.0, 1.0, 1e3])))
        assert np.isfinite(r).all() and (r >= 0).all()


LENGTH_TOKENS = [*NUMBERS, *SPACES, "fixed:", "uniform:", "lognormal:", "mean=", "cv=", "min=",
                 "max=", "..", ",", "=", ":", "geometric:", "pmf:", "exp:"]


@fuzz(400)
@given(tokens_text(LENGTH_TOKENS, 12))
def test_length_spec(text: str) -> None:
    from slobench.workload.lengths import parse_length

    dist = contract("lengths.parse_length", lambda: parse_length(text, what="--input-tokens"),
                    "--input-tokens")
    if dist is not None:
        draws = np.asarray(dist.sample(50, np.random.default_rng(0)))
        assert draws.shape == (50,) and (draws >= 1).all()


@fuzz(300)
@given(tokens_text(LENGTH_TOKENS, 12))
def test_turns_spec(text: str) -> None:
    from slobench.workload.sessions import parse_turns

    contract("sessions.parse_turns", lambda: parse_turns(text, what="--turns"), "--turns")


@fuzz(300)
@given(tokens_text([*LENGTH_TOKENS, *DURATION_TOKENS], 12))
def test_think_time_spec(text: str) -> None:
    from slobench.workload.sessions import parse_seconds

    contract("sessions.parse_seconds", lambda: parse_seconds(text, what="--think"), "--think")


@fuzz(300)
@given(tokens_text([*NUMBERS, *SPACES, "chatbot", "coding", ":", ",", "=", "*", "é"], 10))
def test_app_mix(text: str) -> None:
    from slobench.workload.synthetic import parse_app_mix

    mix = contract("synthetic.parse_app_mix", lambda: parse_app_mix(text), "--apps")
    if mix is not None:
        assert mix and abs(sum(mix.values()) - 1) < 1e-9
        assert all(math.isfinite(w) and w >= 0 for w in mix.values())


@fuzz(300)
@given(tokens_text([*NUMBERS, *SPACES, "429", "503", "200", "999", ":", ",", "0.5"], 10))
def test_emulator_error_rates(text: str) -> None:
    from slobench.engine.emulator import parse_error_rates

    rates = contract("emulator.parse_error_rates", lambda: parse_error_rates(text),
                     "--error-rate")
    if rates is not None:
        assert all(0 <= p <= 1 for p in rates.values())


GATE_TOKENS = [*NUMBERS, *SPACES, "goodput", "ttft", ".p99", ".p50", ".p7", "attainment",
               "chatbot:", "<", ">", "<=", "%", "ms", "s", "pp", "req/s", "-", "+", "."]


@fuzz(500)
@given(tokens_text(GATE_TOKENS, 10))
def test_compare_gate(text: str) -> None:
    from slobench.report.compare import parse_gate

    gate = contract("compare.parse_gate", lambda: parse_gate(text), "--fail-if")
    if gate is not None:
        assert math.isfinite(gate.value)


@fuzz(300)
@given(tokens_text([*NUMBERS, *SPACES, "d", "w", "days", "h", "min", "2026-05-01", "T",
                    "10:00", "+02:00", "Z", "-", ":"], 8))
def test_catalog_since(text: str) -> None:
    from slobench.store.catalog import parse_since

    contract("catalog.parse_since", lambda: parse_since(text), "--since")


DIST_TOKENS = [*NUMBERS, *SPACES, "{", "}", ":", ",", "0.5", "224", "(", "__import__", "'"]


@fuzz(400)
@given(st.one_of(tokens_text(DIST_TOKENS, 16), st.integers(), st.none(), st.lists(st.integers())))
def test_servegen_distribution(text: Any) -> None:
    from slobench.workload.servegen import parse_distribution

    got = contract("servegen.parse_distribution",
                   lambda: parse_distribution(text, source="chunk-0-dataset.json"),
                   "chunk-0-dataset.json")
    if got is not None:
        values, probs = got
        assert len(values) == len(probs) and np.isfinite(values).all() and (probs >= 0).all()


def _bounded(name: str, call: Callable[[], Any], size: int, *, max_s: float,
             max_bytes_per_input_byte: float) -> None:
    """A huge input: a clean result or UserError within ``max_s`` and a bounded peak of Python
    memory (tracemalloc) relative to the input size."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        contract(name, call)
    finally:
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < max_s, f"{name}: {elapsed:.1f} s on a {size / 1e6:.0f} MB input"
    assert peak < max_bytes_per_input_byte * size + 50e6, (
        f"{name}: peak {peak / 1e6:.0f} MB on a {size / 1e6:.0f} MB input")


HUGE = 50_000_000


@pytest.mark.parametrize("shape", ["one_name", "repeated_class", "spaces", "one_value"])
def test_huge_slo_spec_is_bounded(shape: str) -> None:
    from slobench.slo.spec import parse_slo

    text = {"one_name": "x" * HUGE,
            "repeated_class": "chatbot: ttft<=1s;" * (HUGE // 18),
            "spaces": " " * HUGE + "chatbot: ttft<=1s",
            "one_value": "chatbot: ttft<=" + "9" * HUGE + "ms"}[shape]
    _bounded("slo.parse_slo(50MB)", lambda: parse_slo(text), len(text), max_s=30,
             max_bytes_per_input_byte=6)


@pytest.mark.parametrize("parser", ["gate", "rate", "length", "app_mix", "error_rates",
                                    "duration", "distribution"])
def test_huge_option_is_bounded(parser: str) -> None:
    from slobench.engine.emulator import parse_error_rates
    from slobench.report.compare import parse_gate
    from slobench.units import parse_duration
    from slobench.workload.arrivals import parse_rate
    from slobench.workload.lengths import parse_length
    from slobench.workload.servegen import parse_distribution
    from slobench.workload.synthetic import parse_app_mix

    size = 10_000_000
    calls: dict[str, Callable[[], Any]] = {
        "gate": lambda: parse_gate("ttft.p99 < " + "1" * size + "%"),
        "rate": lambda: parse_rate("ramp:1.." + "2" * size + "/60s"),
        "length": lambda: parse_length("lognormal:mean=" + "5" * size + ",cv=1"),
        "app_mix": lambda: parse_app_mix("a:1," * (size // 4)),
        "error_rates": lambda: parse_error_rates("429:0.1," * (size // 8)),
        "duration": lambda: parse_duration("1" * size + "s", "--duration"),
        "distribution": lambda: parse_distribution("{" + "1: 0.5, " * (size // 8) + "}"),
    }
    _bounded(f"{parser}(10MB)", calls[parser], size, max_s=30, max_bytes_per_input_byte=20)


# ============================================================================ files

INTERESTING = [b",", b"\n", b"\r\n", b"\"", b"'", b"{", b"}", b"[", b"]", b":", b"=", b" ", b"-1",
               b"0", b"1e999", b"nan", b"-inf", b"99999999999999999999999", b"\xff\xfe",
               b"\x00", b"\xef\xbb\xbf", b"null", b"true", b"[1, 2]", b"{}", b"2023-13-45",
               b"\xc3\xa9", b"#", b"\\", b"\t"]


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few edits (replace, insert, delete, duplicate a line, truncate), or
    arbitrary bytes: malformed in the ways real files are (plus noise)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        end = min(len(data), at + draw(st.integers(0, 12)))
        piece = draw(st.one_of(st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=6)))
        kind = draw(st.sampled_from(["replace", "insert", "delete", "dup_line", "truncate"]))
        if kind == "replace":
            data[at:end] = piece
        elif kind == "insert":
            data[at:at] = piece
        elif kind == "delete":
            del data[at:end]
        elif kind == "dup_line":
            lines = bytes(data).split(b"\n")
            i = min(len(lines) - 1, at % max(1, len(lines)))
            lines.insert(i, lines[i])
            data = bytearray(b"\n".join(lines))
        else:
            del data[at:]
    return bytes(data)


def write(name: str, data: bytes) -> Path:
    """``data`` in a fresh temporary directory (hypothesis examples cannot share tmp_path)."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    path = folder / name
    path.write_bytes(data)
    return path


def check_workload(table: pa.Table) -> None:
    from slobench.schema import WORKLOAD_SCHEMA

    assert table.schema.names[:len(WORKLOAD_SCHEMA.names)] == WORKLOAD_SCHEMA.names
    arrival = table.column("arrival_s").to_numpy(zero_copy_only=False)
    assert np.isfinite(arrival).all()
    for col in ("input_tokens", "output_tokens"):
        assert (table.column(col).to_numpy(zero_copy_only=False) >= 0).all()


TRACES: dict[str, tuple[str, bytes]] = {
    "azure": ("azure.csv", b"TIMESTAMP,ContextTokens,GeneratedTokens\n"
              b"2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n"
              b"2023-11-16 18:15:51.1000000,879,15\n"),
    "burstgpt": ("burst.csv", b"Timestamp,Model,Request tokens,Response tokens,Total tokens,"
                 b"Log Type\n5,ChatGPT,472,18,490,Conversation log\n45,GPT-4,1087,0,1087,"
                 b"API log\n118,ChatGPT,417,276,693,Conversation log\n"),
    "vidur": ("vidur.csv", b"arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,100,20\n"
              b"0.25,2048,7\n1.5,12,300\n"),
    "mooncake": ("mooncake.jsonl", b'{"timestamp": 0, "input_length": 100, "output_length": 10,'
                 b' "hash_ids": [1, 2]}\n{"timestamp": 250, "input_length": 900, '
                 b'"output_length": 3, "hash_ids": [1, 2, 3]}\n'),
    "jsonl": ("workload.jsonl", b'{"arrival_s": 0.0, "input_tokens": 10, "output_tokens": 5, '
              b'"app": "chatbot", "prefix_blocks": [1]}\n{"arrival_s": 0.5, "input_tokens": 7,'
              b' "output_tokens": 2, "client_id": "c1", "session_id": "s", "turn": 1}\n'),
}


@pytest.mark.parametrize("fmt", [*TRACES, "auto"])
def test_trace_files(fmt: str) -> None:
    from slobench.workload.traces import load_trace

    seeds = [TRACES[fmt]] if fmt in TRACES else list(TRACES.values())

    @fuzz(120)
    @given(st.sampled_from(seeds).flatmap(
        lambda s: st.tuples(st.just(s[0]), mutated(s[1]))))
    def run(case: tuple[str, bytes]) -> None:
        path = write(*case)
        table = contract(f"traces.load_trace({fmt})", lambda: load_trace(path, fmt), path.name)
        if table is not None:
            check_workload(table)

    run()


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


@fuzz(150)
@given(mutated(_parquet_bytes(fixed_workload(4))))
def test_workload_parquet(data: bytes) -> None:
    from slobench.schema import read_workload
    from slobench.workload.traces import load_trace

    path = write("workload.parquet", data)
    table = contract("schema.read_workload", lambda: read_workload(path), path.name)
    if table is not None:
        check_workload(table)
    contract("traces.load_trace(parquet)", lambda: load_trace(path, "parquet"), path.name)


@fuzz(120)
@given(mutated(_parquet_bytes(pa.table({"arrival_s": [0.0, 1.0, 2.0],
                                        "input_tokens": [10, 20, 30],
                                        "output_tokens": [1, 2, 3]}))))
def test_workload_parquet_columns(data: bytes) -> None:
    """A Parquet file of the wrong shape (columns, types) is a UserError too."""
    from slobench.schema import read_workload

    path = write("cols.parquet", data)
    contract("schema.read_workload(columns)", lambda: read_workload(path), path.name)


LOG_SEEDS = [
    ("log.csv", b"timestamp,user,prompt_tokens,completion_tokens,session_id\n"
                b"0.0,a,100,20,s1\n0.5,b,200,10,s2\n0.9,a,50,5,s1\n1.3,a,70,8,s3\n"),
    ("log.jsonl", b'{"arrival_s": 0.0, "client_id": "a", "input_tokens": 5, "output_tokens": 2}\n'
                  b'{"arrival_s": 1.0, "client_id": "b", "input_tokens": 6, "output_tokens": 3}\n'),
]


@fuzz(150)
@given(st.sampled_from(LOG_SEEDS).flatmap(lambda s: st.tuples(st.just(s[0]), mutated(s[1]))))
def test_fit_logs(case: tuple[str, bytes]) -> None:
    from slobench.workload.fit import fit_pool, read_log

    path = write(*case)
    contract("fit.read_log", lambda: read_log(path), path.name)
    contract("fit.fit_pool", lambda: fit_pool(path, window_s=1.0, block_s=1.0), path.name)


SG_TRACE = (b"0,0.5,2.0,Gamma,0.25,8.0\n600,1.5,1.2,Weibull,0.8,0.7\n"
            b"1200,0,0,,0,0\n")
SG_DATASET = json.dumps({"0": {"input_tokens": "{100: 0.25, 200: 0.75}",
                               "output_tokens": "{10: 0.5, 20: 0.5,}"}}).encode()


@fuzz(150)
@given(mutated(SG_TRACE), mutated(SG_DATASET), st.booleans())
def test_servegen_pool(trace: bytes, dataset: bytes, cache: bool) -> None:
    from slobench.workload.servegen import load_pool

    folder = write("chunk-0-trace.csv", trace).parent
    (folder / "chunk-0-dataset.json").write_bytes(dataset)
    (folder / "chunk-1-trace.csv").write_bytes(SG_TRACE)
    contract("servegen.load_pool", lambda: load_pool(folder, cache=cache,
                                                    cache_dir=folder / "cache"), "chunk-")


SWEEP = b"""command = "python -m slobench emulate --port {port} --max-num-seqs {seqs}"
health = "/health"
startup_timeout = "60s"
[grid]
seqs = [4, 64]
[scenario]
rate = 4
duration = "2s"
input_tokens = "64"
"""
SHAPES = b'[coding]\nturns = "geometric:mean=12"\nthink_s = "500ms"\n[default]\nturns = 2\n'
CONFIGS: dict[str, tuple[str, bytes]] = {
    "sweep": ("sweep.toml", SWEEP),
    "sweep_json": ("sweep.json", json.dumps({"command": "x --p {port} {a}", "grid": {"a": [1]},
                                            "scenario": {"rate": 2}}).encode()),
    "shapes": ("shapes.toml", SHAPES),
    "shapes_json": ("shapes.json", json.dumps({"chatbot": {"kind": "agent",
                                                           "tool_result_tokens": 100}}).encode()),
    "rate": ("rate.csv", b"time_s,rate\n0,1\n60,5.5\n120,0\n"),
    "gpu": ("gpu.json", json.dumps({"bf16_tflops": 990, "hbm_tb_s": 3.35, "memory_gib": 80,
                                    "interconnect_gb_s": 450, "name": "mine"}).encode()),
    "cost": ("cost.toml", b"# overrides\n"),
    "prices": ("prices.toml", b'h100 = 2.5\na100-80gb = 1.2\n'),
    "hf_config": ("config.json", json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
        "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
        "torch_dtype": "bfloat16"}).encode()),
    "sharegpt": ("sharegpt.json", json.dumps([{"id": "a", "conversations": [
        {"from": "human", "value": "hello there"}, {"from": "gpt", "value": "hi, how can I"}]}
    ]).encode()),
    "prompt_jsonl": ("prompts.jsonl", b'{"prompt": "write a poem", "output_tokens": 20}\n'
                                      b'{"messages": [{"role": "user", "content": "hi"}]}\n'),
}


def _load_config(kind: str, path: Path) -> Any:
    from slobench.engine.costmodel import load_factors
    from slobench.engine.hardware import load_gpu_file
    from slobench.engine.models import load_hf_config
    from slobench.engine.prices import load_prices
    from slobench.prompts.datasets import read_dataset
    from slobench.sweep import load_sweep
    from slobench.workload.generate import read_rate_file
    from slobench.workload.sessions import load_shapes

    if kind.startswith("sweep"):
        return load_sweep(path)
    if kind.startswith("shapes"):
        return load_shapes(path)
    if kind in ("sharegpt", "prompt_jsonl"):
        return list(read_dataset(path))
    return {"rate": read_rate_file, "gpu": load_gpu_file, "cost": load_factors,
            "prices": load_prices, "hf_config": load_hf_config}[kind](path)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_config_files(kind: str) -> None:
    name, seed = CONFIGS[kind]

    @fuzz(80)
    @given(mutated(seed))
    def run(data: bytes) -> None:
        path = write(name, data)
        contract(f"config.{kind}", lambda: _load_config(kind, path), path.name)

    run()


@fuzz(60)
@given(mutated(Path(__file__).parents[1].joinpath(
    "src/slobench/workload/profiles/language-small.npz").read_bytes()[:4000]))
def test_pool_npz(data: bytes) -> None:
    from slobench.workload.profiles import load_pool_file

    path = write("pool.npz", data)
    contract("profiles.load_pool_file", lambda: load_pool_file(path), path.name)


def test_huge_trace_file_is_bounded() -> None:
    """A 10^6-line trace: read in bounded time, or one clean error (a bad line near the end)."""
    from slobench.workload.traces import load_trace

    n = 1_000_000
    rows = "".join(f"{i * 0.01:.2f},{100 + i % 900},{1 + i % 50}\n" for i in range(n))
    path = write("big.csv", b"arrived_at,num_prefill_tokens,num_decode_tokens\n" + rows.encode())
    t0 = time.perf_counter()
    table = load_trace(path, "vidur")
    assert table.num_rows == n and time.perf_counter() - t0 < 30
    with path.open("ab") as fh:
        fh.write(b"1e999,5,5\n")  # one bad line at the end: its line number is named
    FUZZED["traces.load_trace(10^6 lines)"] += 2
    with pytest.raises(UserError, match=rf"big.csv:{n + 2}\b"):
        load_trace(path, "vidur")
    assert time.perf_counter() - t0 < 60


# ============================================================================ SSE parser

SSE_PIECES = [b"data: ", b"data:", b"{\"a\": 1}", b"[DONE]", b"\n", b"\r\n", b"\r", b"\n\n",
              b": comment", b"event: x", b"id: 7", b"retry: 1", b"data", b" ", b"\xff", b"\x00",
              b"x" * 70]


def _reference_events(data: bytes) -> list[bytes]:
    """The events of a whole stream, parsed line by line (the spec's rules the parser keeps:
    LF or CRLF ends a line, ``data:`` lines joined by LF, a blank line ends an event)."""
    events, buf = [], []
    *lines, tail = data.split(b"\n")
    for line in [*lines, tail, b""] if tail else [*lines, b""]:
        line = line[:-1] if line.endswith(b"\r") else line
        if not line:
            if buf:
                events.append(b"\n".join(buf))
            buf = []
        elif line.startswith(b"data:"):
            buf.append(line[6:] if line[5:6] == b" " else line[5:])
    return events


@fuzz(800)
@given(st.one_of(st.lists(st.sampled_from(SSE_PIECES), max_size=30).map(b"".join),
                 st.binary(max_size=200)),
       st.lists(st.integers(0, 400), max_size=12))
def test_sse_parser_split_invariance(stream: bytes, cuts: list[int]) -> None:
    """Any split of the bytes into reads gives the same events as the whole stream."""
    FUZZED["client.sse.SSEParser"] += 1
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    parser = SSEParser()
    events: list[bytes] = []
    for a, b in itertools.pairwise(bounds):
        events += parser.feed(stream[a:b])
    events += parser.close()
    assert events == _reference_events(stream)
    whole = SSEParser()
    assert whole.feed(stream) + whole.close() == events


def test_sse_parser_huge_line_is_linear() -> None:
    """A 20 MB event in 4 KB reads is one pass, not one pass per read."""
    FUZZED["client.sse.SSEParser"] += 1
    payload = b"data: " + b"x" * 20_000_000 + b"\n\n"
    parser = SSEParser()
    t0 = time.perf_counter()
    events = []
    for i in range(0, len(payload), 4096):
        events += parser.feed(payload[i:i + 4096])
    assert len(events) == 1 and len(events[0]) == 20_000_000
    assert time.perf_counter() - t0 < 20


# ============================================================================ hostile servers

DEFINITE = {"ok", "http_error", "timeout", "disconnect", "protocol_error", "connect_error"}
CHUNK = b'data: {"choices": [{"index": 0, "delta": {"content": " w"}, "finish_reason": null}]}\n\n'
HOSTILE_EVENTS = [
    CHUNK, CHUNK, b"data: [DONE]\n\n", b"data: {not json\n\n", b"data: []\n\n",
    b'data: "text"\n\n', b"data: null\n\n", b"data: 1e999\n\n", b"data: NaN\n\n",
    b'data: {"choices": null}\n\n', b'data: {"choices": [null]}\n\n',
    b'data: {"choices": {}}\n\n', b'data: {"choices": [{"delta": null}]}\n\n',
    b'data: {"choices": [{"delta": {"content": 5}}]}\n\n',
    b'data: {"choices": [{"delta": {"content": ["a"]}}]}\n\n',
    b'data: {"choices": [{"text": {"x": 1}}]}\n\n',
    b'data: {"choices": [{"delta": {"reasoning_content": 7}}]}\n\n',
    b'data: {"choices": [{"delta": {"content": "\\ud800"}}]}\n\n',
    b'data: {"choices": [], "usage": {"completion_tokens": -3, "prompt_tokens": "x"}}\n\n',
    b'data: {"choices": [], "usage": {"completion_tokens": 1e300}}\n\n',
    b'data: {"choices": [], "usage": {"completion_tokens_details": 5}}\n\n',
    b'data: {"choices": [], "usage": []}\n\n', b'data: {"error": {"message": "boom"}}\n\n',
    b'data: {"error": "plain"}\n\n', b": keepalive\n\n", b"event: ping\n", b"\r\n", b"\n",
    b"data:" + b"x" * 70_000 + b"\n\n", b"\xff\xfe\x00", b"HTTP/1.1 200 OK\r\n",
]


@st.composite
def hostile_response(draw: st.DrawFn) -> tuple[int, str, list[bytes]]:
    status = draw(st.sampled_from([200] * 6 + [204, 400, 429, 500, 503]))
    ctype = draw(st.sampled_from(["text/event-stream"] * 3 + ["application/json", "text/plain"]))
    events = draw(st.lists(st.one_of(st.sampled_from(HOSTILE_EVENTS), st.binary(max_size=40)),
                           max_size=8))
    body = b"".join(events)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=4))) | {0, len(body)})
    return status, ctype, [body[a:b] for a, b in itertools.pairwise(cuts)]


class HostileServer:
    """A real HTTP server (aiohttp, own thread) that answers completion requests with the next
    scripted hostile response, then closes."""

    def __init__(self) -> None:
        self.responses: list[tuple[int, str, list[bytes]]] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        assert self.ready.wait(20)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._answer)
        app.router.add_get("/v1/models", self._models)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.ready.set()
        self.loop.run_forever()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m"}]})

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        status, ctype, chunks = self.responses.pop(0) if self.responses else (200, "", [])
        resp = web.StreamResponse(status=status, headers={"Content-Type": ctype})
        await resp.prepare(request)
        for chunk in chunks:
            await resp.write(chunk)
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def hostile_server() -> Iterator[HostileServer]:
    srv = HostileServer()
    yield srv
    srv.close()


@pytest.mark.timeout(300)
def test_openai_client_on_hostile_streams(hostile_server: HostileServer) -> None:
    """Every hostile answer ends as a record with a definite status; the run completes."""
    n = 20

    @fuzz(6)
    @given(st.lists(hostile_response(), min_size=n, max_size=n))
    def run(responses: list[tuple[int, str, list[bytes]]]) -> None:
        hostile_server.responses[:] = list(responses)
        FUZZED["client.openai stream (end to end)"] += n
        tmp = Path(tempfile.mkdtemp(prefix="fuzz-run-"))
        a = bench(f"http://127.0.0.1:{hostile_server.port}", fixed_workload(n, gap_s=0.01), tmp,
                  # the stall limit ends a hung stream; the total limit stays well clear of the
                  # end-of-run drain (which also waits request_s: at equal deadlines a hung last
                  # request can be recorded as cancelled instead of timeout)
                  timeouts=Timeouts(request_s=15, connect_s=2, stall_s=1))
        rows = records_of(a)
        assert len(rows) == n and a.manifest["status"] == "complete"
        assert {r["status"] for r in rows} <= DEFINITE, [r["status"] for r in rows]
        FUZZED.update(f"client.openai status {r['status']}" for r in rows)
        for r in rows:
            assert r["error"] is None or "\n" not in r["error"] or r["status"] != "ok"
            assert r["output_tokens"] is None or r["output_tokens"] >= 0

    run()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False,
                                                                       allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "x"]) | JSON},
                                optional={"content": st.text(max_size=40) | JSON})
# max_tokens is always there and small, absurd or of a wrong type (never null: the emulator's
# default of 256 tokens in real time would make each valid request take seconds)
MAX_TOKENS = (st.integers(-3, 6) | st.integers(10**7, 2**70) | st.floats() | st.text(max_size=5)
              | st.booleans() | st.lists(st.integers(), max_size=2))
BODY = st.fixed_dictionaries({"max_tokens": MAX_TOKENS}, optional={
    "model": st.just("m") | JSON,
    "messages": st.lists(MESSAGE, max_size=3) | JSON,
    "prompt": st.text(max_size=60) | st.lists(st.integers(-5, 2**40), max_size=6) | JSON,
    "max_completion_tokens": st.integers(-3, 6) | JSON,
    "stream": st.booleans() | JSON,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": JSON}) | JSON,
    "priority": JSON,
    "slobench_script": JSON,
    "n": JSON,
})
REQUEST = st.one_of(
    BODY.map(lambda b: json.dumps(b, allow_nan=True).encode()),
    JSON.map(lambda b: json.dumps(b).encode()),
    st.binary(max_size=100),
    st.sampled_from([b"", b"{", b"[]", b"null", b'{"messages": "x"}', b'{"prompt": null}',
                     b"\xef\xbb\xbf{}", b'{"max_tokens": 1e400}', b'{"a": NaN}']),
)


def _post(url: str, body: bytes, ctype: str) -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def _fuzz_server(base_url: str, paths: list[str], name: str, n: int) -> None:
    @fuzz(n)
    @given(st.sampled_from(paths), REQUEST, st.sampled_from(["application/json", "text/plain",
                                                             "application/x-www-form-urlencoded"]))
    def run(path: str, body: bytes, ctype: str) -> None:
        FUZZED[name] += 1
        status = _post(base_url + path, body, ctype)
        assert 200 <= status < 500, f"{path} {body[:200]!r} -> HTTP {status}"

    run()
    with urllib.request.urlopen(base_url + "/health", timeout=10) as resp:  # still up
        assert resp.status == 200


@pytest.mark.timeout(300)
def test_emulator_request_bodies() -> None:
    from slobench.engine.config import EngineConfig
    from slobench.engine.emulator import EmulatorProcess

    with EmulatorProcess(EngineConfig()) as srv:
        _fuzz_server(srv.base_url, ["/v1/chat/completions", "/v1/completions", "/tokenize"],
                     "engine.emulator request body", 250)
        err = srv.stderr_text()
    assert "Traceback" not in err, err[-3000:]


@pytest.mark.timeout(300)
def test_scripted_server_request_bodies() -> None:
    from slobench.engine.scripted import ScriptedServerProcess

    with ScriptedServerProcess({"ttft_s": 0, "tpot_s": 0.001, "output_tokens": 4}) as srv:
        _fuzz_server(srv.base_url, ["/v1/chat/completions", "/v1/completions", "/tokenize",
                                    "/v1/chat/completions/render"],
                     "engine.scripted request body", 250)
        err = srv.stderr_text()
    assert "Traceback" not in err, err[-3000:]
