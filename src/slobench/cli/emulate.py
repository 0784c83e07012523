"""``slobench emulate``: serve the engine emulator over HTTP (OpenAI-compatible)."""

from __future__ import annotations

from pathlib import Path

import typer

from slobench.cli.main import app, user_errors
from slobench.cli.options import (
    chunked_prefill_option,
    dtype_option,
    engine_config,
    engine_model_option,
    factors_option,
    gpu_option,
    kv_dtype_option,
    max_batched_tokens_option,
    max_num_seqs_option,
    policy_option,
    prefix_caching_option,
    tp_option,
)
from slobench.engine.emulator import Faults, create_app, parse_error_rates, serve
from slobench.engine.process import run_event_loop, serve_until_stopped
from slobench.report.terminal import console, engine_text

FAULTS = "Fault injection"


@app.command()
@user_errors
def emulate(
    model: str = engine_model_option(),
    gpu: str = gpu_option(),
    tp: int = tp_option(),
    dtype: str = dtype_option(),
    kv_dtype: str = kv_dtype_option(),
    factors: Path = factors_option(),
    policy: str = policy_option(),
    max_num_seqs: int = max_num_seqs_option(),
    max_num_batched_tokens: int = max_batched_tokens_option(),
    chunked_prefill: bool = chunked_prefill_option(),
    prefix_caching: bool = prefix_caching_option(),
    served_model_name: str = typer.Option(None, "--served-model-name", help="Name reported "
                                          "by /v1/models (default: the catalog name)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (127.0.0.1: only "
                             "this machine)."),
    port: int = typer.Option(8000, "--port", "-p", help="Port (0: any free port)."),
    error_rate: str = typer.Option(None, "--error-rate", help="Answer with HTTP errors, e.g. "
                                   "429:0.05,503:0.01.", rich_help_panel=FAULTS),
    disconnect_rate: float = typer.Option(0.0, "--disconnect-rate", help="Fraction of streams "
                                          "dropped mid-way.", rich_help_panel=FAULTS),
    stall_rate: float = typer.Option(0.0, "--stall-rate", help="Fraction of streams that "
                                     "pause once.", rich_help_panel=FAULTS),
    stall: float = typer.Option(5.0, "--stall-s", help="Length of such a pause (s).",
                                rich_help_panel=FAULTS),
    slow_first_byte: float = typer.Option(0.0, "--slow-first-byte-s", help="Delay before "
                                          "response headers (s).", rich_help_panel=FAULTS),
    seed: int = typer.Option(0, "--seed", help="Seed of the fault draws."),
) -> None:
    """Serve a GPU-free engine model over HTTP: tokens stream in real time as the scheduler and
    the step-time model decide."""
    config = engine_config(
        model=model, gpu=gpu, tp=tp, dtype=dtype, kv_dtype=kv_dtype, factors=factors,
        policy=policy, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, chunked_prefill=chunked_prefill,
        prefix_caching=prefix_caching,
        served_model_name=served_model_name)
    faults = Faults(error_rates=parse_error_rates(error_rate), disconnect_rate=disconnect_rate,
                    stall_rate=stall_rate, stall_s=stall, slow_first_byte_s=slow_first_byte,
                    seed=seed)
    web = create_app(config.make_scheduler, model=config.served_name, faults=faults,
                     max_model_len=config.max_model_len,
                     admission_delay=config.admission_delay_s)
    out = console(stderr=True)
    out.print(engine_text(config.describe()))

    async def start() -> tuple[str, object]:
        url, stop = await serve(web, host, port)
        out.print(f"[bold]Serving {config.served_name}[/bold] at {url}/v1 "
                  "(OpenAI API; /metrics, /health, /tokenize). Ctrl-C stops.")
        return url, stop

    try:
        run_event_loop(serve_until_stopped(start, None))
    except OSError as exc:
        from slobench.errors import UserError

        raise UserError(f"--port: cannot serve on {host}:{port} ({exc.strerror}); choose "
                        "another --port or stop what uses it") from None
