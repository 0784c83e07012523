"""Engine presets as the one place for per-engine facts: detection, --engine auto, tokenize
dialects, reasoning fields and metrics paths, checked over real HTTP (the built-in emulator, the
scripted server, and a small server speaking TGI's and TensorRT-LLM's tokenize shapes as their
documentation gives them)."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web

from slobench.benchmark import BenchmarkConfig, TargetConfig, run_benchmark
from slobench.client.backends.presets import (
    AUTO,
    DETECTION_ORDER,
    PRESETS,
    get_preset,
    preset_for_engine,
    resolve_preset,
)
from slobench.client.pacing import LoadPlan
from slobench.client.probe import METRIC_PREFIXES, OWNERS, VERSION_ENDPOINTS, parse_metrics
from slobench.client.runner import Timeouts
from slobench.client.server_metrics import NORMALIZATION
from slobench.engine.config import EngineConfig
from slobench.engine.emulator import EmulatorProcess
from slobench.errors import UserError
from slobench.prompts.tokenizer import TOKENIZE_DIALECTS, BuiltinTokenizer, ServerTokenizer
from slobench.schema import conform_workload

DOCS = Path(__file__).resolve().parents[1] / "docs" / "engines.md"


def test_auto_resolves_to_the_detected_engines_preset():
    assert resolve_preset(AUTO, "llama.cpp").name == "llamacpp"
    assert resolve_preset(AUTO, "slobench-emulator").name == "emulator"
    assert resolve_preset(AUTO, "vllm").name == "vllm"
    assert resolve_preset(AUTO, "triton").name == "generic"  # recognized, no preset
    assert resolve_preset(AUTO, None).name == "generic"
    assert resolve_preset("sglang", "vllm").name == "sglang"  # an explicit choice wins
    with pytest.raises(UserError, match="auto"):
        resolve_preset("vlm", None)


def test_probe_tables_come_from_the_presets():
    prefixes = [p for p, _ in METRIC_PREFIXES]
    for preset in PRESETS.values():
        if preset.metric_prefix:
            assert (preset.metric_prefix, preset.engine) in METRIC_PREFIXES
        if preset.version_endpoint:
            assert VERSION_ENDPOINTS[preset.engine][0] == preset.version_endpoint
        for owner in preset.owned_by:
            assert OWNERS[owner] == preset.engine
        assert preset_for_engine(preset.engine) is preset
    # the emulator exports vLLM's names too: its own prefix must be tried first
    assert prefixes.index("slobench_emulator_") < prefixes.index("vllm:")
    assert DETECTION_ORDER[0].name == "emulator"
    page = "vllm:num_requests_running 1\nslobench_emulator_steps_total 5\n"
    assert parse_metrics(page)["engine"] == "slobench-emulator"


def test_every_preset_is_consistent_and_documented():
    doc = DOCS.read_text()
    for preset in PRESETS.values():
        # a Prometheus page slobench identifies is one it can normalize
        if preset.metric_prefix and preset.metrics_path:
            assert preset.engine in NORMALIZATION, preset.name
        if preset.tokenize:
            assert preset.tokenize in TOKENIZE_DIALECTS, preset.name
        assert preset.checked
        # docs/engines.md has a row for every preset in its summary table
        assert re.search(rf"^\| `{preset.name}` \|", doc, re.MULTILINE), preset.name


# -- tokenize dialects over HTTP ----------------------------------------------------------------

class _DialectServer:
    """TGI's and TensorRT-LLM's tokenize endpoints as their docs and source describe them:
    TGI ``POST /tokenize {"inputs"}`` -> a list of tokens and ``POST /chat_tokenize`` ->
    ``{"tokenize_response": [...]}``; trtllm-serve ``POST /_internal/tokenize {"prompt"}`` ->
    ``{"count", "tokens"}``; counts by the built-in tokenizer."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.tok = BuiltinTokenizer()
        self.bodies: list[dict] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _tokens(self, text: str) -> list[int]:
        return list(range(self.tok.count(text)))

    async def _tgi(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        if "inputs" not in body:  # axum's Json extractor: 422 on a body of the wrong shape
            return web.json_response({"error": "missing field `inputs`"}, status=422)
        return web.json_response([{"id": i, "text": "x", "start": 0, "stop": 1}
                                  for i in self._tokens(body["inputs"])])

    async def _tgi_chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        text = "".join(f"<{m['role']}>{m['content']}" for m in body["messages"]) + "<assistant>"
        return web.json_response({"tokenize_response": [{"id": i} for i in self._tokens(text)],
                                  "templated_text": text})

    async def _trtllm(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        if set(body) - {"model", "prompt"}:  # pydantic extra="forbid"
            return web.json_response({"error": "extra fields"}, status=400)
        tokens = self._tokens(body["prompt"])
        return web.json_response({"count": len(tokens), "tokens": tokens})

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        if self.dialect == "tgi":
            app.router.add_post("/tokenize", self._tgi)
            app.router.add_post("/chat_tokenize", self._tgi_chat)
        else:
            app.router.add_post("/_internal/tokenize", self._trtllm)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> _DialectServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def dialect_server() -> Iterator[type[_DialectServer]]:
    yield _DialectServer


def test_tgi_dialect_counts_text_and_chat(dialect_server):
    with dialect_server("tgi") as srv:
        builtin = BuiltinTokenizer()
        for dialect in ("tgi", None):  # named by the preset, or found by detection
            tok = ServerTokenizer(srv.url, "m", dialect=dialect)
            assert tok.count("one two three four") == builtin.count("one two three four")
            assert tok.dialect == "tgi"
            tok.check(chat=True)
            msgs = [{"role": "user", "content": "hello there"}]
            assert tok.count_chat(msgs) == builtin.count("<user>hello there<assistant>")
        assert srv.bodies[0] == {"inputs": "one two three four"}


def test_trtllm_dialect_is_text_only(dialect_server):
    with dialect_server("trtllm") as srv:
        tok = ServerTokenizer(srv.url, "m", dialect=get_preset("trtllm").tokenize)
        assert tok.count("a b c d e") == BuiltinTokenizer().count("a b c d e")
        tok.check(chat=False)
        with pytest.raises(UserError, match="text only"):
            tok.check(chat=True)
        detected = ServerTokenizer(srv.url, "m")
        assert detected.count("a b") == 2 and detected.dialect == "trtllm"


def test_a_refused_tokenize_request_is_one_clear_error(dialect_server):
    with dialect_server("tgi") as srv:
        tok = ServerTokenizer(srv.url, "m", dialect="vllm")  # the wrong dialect, forced
        with pytest.raises(UserError, match=r"refused a tokenize request \(HTTP 422"):
            tok.count("hello")


# -- --engine auto, end to end ------------------------------------------------------------------

def _workload(n: int = 6) -> pa.Table:
    ids = [f"q{i}" for i in range(n)]
    return conform_workload(pa.table({
        "request_id": ids, "arrival_s": 0.02 * np.arange(n), "client_id": ["c"] * n,
        "app": ["chatbot"] * n, "session_id": ids,
        "input_tokens": np.full(n, 40, np.int64), "output_tokens": np.full(n, 12, np.int64)}))


def _run(url: str, tmp_path: Path, name: str, engine: str = AUTO):
    return run_benchmark(_workload(), BenchmarkConfig(
        target=TargetConfig(url=url, engine=engine), plan=LoadPlan(mode="open"),
        timeouts=Timeouts(request_s=30, stall_s=10), out=tmp_path / "runs", run_id=name,
        html_report=False, scrape_interval_s=0.2))


def test_auto_on_the_emulator_uses_its_preset(tmp_path):
    with EmulatorProcess(EngineConfig()) as emu:
        a = _run(emu.base_url, tmp_path, "emu")
    target = a.manifest["target"]
    assert target["engine"] == "emulator" and target["engine_requested"] == AUTO
    assert a.manifest["server"]["engine"] == "slobench-emulator"
    recs = pq.read_table(a.run.path / "records.parquet").to_pylist()
    # the preset asks for per-chunk usage, which the emulator gives: exact token counting
    assert {r["token_count_source"] for r in recs} == {"usage_deltas"}
    assert all(r["output_tokens"] == 12 for r in recs)
    assert a.manifest["server_metrics"]["scrapes"] > 0


def test_auto_on_an_unknown_server_falls_back_to_generic(tmp_path, scripted_server):
    url = scripted_server({"ttft_s": 0.0, "tpot_s": 0.001})
    a = _run(url, tmp_path, "scripted")
    assert a.manifest["target"]["engine"] == "generic"
    assert all(r["status"] == "ok"
               for r in pq.read_table(a.run.path / "records.parquet").to_pylist())


@pytest.mark.parametrize(("engine", "field", "counted"), [
    ("generic", "reasoning", True), ("generic", "reasoning_content", True),
    ("vllm", "reasoning", True), ("llamacpp", "reasoning_content", True),
    ("tgi", "reasoning_content", False)])
def test_reasoning_is_read_from_the_presets_fields(tmp_path, scripted_server, engine, field,
                                                   counted):
    # usage "none": reasoning can only be told from the stream's delta fields
    url = scripted_server({"ttft_s": 0.0, "tpot_s": 0.001, "reasoning_tokens": 5,
                           "reasoning_field": field, "usage": "none"})
    a = _run(url, tmp_path, f"{engine}-{field}", engine=engine)
    recs = pq.read_table(a.run.path / "records.parquet").to_pylist()
    assert all(r["status"] == "ok" for r in recs)
    for r in recs:
        if counted:
            assert r["reasoning_tokens"] == 5 and r["first_answer_s"] > r["first_token_s"]
        else:  # an engine without a reasoning field: its text is not looked for
            assert r["reasoning_tokens"] == 0
