"""llama.cpp as a real target: the native ``llama-server`` built from the llama-cpp-python sdist
(scripts/build-llama-server.sh), serving a tiny random-weight llama model that embeds Qwen2's
real vocabulary and chat template (tests/llama_server.py).

What is checked against the real server: the converted tokenizer.json tokenizes exactly as the
server does; the chat template renders the same; streaming completions and chat through
slobench's own backend with exact input lengths (token-exact prompts from the tokenizer.json and
from the server's /tokenize) and forced output lengths (ignore_eos); multi-turn sessions;
concurrent streams served at once (-np slots); errors; /metrics; and the CLI end to end
(run -> report -> compare). Skips, saying why, when the server has not been built.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import records_of
from llama_server import (
    LlamaServer,
    http_json,
    read_vocab,
    server_binary,
    vocab_file,
    write_hf_tokenizer,
    write_tiny_model,
)
from slobench.benchmark import BenchmarkConfig, TargetConfig, run_benchmark
from slobench.client.pacing import LoadPlan
from slobench.client.runner import Timeouts
from slobench.prompts.tokenizer import HFTokenizer, ServerTokenizer
from slobench.schema import conform_workload

SLOTS, CTX_PER_SLOT = 4, 1024

pytestmark = pytest.mark.skipif(
    server_binary() is None,
    reason="llama-server not built: run scripts/build-llama-server.sh (make test runs it; "
           "needs cmake, a C++ compiler and PyPI access once)")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    vocab = read_vocab(vocab_file())
    model = write_tiny_model(d / "tiny-qwen2-vocab.gguf", vocab)
    tok = write_hf_tokenizer(d / "tokenizer", vocab)
    return model, tok


@pytest.fixture(scope="module")
def llama(files):
    binary = server_binary()
    assert binary is not None
    with LlamaServer(binary, files[0], slots=SLOTS, ctx_per_slot=CTX_PER_SLOT) as srv:
        yield srv


@pytest.fixture(scope="module")
def hf(files):
    return HFTokenizer(files[1])


CORPUS = [
    "Hello world",
    "Hello, world! It's a test; we'll see what they've done.",
    "  leading spaces and trailing   ",
    "tabs\tand\nnewlines\n\n\nand\r\nCRLF",
    "numbers 1234567890 and 3.14159, 1e-9, -42",
    "def f(x):\n    return x ** 2  # comment\n",
    "URL https://example.com/a/b?c=d&e=f#frag",
    "Ünïcödé façade naïve café — “quotes” and ‘single’",
    "日本語のテキストと中文混合",
    "emoji 🙂👍🏽 and symbols ©®™ ≤≥ ∑∫",
    "I'M SHOUTING, YOU'RE NOT, WE'VE, THEY'LL, HE'D",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "a[PAD151700]b <|endoftext|>",
    "x" * 300,
    "    \n    indented\n\t\tcode",
    "",
]


def corpus_slices() -> list[str]:
    from slobench.prompts.synth import read_corpus

    text = read_corpus()
    return [text[i:i + 400] for i in range(0, min(len(text), 40_000), 4_000)]


def test_tokenizer_json_tokenizes_as_the_server(llama, hf):
    for text in CORPUS + corpus_slices():
        assert hf.encode(text, special=False) == llama.tokenize(text), text
        # no BOS for this vocabulary, on either side
        assert hf.encode(text, special=True) == llama.tokenize(text, add_special=True), text


def test_chat_template_renders_as_the_server(llama, hf):
    conversations = [
        [{"role": "user", "content": "What is 2+2?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
    ]
    for messages in conversations:
        server = http_json(llama.base_url + "/apply-template", {"messages": messages})["prompt"]
        assert hf.render_chat(messages) == server
        assert hf.count_chat(messages) == len(llama.tokenize(server))
    st = ServerTokenizer(llama.base_url, "tiny")
    assert st.count("Hello, world!") == hf.count("Hello, world!")
    assert st.dialect == "llamacpp"
    assert st.count_chat(conversations[1]) == hf.count_chat(conversations[1])


def workload(inputs: list[int], outputs: list[int], *, gap_s: float = 0.05) -> pa.Table:
    n = len(inputs)
    ids = [f"q{i:03d}" for i in range(n)]
    return conform_workload(pa.table({
        "request_id": ids, "arrival_s": 0.05 + gap_s * np.arange(n),
        "client_id": ["c0"] * n, "app": ["chatbot"] * n, "session_id": ids,
        "input_tokens": np.array(inputs, dtype=np.int64),
        "output_tokens": np.array(outputs, dtype=np.int64),
    }))


def bench(llama, wl, tmp_path, *, endpoint, tokenizer, name, engine="llamacpp"):
    return run_benchmark(wl, BenchmarkConfig(
        target=TargetConfig(url=llama.base_url, engine=engine, endpoint=endpoint),
        plan=LoadPlan(mode="open"), timeouts=Timeouts(request_s=60, stall_s=30),
        out=tmp_path / "runs", run_id=name, tokenizer=tokenizer, html_report=False))


INPUTS = [20, 57, 130, 333, 600]
OUTPUTS = [1, 7, 16, 40, 3]


@pytest.mark.parametrize(("endpoint", "which"), [("completions", "file"), ("chat", "file"),
                                                  ("chat", "server"),
                                                  ("completions", "server")])
def test_exact_input_and_forced_output_lengths(llama, files, tmp_path, endpoint, which):
    tokenizer = str(files[1]) if which == "file" else "server"
    a = bench(llama, workload(INPUTS, OUTPUTS), tmp_path, endpoint=endpoint,
              tokenizer=tokenizer, name=f"{endpoint}-{which}")
    recs = records_of(a)
    assert [r["status"] for r in recs] == ["ok"] * len(INPUTS), recs
    # prompt_tokens from the server's own usage block: exactly the workload's input lengths
    assert [r["input_tokens"] for r in recs] == INPUTS
    # ignore_eos: exactly the requested output lengths, counted from the final usage chunk
    assert [r["output_tokens"] for r in recs] == OUTPUTS
    assert {r["token_count_source"] for r in recs} == {"final_usage_spread"}
    for r in recs:
        assert len(r["token_times"]) == r["output_tokens"]
        assert r["sent_s"] <= r["first_token_s"] <= r["done_s"]
        # no reasoning: the whole output is answer, from the first token on
        assert r["reasoning_tokens"] == 0
        assert r["first_answer_s"] == r["first_token_s"]


def test_generic_preset_works_without_forcing(llama, files, tmp_path):
    """The generic preset sends only standard fields (max_tokens, stream_options): every request
    succeeds, and the output is at most max_tokens (without ignore_eos the model may stop at an
    end-of-generation token; llamacpp's preset forces the length)."""
    a = bench(llama, workload([30] * 4, [64] * 4, gap_s=0.0), tmp_path, endpoint="completions",
              tokenizer=str(files[1]), name="generic", engine="generic")
    recs = records_of(a)
    assert all(r["status"] == "ok" and 1 <= r["output_tokens"] <= 64 for r in recs)
    assert [r["input_tokens"] for r in recs] == [30] * 4
    assert http_json(llama.base_url + "/props")["total_slots"] == SLOTS


def sessions(n: int, turns: int, *, first: int = 40, step: int = 120, out: int = 12) -> pa.Table:
    rows: dict[str, list] = {k: [] for k in ("request_id", "arrival_s", "session_id", "turn",
                                            "think_s", "input_tokens", "output_tokens")}
    for s in range(n):
        t = 0.05 + 0.05 * s
        for k in range(turns):
            rows["request_id"].append(f"s{s}.t{k}")
            rows["arrival_s"].append(t + 0.05 * k)
            rows["session_id"].append(f"s{s}")
            rows["turn"].append(k)
            rows["think_s"].append(0.05 if k else 0.0)
            rows["input_tokens"].append(first + step * k)
            rows["output_tokens"].append(out)
    return conform_workload(pa.table({**rows, "turn": pa.array(rows["turn"], pa.int32())}))


@pytest.mark.parametrize("tokenizer", ["file", "server"])
def test_multi_turn_sessions_carry_the_real_answers(llama, files, tmp_path, tokenizer):
    wl = sessions(3, 3)
    tok = str(files[1]) if tokenizer == "file" else "server"
    a = bench(llama, wl, tmp_path, endpoint="chat", tokenizer=tok, name=f"sessions-{tokenizer}")
    recs = {r["request_id"]: r for r in records_of(a)}
    assert len(recs) == 9
    assert all(r["status"] == "ok" for r in recs.values()), [
        (r["request_id"], r["status"], r["error"]) for r in recs.values()]
    for rid, want in zip(wl["request_id"].to_pylist(), wl["input_tokens"].to_pylist(),
                         strict=True):
        # each follow-up carries the earlier turns (with the server's real answers) and still
        # measures exactly the workload's length in the server's count
        assert recs[rid]["input_tokens"] == want, rid
        assert recs[rid]["output_tokens"] == 12
    for s in range(3):
        for k in (1, 2):
            assert recs[f"s{s}.t{k}"]["sent_s"] >= recs[f"s{s}.t{k - 1}"]["done_s"]


def test_concurrent_streams_are_served_at_once(llama, files, tmp_path):
    before = _metric(llama.metrics(), "llamacpp:n_decode_total")
    wl = workload([200] * SLOTS, [192] * SLOTS, gap_s=0.0)
    a = bench(llama, wl, tmp_path, endpoint="completions", tokenizer=str(files[1]),
              name="concurrent")
    recs = records_of(a)
    assert all(r["status"] == "ok" and r["output_tokens"] == 192 for r in recs), [
        (r["status"], r["error"], r["output_tokens"]) for r in recs]
    # continuous batching across -np slots: every stream has its first token before any ends
    assert max(r["first_token_s"] for r in recs) < min(r["done_s"] for r in recs)
    # ... and tokens of different streams interleave in time
    spans = sorted((r["token_times"][0], r["token_times"][-1]) for r in recs)
    assert all(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1))
    # batched decoding: fewer decode calls than tokens generated
    decodes = _metric(llama.metrics(), "llamacpp:n_decode_total") - before
    assert decodes < SLOTS * 192


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name} not in /metrics: {text[:400]}"
    return float(m.group(1))


