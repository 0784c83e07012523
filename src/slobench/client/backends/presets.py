"""Engine presets: which request fields each serving engine understands.

Output length control matters for benchmarks: a request must produce the output length the workload
asks for, so presets force it where the engine allows (ignore_eos / min_tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

from slobench.errors import UserError


@dataclass(frozen=True)
class EnginePreset:
    name: str
    ignore_eos: bool = False  # send "ignore_eos": true
    min_tokens: bool = False  # send "min_tokens": N (= max_tokens)
    include_usage: bool = True  # stream_options.include_usage (standard OpenAI field)
    continuous_usage: bool = False  # stream_options.continuous_usage_stats (per-chunk usage)
    max_tokens_field: str = "max_tokens"  # chat only; completions always use max_tokens
    extra: tuple[tuple[str, object], ...] = ()
    # send "Connection: close" with streamed requests: for servers that close the connection
    # after a stream while announcing keep-alive, where reusing it races the close
    close_after_stream: bool = False


PRESETS: dict[str, EnginePreset] = {
    # vLLM: ignore_eos and min_tokens are sampling params; continuous_usage_stats gives per-chunk
    # cumulative completion_tokens, so multi-token chunks are counted exactly.
    "vllm": EnginePreset("vllm", ignore_eos=True, min_tokens=True, continuous_usage=True),
    # SGLang accepts ignore_eos and min_tokens; continuous_usage_stats is honoured by recent builds.
    "sglang": EnginePreset("sglang", ignore_eos=True, min_tokens=True, continuous_usage=True),
    # TGI's Messages API has no way to force the output length.
    "tgi": EnginePreset("tgi"),
    # llama.cpp server: ignore_eos is a native option; usage arrives on the final chunk only.
    # llama-server answers "Keep-Alive: timeout=5, max=100" yet closes the connection after a
    # streamed response: a request sent on it right after fails ("Can not write request body").
    "llamacpp": EnginePreset("llamacpp", ignore_eos=True, close_after_stream=True),
    # OpenAI's API: max_completion_tokens (max_tokens is deprecated for reasoning models).
    "openai": EnginePreset("openai", max_tokens_field="max_completion_tokens"),
    # Only standard fields: the safe choice for an unknown server.
    "generic": EnginePreset("generic"),
}


def get_preset(name: str) -> EnginePreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(
            f"--engine: unknown engine preset '{name}'; choose one of {', '.join(PRESETS)}"
        ) from None
