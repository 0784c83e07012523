"""Options shared by several verbs, declared once so they mean the same thing everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import typer

from slobench.engine.config import EngineConfig
from slobench.errors import UserError
from slobench.workload.profiles import profile_workload
from slobench.workload.synthetic import synthetic_workload
from slobench.workload.traces import load_trace

ENGINE_PANEL = "Engine model (emulator and simulator)"


def engine_model_option(default: str | None = "llama-3.1-8b") -> Any:
    return typer.Option(default, "--model", "-m", help="Model: a catalog name (llama-3.1-8b, "
                        "qwen2.5-72b, mixtral-8x7b, ...) or a Hugging Face config.json path.",
                        rich_help_panel=ENGINE_PANEL)


def gpu_option() -> Any:
    return typer.Option("h100", "--gpu", help="GPU: h100, h200, a100-80gb, a100-40gb, l40s, "
                        "l4, b200, mi300x.", rich_help_panel=ENGINE_PANEL)


def tp_option() -> Any:
    return typer.Option(1, "--tp", help="Tensor-parallel GPUs per replica.",
                        rich_help_panel=ENGINE_PANEL)


def dtype_option() -> Any:
    return typer.Option("bf16", "--dtype", help="Weight dtype: bf16 or fp8.",
                        rich_help_panel=ENGINE_PANEL)


def kv_dtype_option() -> Any:
    return typer.Option("bf16", "--kv-dtype", help="KV-cache dtype: bf16 or fp8.",
                        rich_help_panel=ENGINE_PANEL)


def factors_option() -> Any:
    return typer.Option(None, "--factors", help="JSON/TOML file overriding step-time "
                        "efficiencies and overheads (docs/engine-model.md).",
                        rich_help_panel=ENGINE_PANEL)


def policy_option() -> Any:
    return typer.Option("fcfs", "--policy", help="Scheduling: fcfs, priority, slo (earliest "
                        "deadline first with soft admission control).",
                        rich_help_panel=ENGINE_PANEL)


def max_num_seqs_option() -> Any:
    return typer.Option(256, "--max-num-seqs", help="Most sequences in one step.",
                        rich_help_panel=ENGINE_PANEL)


def max_batched_tokens_option() -> Any:
    return typer.Option(8192, "--max-num-batched-tokens", help="Token budget of one step.",
                        rich_help_panel=ENGINE_PANEL)


def chunked_prefill_option() -> Any:
    return typer.Option(True, "--chunked-prefill/--no-chunked-prefill",
                        help="Split long prompts across steps.", rich_help_panel=ENGINE_PANEL)


def prefix_caching_option() -> Any:
    return typer.Option(True, "--prefix-caching/--no-prefix-caching",
                        help="Reuse cached KV blocks of shared prompt prefixes.",
                        rich_help_panel=ENGINE_PANEL)


CLOSED_LOOP_POOL = 5000  # requests drawn (and cycled) by closed-loop users


def build_workload(path: Path | None, *, closed_loop: bool, requests: int | None,
                   duration_s: float | None, rate: str, process: str, cv: float,
                   input_tokens: str, output_tokens: str, apps: str, reasoning_fraction: float,
                   seed: int, profile: str | None = None) -> tuple[pa.Table, str, dict[str, Any]]:
    """A Workload file, a built-in profile, or a synthetic workload from the options:
    (table, source, options). With a profile, ``rate`` is the aggregate rate (trace, trace*2,
    peak:50, a number, ...) under the profile's client composition and lengths."""
    if path is not None and profile is not None:
        raise UserError("give --workload or --profile, not both")
    if path is not None:  # our Parquet/JSONL, or a public trace (format detected)
        return load_trace(path), str(path), {}
    if profile is not None:
        n = requests or (CLOSED_LOOP_POOL if closed_loop else None)
        table = profile_workload(profile, rate=rate, duration_s=None if closed_loop else
                                 duration_s, requests=n, seed=seed)
        return table, f"profile:{profile}", {"profile": profile, "rate": rate, "seed": seed}
    options = {"rate": rate, "process": process, "cv": cv, "input_tokens": input_tokens,
               "output_tokens": output_tokens, "apps": apps,
               "reasoning_fraction": reasoning_fraction, "seed": seed}
    if closed_loop:  # arrival times are unused; users draw requests in order
        table = synthetic_workload(process="constant", rate=1000.0,
                                   n_requests=requests or CLOSED_LOOP_POOL,
                                   input_tokens=input_tokens, output_tokens=output_tokens,
                                   apps=apps, reasoning_fraction=reasoning_fraction, seed=seed)
    else:
        table = synthetic_workload(process=process, rate=rate, cv=cv, n_requests=requests,
                                   duration_s=duration_s, input_tokens=input_tokens,
                                   output_tokens=output_tokens, apps=apps,
                                   reasoning_fraction=reasoning_fraction, seed=seed)
    return table, "synthetic", options


def engine_config(*, model: str, gpu: str, tp: int, dtype: str, kv_dtype: str,
                  factors: Path | None, policy: str, max_num_seqs: int,
                  max_num_batched_tokens: int, chunked_prefill: bool, prefix_caching: bool,
                  served_model_name: str | None = None) -> EngineConfig:
    """The EngineConfig the engine options describe, checked (a bad setup fails here)."""
    return EngineConfig(model=model, gpu=gpu, tp=tp, weight_dtype=dtype, kv_dtype=kv_dtype,
                        factors=str(factors) if factors else None, policy=policy,
                        max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                        enable_chunked_prefill=chunked_prefill,
                        enable_prefix_caching=prefix_caching,
                        served_model_name=served_model_name).validate_all()
