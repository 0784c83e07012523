"""Prompts over real HTTP against the built-in emulator (which tokenizes what it receives and
hashes 16-token blocks for its prefix cache): the intended prefix reuse happens, no accidental
reuse happens, and the emulator counts exactly the workload's input tokens."""

from __future__ import annotations

import re
import urllib.request

import numpy as np
import pyarrow as pa

from helpers import records_of
from slobench.benchmark import BenchmarkConfig, TargetConfig, run_benchmark
from slobench.client.pacing import LoadPlan
from slobench.client.runner import Timeouts
from slobench.engine.config import EngineConfig
from slobench.engine.emulator import EmulatorProcess
from slobench.schema import conform_workload


def workload(n: int, blocks: list[list[int]], input_tokens: int = 1100) -> pa.Table:
    ids = [f"q{i:03d}" for i in range(n)]
    return conform_workload(pa.table({
        "request_id": ids, "arrival_s": 0.02 + 0.05 * np.arange(n), "session_id": ids,
        "input_tokens": np.full(n, input_tokens, dtype=np.int64),
        "output_tokens": np.full(n, 4, dtype=np.int64),
        "prefix_blocks": pa.array(blocks, pa.list_(pa.int64())),
    }))


def hit_tokens(base_url: str) -> float:
    with urllib.request.urlopen(base_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(r"^vllm:prefix_cache_hits_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    assert m, text[:500]
    return float(m.group(1))


def run(emu, wl, tmp_path, name, endpoint="chat"):
    return run_benchmark(wl, BenchmarkConfig(
        target=TargetConfig(url=emu.base_url, engine="vllm", endpoint=endpoint),
        plan=LoadPlan(), timeouts=Timeouts(request_s=30, stall_s=10), out=tmp_path / "runs",
        run_id=name))


def test_intended_reuse_happens_and_nothing_else(tmp_path):
    n = 12
    with EmulatorProcess(EngineConfig()) as emu:
        a = run(emu, workload(n, [[] for _ in range(n)]), tmp_path, "unique")
        unique_hits = hit_tokens(emu.base_url)
        b = run(emu, workload(n, [[7, 8] for _ in range(n)]), tmp_path, "shared")
        shared_hits = hit_tokens(emu.base_url) - unique_hits
        # the same request ids again in a new run: the run id salts the text, so no reuse
        run(emu, workload(n, [[] for _ in range(n)]), tmp_path, "unique-again")
        again_hits = hit_tokens(emu.base_url) - unique_hits - shared_hits
    assert unique_hits == 0
    assert again_hits == 0
    # 2 shared blocks of 512 tokens: every request after the first finds 1024 tokens cached
    assert shared_hits == (n - 1) * 1024
    for analysis in (a, b):
        rows = records_of(analysis)
        assert all(r["status"] == "ok" for r in rows)
        assert analysis.manifest["prompts"]["missed"] == 0
        assert analysis.manifest["prompts"]["checked"] + analysis.manifest["prompts"][
            "unchecked"] == n


def test_emulator_counts_the_workload_tokens(tmp_path):
    lengths = [1, 2, 7, 64, 511, 512, 513, 3000]
    ids = [f"L{n}" for n in lengths]
    wl = conform_workload(pa.table({
        "request_id": ids, "arrival_s": 0.02 + 0.05 * np.arange(len(ids)), "session_id": ids,
        "input_tokens": np.array(lengths, dtype=np.int64),
        "output_tokens": np.full(len(ids), 3, dtype=np.int64)}))
    with EmulatorProcess(EngineConfig()) as emu:
        for endpoint in ("chat", "completions"):
            rows = records_of(run(emu, wl, tmp_path, endpoint, endpoint=endpoint))
            assert sorted(r["input_tokens"] for r in rows) == lengths


def session_workload(n_sessions: int, turns: int, out: int = 20, new: int = 50) -> pa.Table:
    rows: dict[str, list] = {k: [] for k in ("request_id", "arrival_s", "session_id", "turn",
                                            "think_s", "input_tokens", "output_tokens")}
    for s in range(n_sessions):
        ctx = 100
        for k in range(turns):
            rows["request_id"].append(f"s{s}.t{k}")
            rows["arrival_s"].append(0.02 + 0.03 * s)
            rows["session_id"].append(f"s{s}")
            rows["turn"].append(k)
            rows["think_s"].append(0.01 if k else 0.0)
            rows["input_tokens"].append(ctx)
            rows["output_tokens"].append(out)
            ctx += out + new  # the answer is kept in the history, then a new message
    return conform_workload(pa.table({**rows, "turn": pa.array(rows["turn"], pa.int32())}))


def test_follow_up_turns_carry_the_real_history(tmp_path):
    wl = session_workload(4, 4)
    want = dict(zip(wl["request_id"].to_pylist(), wl["input_tokens"].to_pylist(), strict=True))
    with EmulatorProcess(EngineConfig()) as emu:
        for endpoint in ("chat", "completions"):
            before = hit_tokens(emu.base_url)
            a = run(emu, wl, tmp_path, "s-" + endpoint, endpoint=endpoint)
            hits = hit_tokens(emu.base_url) - before
            rows = records_of(a)
            assert len(rows) == 16 and all(r["status"] == "ok" for r in rows)
            # the server counted exactly the planned context (history + new message)
            assert {r["request_id"]: r["input_tokens"] for r in rows} == want
            assert a.manifest["prompts"]["missed"] == 0
            # each follow-up re-sends the turn before it (prompt + the server's answer): the
            # prefix cache finds at least the earlier prompt, in 16-token blocks
            floor = sum((want[f"s{s}.t{k - 1}"] // 16) * 16
                        for s in range(4) for k in range(1, 4))
            assert hits >= floor * 0.9


def test_server_tokenizer_vllm_dialect_counts_exactly(tmp_path):
    from slobench.prompts.synth import PromptSynthesizer, corpus_files, read_corpus
    from slobench.prompts.tokenizer import ServerTokenizer

    one_file = corpus_files()[0]  # a small corpus: every distinct word is one HTTP request
    with EmulatorProcess(EngineConfig()) as emu:
        tok = ServerTokenizer(emu.base_url, "m")
        s = PromptSynthesizer(tok, read_corpus(one_file), block_tokens=64, chat=True)
        assert tok.dialect == "vllm"
        for n in (1, 5, 100, 700):
            assert tok.count_chat([{"role": "user", "content": s.text(f"r{n}", n)}]) == n
        # a whole run with --tokenizer server: every prompt checked exact
        wl = workload(6, [[] for _ in range(6)], input_tokens=300)
        a = run_benchmark(wl, BenchmarkConfig(
            target=TargetConfig(url=emu.base_url, engine="vllm"), plan=LoadPlan(),
            timeouts=Timeouts(request_s=30, stall_s=10), out=tmp_path / "runs",
            tokenizer="server", prompt_corpus=one_file))
    assert a.manifest["prompts"]["tokenizer"].startswith("server:")
    assert a.manifest["prompts"]["missed"] == 0
    assert a.manifest["length_fidelity"]["input"]["exact"] == 6


def test_server_tokenizer_llamacpp_dialect(scripted_server):
    from slobench.prompts.synth import PromptSynthesizer, corpus_files, read_corpus
    from slobench.prompts.tokenizer import ServerTokenizer

    tok = ServerTokenizer(scripted_server({}), "m")
    s = PromptSynthesizer(tok, read_corpus(corpus_files()[0]), block_tokens=64, chat=True)
    assert tok.dialect == "llamacpp"
    assert s.overhead == 6  # "<user>" and "<assistant>": 3 built-in tokens each
    for n in (10, 100, 400):
        text = s.text(f"r{n}", n)
        assert tok.count_chat([{"role": "user", "content": text}]) == n


def test_server_tokenizer_without_endpoint_is_one_clear_error(free_port_refused):
    import pytest

    from slobench.errors import UserError
    from slobench.prompts.tokenizer import ServerTokenizer

    with pytest.raises(UserError, match="tokenizer server"):
        ServerTokenizer(free_port_refused, "m").count("hello")


def test_images_are_sent_sized_to_their_token_counts(tmp_path):
    ids = [f"m{i}" for i in range(5)]
    images = [[258], [1000, 400], [], [3000], [64]]
    wl = conform_workload(pa.table({
        "request_id": ids, "arrival_s": 0.02 + 0.05 * np.arange(5), "session_id": ids,
        "input_tokens": np.full(5, 4000, dtype=np.int64),
        "output_tokens": np.full(5, 3, dtype=np.int64),
        "image_tokens": pa.array(images, pa.list_(pa.int64()))}))
    with EmulatorProcess(EngineConfig()) as emu:
        a = run(emu, wl, tmp_path, "mm")
        c = run(emu, wl, tmp_path, "mm-completions", endpoint="completions")
    rows = records_of(a)
    assert all(r["status"] == "ok" for r in rows)
    # images + text: the server counts exactly the planned input (the text takes what the
    # images, as the encoder sizes them, leave)
    assert [r["input_tokens"] for r in rows] == [4000] * 5
    assert a.manifest["prompts"]["images_dropped"] == 0
    # the completions API cannot carry images: text only, reported
    assert c.manifest["prompts"]["images_dropped"] == 4
    assert [r["input_tokens"] for r in records_of(c)] == [4000] * 5


def test_session_images_stay_in_the_history(tmp_path):
    wl = session_workload(2, 3)
    # turn k lists every image sent so far in its session (the history re-sends them)
    per_turn = [[258], [258], [258, 500]]
    wl = wl.set_column(wl.schema.get_field_index("image_tokens"), "image_tokens",
                       pa.array([per_turn[k] for k in wl["turn"].to_pylist()],
                                pa.list_(pa.int64())))
    from slobench.prompts.images import ImagePrompter

    cost = ImagePrompter("qwen2.5-vl").cost  # what the emulator's encoder makes of them
    inputs = np.array([n + cost(per_turn[k]) for n, k in
                       zip(wl["input_tokens"].to_pylist(), wl["turn"].to_pylist(), strict=True)])
    wl = wl.set_column(wl.schema.get_field_index("input_tokens"), "input_tokens",
                       pa.array(inputs, pa.int64()))
    want = dict(zip(wl["request_id"].to_pylist(), inputs.tolist(), strict=True))
    with EmulatorProcess(EngineConfig()) as emu:
        a = run(emu, wl, tmp_path, "mm-sessions")
    rows = records_of(a)
    assert all(r["status"] == "ok" for r in rows)
    assert {r["request_id"]: r["input_tokens"] for r in rows} == want
    assert a.manifest["prompts"]["missed"] == 0
