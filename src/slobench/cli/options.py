"""Options shared by several verbs, declared once so they mean the same thing everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import typer

from slobench.engine.config import EngineConfig
from slobench.errors import UserError
from slobench.prompts.datasets import (
    DEFAULT_OUTPUT_TOKENS,
    DatasetStats,
    dataset_workload,
    read_dataset,
)
from slobench.prompts.tokenizer import load_tokenizer
from slobench.workload.profiles import profile_workload
from slobench.workload.sessions import (
    APP_SCOPES,
    DEFAULT_BLOCK_TOKENS,
    RATE_OF,
    SESSION_MODES,
    STARTS,
    SessionShape,
    sessionize,
    shapes_for_mode,
    steady_after_s,
)
from slobench.workload.synthetic import parse_app_mix, synthetic_workload
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
DEFAULT_APPS = "chatbot:0.6,coding:0.3,summarization:0.1"
SESSIONS_PANEL = "Sessions (multi-turn chat and agents; docs/sessions.md)"


def sessions_option() -> Any:
    return typer.Option(None, "--sessions", help="Multi-turn sessions: off (default), auto "
                        "(shapes per app), chat, agent (one kind for all apps), "
                        "file:shapes.toml.", rich_help_panel=SESSIONS_PANEL)


def session_rate_option() -> Any:
    return typer.Option(None, "--session-rate", help="requests (default: keep the request "
                        "rate) or sessions (every request starts a session).",
                        rich_help_panel=SESSIONS_PANEL)


def app_scope_option() -> Any:
    return typer.Option(None, "--app-scope", help="session (default: each session draws its "
                        "app) or client (each client gets one app).",
                        rich_help_panel=SESSIONS_PANEL)


def session_start_option() -> Any:
    return typer.Option(None, "--session-start", help="steady (default: sessions already "
                        "under way at 0, the rate steady from the start) or empty (none: "
                        "follow-ups build up over the first minutes).",
                        rich_help_panel=SESSIONS_PANEL)


def session_options(sessions: str | None, session_rate: str | None,
                    app_scope: str | None, session_start: str | None = None
                    ) -> dict[str, Any] | None:
    """The checked session options (None when sessions are off): mode, shapes, rate_of,
    app_scope, start."""
    mode = (sessions or "off").strip()
    shapes = shapes_for_mode(mode)
    if shapes is None:
        used = [f for f, v in (("--session-rate", session_rate), ("--app-scope", app_scope),
                               ("--session-start", session_start)) if v]
        if used:
            raise UserError(f"{' and '.join(used)} need --sessions ({SESSION_MODES})")
        return None
    rate_of = (session_rate or "requests").strip().lower()
    if rate_of not in RATE_OF:
        raise UserError(f"--session-rate {session_rate!r}: use one of {', '.join(RATE_OF)}")
    scope = (app_scope or "session").strip().lower()
    if scope not in APP_SCOPES:
        raise UserError(f"--app-scope {app_scope!r}: use one of {', '.join(APP_SCOPES)}")
    start = (session_start or "steady").strip().lower()
    if start not in STARTS:
        raise UserError(f"--session-start {session_start!r}: use one of {', '.join(STARTS)}")
    return {"mode": mode, "shapes": shapes, "rate_of": rate_of, "app_scope": scope,
            "start": start}


def session_manifest(sess: dict[str, Any], apps: str | None, table: pa.Table,
                     block_tokens: int = DEFAULT_BLOCK_TOKENS) -> dict[str, Any]:
    """What a run manifest records of the session options (JSON-safe), with the time the
    request rate of ``table`` takes to reach its steady state (0 with a steady start) and the
    mean age of a request in its session (the scale of an empty start's transient)."""
    shapes: dict[str, SessionShape] = sess["shapes"]
    age = steady_after_s(shapes, pc.unique(table["app"]).to_pylist())
    return {"sessions": sess["mode"], "session_rate": sess["rate_of"],
            "app_scope": sess["app_scope"], "session_apps": apps,
            "session_block_tokens": block_tokens, "session_start": sess["start"],
            "session_steady_after_s": 0.0 if sess["start"] == "steady" else age,
            "session_mean_age_s": age,
            "session_shapes": {a: s.describe() for a, s in shapes.items()}}


def apply_sessions(table: pa.Table, sess: dict[str, Any] | None, *, apps: str | None,
                   seed: int, duration_s: float | None,
                   block_tokens: int = DEFAULT_BLOCK_TOKENS) -> pa.Table:
    """``table`` made into sessions with the checked options (unchanged when off)."""
    if sess is None:
        return table
    return sessionize(table, shapes=sess["shapes"], apps=parse_app_mix(apps) if apps else None,
                      app_scope=sess["app_scope"], rate_of=sess["rate_of"], seed=seed,
                      duration_s=duration_s, block_tokens=block_tokens, start=sess["start"])


DATASET_PANEL = "Dataset (real conversations or prompts; docs/prompts.md)"


def dataset_option() -> Any:
    return typer.Option(None, "--dataset", help="Requests from a dataset: a ShareGPT .json "
                        "(each conversation a session; lengths from the data) or a prompts "
                        ".jsonl ({\"prompt\": ..., \"output_tokens\": ...} per line).",
                        rich_help_panel=DATASET_PANEL)


def dataset_format_option() -> Any:
    return typer.Option(None, "--dataset-format", help="sharegpt, jsonl or auto (default: "
                        "from the first record).", rich_help_panel=DATASET_PANEL)


def single_turn_option() -> Any:
    return typer.Option(False, "--single-turn", help="Only the first human turn of each "
                        "conversation.", rich_help_panel=DATASET_PANEL)


def dataset_table(path: Path, *, fmt: str | None, tokenizer: str | None, rate: Any,
                  process: str, cv: float, seed: int, requests: int | None,
                  duration_s: float | None, single_turn: bool, think_s: float | None,
                  apps: str | None, chat: bool, output_tokens: str | None = None,
                  max_context_tokens: int | None = None
                  ) -> tuple[pa.Table, str, dict[str, Any], DatasetStats]:
    """The Workload of a dataset (every conversation a session; docs/prompts.md): (table,
    source, options for the manifest, reading stats)."""
    if tokenizer is not None and str(tokenizer).strip() == "server":
        raise UserError("--dataset counts its tokens before the run starts, without the "
                        "server; give --tokenizer a tokenizer.json, a model id or builtin")
    data = read_dataset(path, fmt or "auto")
    tok = load_tokenizer(tokenizer)
    table = dataset_workload(
        data, tok, rate=rate, process=process, cv=cv, seed=seed, max_requests=requests,
        duration_s=duration_s, multi_turn=not single_turn, think_s=think_s or 0.0,
        apps=apps or "chatbot", chat=chat, output_tokens=output_tokens or DEFAULT_OUTPUT_TOKENS,
        max_context_tokens=max_context_tokens)
    stats = data.stats
    options = {"dataset": str(path), "dataset_format": data.format, "tokenizer": tok.name,
               "rate": rate if isinstance(rate, (str, int, float)) else rate.describe(),
               "process": process, "cv": cv, "seed": seed, "single_turn": single_turn,
               "think_s": think_s or 0.0, "apps": apps or "chatbot",
               "dataset_stats": stats.as_dict()}
    return table, f"dataset:{path}", options, stats


def dataset_notes(stats: DatasetStats) -> list[str]:
    """What a user should know about how the dataset was used (printed on stderr)."""
    notes = [f"Dataset: {stats.sessions:,} sessions, {stats.requests:,} requests; "
             f"{stats.describe()}"]
    if stats.ran_out:
        notes.append("The dataset ran out before the duration or request count: every "
                     "conversation is used once, never repeated (a repeat would hit the "
                     "server's prefix cache)")
    return notes


def build_workload(path: Path | None, *, closed_loop: bool, requests: int | None,
                   duration_s: float | None, rate: str, process: str, cv: float,
                   input_tokens: str, output_tokens: str, apps: str | None,
                   reasoning_fraction: float, seed: int, profile: str | None = None,
                   sessions: str | None = None, session_rate: str | None = None,
                   app_scope: str | None = None, block_tokens: int = DEFAULT_BLOCK_TOKENS,
                   dataset: Path | None = None, dataset_format: str | None = None,
                   single_turn: bool = False, tokenizer: str | None = None, chat: bool = True,
                   think_s: float | None = None, session_start: str | None = None
                   ) -> tuple[pa.Table, str, dict[str, Any]]:
    """A Workload file, a built-in profile, or a synthetic workload from the options:
    (table, source, options). With a profile, ``rate`` is the aggregate rate (trace, trace*2,
    peak:50, a number, ...) under the profile's client composition and lengths. With
    ``sessions`` (docs/sessions.md) the single requests become multi-turn sessions; ``apps``
    then sets the app mix of a file's or profile's sessions, and ``block_tokens`` the tokens
    per prefix block of the sessions' prompts. With ``dataset`` (a ShareGPT or prompts file)
    every conversation is a session starting at ``rate`` per second, its lengths counted with
    ``tokenizer`` (``chat``: as chat messages); ``apps`` is then the sessions' app mix.
    ``session_start``: steady (default; sessions under way at 0) or empty (closed loop: always
    empty, users take sessions from their first turn)."""
    if path is not None and profile is not None:
        raise UserError("give --workload or --profile, not both")
    if dataset is None:
        used = [k for k, v in (("--dataset-format", dataset_format),
                               ("--single-turn", single_turn or None)) if v is not None]
        if used:
            raise UserError(f"{' and '.join(used)} need --dataset FILE")
    else:
        if path is not None or profile is not None:
            raise UserError(f"give --dataset or {'--workload' if path else '--profile'}, not "
                            "both")
        if (sessions or "off").strip().lower() != "off" or session_rate or app_scope \
                or session_start:
            raise UserError("--sessions/--session-rate/--app-scope/--session-start: a "
                            "dataset's conversations "
                            "already are sessions; drop them (or add --single-turn for single "
                            "requests)")
        table, source, options, stats = dataset_table(
            dataset, fmt=dataset_format, tokenizer=tokenizer, rate=rate, process=process,
            cv=cv, seed=seed, requests=requests or (CLOSED_LOOP_POOL if closed_loop else None),
            duration_s=None if closed_loop else duration_s, single_turn=single_turn,
            think_s=think_s, apps=apps, chat=chat)
        if not closed_loop and stats.ran_out:
            from slobench.report.terminal import console

            for note in dataset_notes(stats)[1:]:
                console(stderr=True).print(f"[dim]{note}[/dim]")
        return table, source, options
    sess = session_options(sessions, session_rate, app_scope, session_start)
    if sess is not None and closed_loop:  # no schedule: users take sessions from turn 0
        sess = {**sess, "start": "empty"}
    # Turns due after the end are never sent: leave them out (closed loop has no schedule).
    horizon = None if closed_loop else duration_s
    if path is not None or profile is not None:
        if path is not None:  # our Parquet/JSONL, or a public trace (format detected)
            table, source, options = load_trace(path), str(path), {}
        else:
            n = requests or (CLOSED_LOOP_POOL if closed_loop else None)
            table = profile_workload(profile, rate=rate, duration_s=None if closed_loop else
                                     duration_s, requests=n, seed=seed)
            source = f"profile:{profile}"
            options = {"profile": profile, "rate": rate, "seed": seed}
        if sess is None:
            return table, source, options
        table = apply_sessions(table, sess, apps=apps, seed=seed, duration_s=horizon,
                               block_tokens=block_tokens)
        return table, source, {**options, **session_manifest(sess, apps, table, block_tokens)}
    apps = apps or DEFAULT_APPS
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
    if sess is not None:  # each row already carries its app from the --apps mix
        table = apply_sessions(table, sess, apps=None, seed=seed, duration_s=horizon,
                               block_tokens=block_tokens)
        options.update(session_manifest(sess, None, table, block_tokens))
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


CATALOG_PANEL = "Catalog (docs/catalog.md)"


def catalog_option() -> Any:
    return typer.Option(None, "--catalog", help="Catalog to register the run in: a database URL "
                        "(sqlite:///file, postgresql://user@host/db) or a file path (default: "
                        "$SLOBENCH_CATALOG, else catalog.sqlite in --out).",
                        rich_help_panel=CATALOG_PANEL)


def no_catalog_option() -> Any:
    return typer.Option(False, "--no-catalog", help="Do not register the run in a catalog.",
                        rich_help_panel=CATALOG_PANEL)


def catalog_choice(catalog: str | None, no_catalog: bool) -> str | None:
    """The catalog argument of run_benchmark/run_simulation: "off", a URL, or None (default)."""
    if no_catalog and catalog:
        raise UserError("--catalog and --no-catalog: give one of them")
    if catalog and not no_catalog:
        from slobench.store.catalog import resolve_url

        resolve_url(catalog)  # a malformed URL fails now, not after the run
    return "off" if no_catalog else catalog