def test_metrics_page_normalizes(llama):
    from slobench.client.server_metrics import detect_engine, normalize

    text = llama.metrics()
    assert detect_engine(text) == "llama.cpp"
    values = normalize(text, "llama.cpp")
    for key in ("requests_running", "requests_waiting", "prompt_tokens", "generation_tokens",
                "engine_steps"):
        assert values.get(key) is not None, (key, values)


def test_a_prompt_over_the_context_is_an_http_error(llama, files, tmp_path):
    wl = workload([40, CTX_PER_SLOT + 200, 40], [4, 4, 4])
    a = bench(llama, wl, tmp_path, endpoint="chat", tokenizer=str(files[1]), name="errors")
    recs = records_of(a)
    assert [r["status"] for r in recs] == ["ok", "http_error", "ok"], recs
    bad = recs[1]
    assert bad["http_status"] == 400
    assert "context" in bad["error"].lower()


def slobench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slobench", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
                          stdin=subprocess.DEVNULL)


def test_cli_run_report_compare(llama, files, tmp_path):
    common = ["--target", llama.base_url, "--requests", "12",
              "--rate", "6", "--input-tokens", "uniform:30..300", "--output-tokens",
              "uniform:4..32", "--out", str(tmp_path / "runs"), "--quiet", "--seed", "3",
              "--slo", "chatbot: ttft<=5s, tpot<=1s; coding: ttft<=5s; "
                       "summarization: ttft<=5s"]
    a = slobench("run", *common, "--run-id", "chat-server", "--tokenizer", "server",
                 "--engine", "llamacpp", cwd=tmp_path)
    assert a.returncode == 0, a.stderr + a.stdout
    # no --engine: auto, the preset of the engine the probe finds (forcing lengths exactly)
    b = slobench("run", *common, "--run-id", "completions-file", "--endpoint", "completions",
                 "--tokenizer", str(files[1]), cwd=tmp_path)
    assert b.returncode == 0, b.stderr + b.stdout
    runs = tmp_path / "runs"
    for name in ("chat-server", "completions-file"):
        manifest = json.loads((runs / name / "manifest.json").read_text())
        assert manifest["status"] == "complete"
        assert manifest["server"]["engine"] == "llama.cpp"
        assert manifest["target"]["engine"] == "llamacpp"
        assert manifest["server"]["engine_version"]
        assert manifest["length_fidelity"], manifest
        recs = pq.read_table(runs / name / "records.parquet").to_pylist()
        wl = {r["request_id"]: r for r in pq.read_table(runs / name / "workload.parquet")
              .to_pylist()}
        assert len(recs) == 12 and all(r["status"] == "ok" for r in recs)
        for r in recs:
            assert r["input_tokens"] == wl[r["request_id"]]["input_tokens"]
            assert r["output_tokens"] == wl[r["request_id"]]["output_tokens"]
    rep = slobench("report", str(runs / "chat-server"), "--json", cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    overall = json.loads(rep.stdout)["summary"]["overall"]
    assert overall["requests"] == overall["ok"] == 12
    assert overall["latency"]["ttft"]["count"] == 12
    assert overall["throughput"]["output_tokens_per_s"] > 0
    cmp_ = slobench("compare", str(runs / "chat-server"), str(runs / "completions-file"),
                    "--json", cwd=tmp_path)
    assert cmp_.returncode == 0, cmp_.stderr
    doc = json.loads(cmp_.stdout)
    assert [r["run_id"] for r in doc["runs"]] == ["chat-server", "completions-file"]
    assert all(r["status"] == "complete" for r in doc["runs"])
