"""``slobench generate``: write a Workload Parquet from a profile, a pool, or synthetic options."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from slobench.cli.main import app, user_errors
from slobench.cli.options import (
    DATASET_PANEL,
    DEFAULT_APPS,
    SESSIONS_PANEL,
    app_scope_option,
    apply_sessions,
    dataset_format_option,
    dataset_notes,
    dataset_option,
    dataset_table,
    session_options,
    session_rate_option,
    session_start_option,
    sessions_option,
    single_turn_option,
)
from slobench.errors import UserError
from slobench.report.terminal import console
from slobench.units import parse_duration
from slobench.workload.generate import (
    MODES,
    RATE_SPEC_FORMS,
    iter_workload_batches,
    naive_workload,
    read_rate_file,
    resolve_rate,
    write_workload_parquet,
)
from slobench.workload.pool import ClientPool
from slobench.workload.profiles import load_profile, profile_names
from slobench.workload.servegen import MISSING_POLICIES, load_pool
from slobench.workload.sessions import (
    DEFAULT_BLOCK_TOKENS,
    SessionShape,
    iter_sessionized,
    session_summary,
    steady_after_s,
)
from slobench.workload.synthetic import parse_app_mix, synthetic_workload

SOURCE = "Source (one of --profile, --pool, --dataset, or the synthetic options)"
POOL = "Profile and pool options"
SYNTH = "Synthetic options (no --profile or --pool)"


def _check_output(out: Path) -> Path:
    if out.is_dir():
        raise UserError(f"-o {out}: is a directory; give a file name like workload.parquet")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"-o {out}: the directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UserError(f"-o {out}: cannot write there (permission denied); choose another path")
    return out


def _pool(profile: str | None, pool_dir: Path | None, missing: str) -> ClientPool | None:
    if profile is not None and pool_dir is not None:
        raise UserError("give --profile or --pool, not both")
    if profile is not None:
        return load_profile(profile)
    if pool_dir is not None:
        if missing not in MISSING_POLICIES:
            raise UserError(f"--missing {missing!r}: use one of {', '.join(MISSING_POLICIES)}")
        return load_pool(pool_dir, missing=missing)
    return None


def _write_table(table: pa.Table, out: Path) -> int:
    return write_workload_parquet(table.to_batches(max_chunksize=1 << 20), out)


def _with_progress(batches: Iterator[pa.RecordBatch], duration_s: float,
                   show: bool) -> Iterator[pa.RecordBatch]:
    if not show:
        yield from batches
        return
    err = console(stderr=True)
    bar = Progress(TextColumn("[bold]generating"), BarColumn(bar_width=24), TaskProgressColumn(),
                   TextColumn("{task.completed:.0f}/{task.total:.0f} s"), TimeElapsedColumn(),
                   console=err, transient=True)
    task = bar.add_task("gen", total=duration_s)
    with bar:
        for b in batches:
            if b.num_rows:
                bar.update(task, completed=float(b.column("arrival_s")[-1].as_py()))
            yield b
        bar.update(task, completed=duration_s)


def _pcts(values: np.ndarray) -> str:
    if len(values) == 0:
        return "-"
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return f"{values.mean():,.0f} / {p50:,.0f} / {p90:,.0f} / {p99:,.0f}"


def summary_table(path: Path, source: str,
                  shapes: Mapping[str, SessionShape] | None = None,
                  start: str = "steady") -> Table:
    """A short summary of a Workload Parquet file (fits 100 columns); ``shapes`` and
    ``start``: the session shapes and start it was made with (for the start-up transient)."""
    t = pq.read_table(path, columns=["arrival_s", "client_id", "app", "session_id", "turn",
                                     "input_tokens", "output_tokens", "reasoning_tokens",
                                     "image_tokens"])
    n = t.num_rows
    arr = np.sort(t["arrival_s"].to_numpy())
    span = float(arr[-1] - arr[0]) if n else 0.0
    gaps = np.diff(arr)
    cv = gaps.std() / gaps.mean() if len(gaps) > 1 and gaps.mean() > 0 else float("nan")
    table = Table(title=f"Workload {path.name}", title_justify="left", show_header=False,
                  box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold", max_width=76)
    table.add_row("source", source)
    table.add_row("requests", f"{n:,}")
    table.add_row("span", f"{span:,.1f} s")
    table.add_row("mean rate", f"{(n - 1) / span:,.2f} req/s" if n > 1 and span > 0 else "-")
    table.add_row("inter-arrival CV", "-" if math.isnan(cv) else f"{cv:.2f}")
    table.add_row("input tokens", _pcts(t["input_tokens"].to_numpy()) + "  (mean/p50/p90/p99)")
    table.add_row("output tokens", _pcts(t["output_tokens"].to_numpy()))
    reasoning = t["reasoning_tokens"].to_numpy()
    if n and reasoning.any():
        table.add_row("reasoning tokens", _pcts(reasoning))
    images = pc.list_value_length(t["image_tokens"]).to_numpy(zero_copy_only=False)
    if n and images.any():
        table.add_row("images/request", f"{images.mean():.2f} (max {images.max()})")
    if (sessions := session_summary(t)) is not None:
        steady = ""
        if shapes is not None and start == "empty":  # a steady start has no transient
            steady_s = steady_after_s(shapes, pc.unique(t["app"]).to_pylist())
            steady = (f"; follow-ups build up over the first ~{steady_s:,.0f} s "
                      "(run --warmup)")
        table.add_row("sessions", f"{sessions['sessions']:,.0f}, {sessions['mean_turns']:.2f} "
                      f"requests each{steady}")
    for col, label in (("client_id", "top clients"), ("app", "apps")):
        if not n:
            continue
        counts = pc.value_counts(t[col]).to_pylist()
        counts.sort(key=lambda d: -d["counts"])
        shown = ", ".join(f"{d['values']} {d['counts'] / n:.1%}" for d in counts[:5])
        more = f" (+{len(counts) - 5} more)" if len(counts) > 5 else ""
        table.add_row(label, shown + more)
    return table


@app.command()
@user_errors
def generate(
    out: Path = typer.Option(..., "--out", "-o", help="Workload Parquet file to write."),
    profile: str = typer.Option(None, "--profile", help="Built-in profile: "
                                f"{', '.join(profile_names())} (docs/profiles.md).",
                                rich_help_panel=SOURCE),
    pool: Path = typer.Option(None, "--pool", help="A ServeGen pool directory "
                              "(chunk-N-trace.csv, chunk-N-dataset.json), or a pool file "
                              "from `slobench fit`.",
                              rich_help_panel=SOURCE),
    rate: str = typer.Option(None, "--rate", "-r", help="Aggregate req/s. Profile/pool: trace "
                             "(default), trace*2, peak:50, file:rates.csv, 10, ramp:1..20/60s, "
                             "step:2+2/30s..20. Synthetic: default 10.", rich_help_panel=SOURCE),
    duration: str = typer.Option(None, "--duration", "-d", help="Span of the workload "
                                 "(default 1h; --dataset: the whole dataset).",
                                 rich_help_panel=SOURCE),
    seed: int = typer.Option(0, "--seed", help="Random seed.", rich_help_panel=SOURCE),
    mode: str = typer.Option(None, "--mode", help="Arrivals: renewal (default; each client's "
                             "process carries across windows) or servegen (reference).",
                             rich_help_panel=POOL),
    naive: bool = typer.Option(False, "--naive", help="Baseline instead: aggregate Poisson at "
                               "the same mean rate, aggregate lengths.", rich_help_panel=POOL),
    start: str = typer.Option(None, "--start", help="Offset into the pool's span to start "
                              "from (e.g. 6h).", rich_help_panel=POOL),
    top_k: int = typer.Option(None, "--top-k", help="Keep the N clients with most requests.",
                              rich_help_panel=POOL),
    app_name: str = typer.Option(None, "--app", help="SLO class of every request (default: "
                                 "chatbot; reasoning for a reasoning pool).",
                                 rich_help_panel=POOL),
    correlated: bool = typer.Option(False, "--correlated", help="One random number for all "
                                    "fields of a request (the reference's behaviour).",
                                    rich_help_panel=POOL),
    missing: str = typer.Option("borrow", "--missing", help="--pool clients with a trace and no"
                                " dataset file: borrow (aggregate lengths) or drop.",
                                rich_help_panel=POOL),
    process: str = typer.Option(None, "--process", help="Arrivals: poisson (default), gamma, "
                                "constant.", rich_help_panel=SYNTH),
    cv: float = typer.Option(None, "--cv", help="Inter-arrival CV (gamma; default 1).",
                             rich_help_panel=SYNTH),
    input_tokens: str = typer.Option(None, "--input-tokens", help="Prompt lengths (default "
                                     "lognormal:mean=512,cv=0.6,max=4096).",
                                     rich_help_panel=SYNTH),
    output_tokens: str = typer.Option(None, "--output-tokens", help="Output lengths (default "
                                      "lognormal:mean=128,cv=0.6,max=1024).",
                                      rich_help_panel=SYNTH),
    apps: str = typer.Option(None, "--apps", help=f"Application-class mix (default {DEFAULT_APPS})"
                             "; with --sessions also for --profile/--pool.",
                             rich_help_panel=SYNTH),
    reasoning_fraction: float = typer.Option(None, "--reasoning-fraction", help="Thinking "
                                             "share of reasoning outputs.",
                                             rich_help_panel=SYNTH),
    sessions: str = sessions_option(),
    session_rate: str = session_rate_option(),
    app_scope: str = app_scope_option(),
    session_start: str = session_start_option(),
    block_tokens: int = typer.Option(None, "--prefix-block-tokens", help="Tokens per prefix "
                                     "block of the sessions' prompts (default 512, as Mooncake; "
                                     "give run/simulate the same).", min=1,
                                     rich_help_panel=SESSIONS_PANEL),
    dataset: Path = dataset_option(),
    dataset_format: str = dataset_format_option(),
    requests: int = typer.Option(None, "--requests", "-n", help="Stop after this many requests "
                                 "(the last session is cut short to fit).",
                                 rich_help_panel=DATASET_PANEL),
    single_turn: bool = single_turn_option(),
    tokenizer: str = typer.Option(None, "--tokenizer", help="Count the dataset's tokens as the "
                                  "server does: a tokenizer.json (or its folder), a Hugging Face"
                                  " model id in the local cache, or builtin (default).",
                                  rich_help_panel=DATASET_PANEL),
    endpoint: str = typer.Option(None, "--endpoint", help="Count contexts as chat messages "
                                 "(chat, default) or as completions text, as `run --endpoint`.",
                                 rich_help_panel=DATASET_PANEL),
    think_time: str = typer.Option(None, "--think-time", help="Pause between a session's turns "
                                   "(default 0s: the next turn goes out when the answer is "
                                   "complete).", rich_help_panel=DATASET_PANEL),
    max_context: int = typer.Option(None, "--max-context-tokens", help="End a session before "
                                    "a turn whose input + output would exceed this.",
                                    rich_help_panel=DATASET_PANEL),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Write a Workload Parquet file from a built-in profile, a ServeGen pool, a dataset of
    conversations or prompts, or synthetic options, and print a short summary."""
    out = _check_output(out)
    dataset_opts = {"--dataset-format": dataset_format, "--requests": requests,
                    "--single-turn": single_turn or None, "--tokenizer": tokenizer,
                    "--endpoint": endpoint, "--think-time": think_time,
                    "--max-context-tokens": max_context}
    if dataset is not None:
        _generate_dataset(
            out, dataset, quiet=quiet, profile=profile, pool=pool, rate=rate, duration=duration,
            seed=seed, process=process, cv=cv, output_tokens=output_tokens, apps=apps,
            app_name=app_name, others={
                "--mode": mode, "--naive": naive or None, "--start": start, "--top-k": top_k,
                "--correlated": correlated or None, "--input-tokens": input_tokens,
                "--reasoning-fraction": reasoning_fraction, "--sessions": sessions,
                "--session-rate": session_rate, "--app-scope": app_scope,
                "--session-start": session_start, "--prefix-block-tokens": block_tokens},
            **{k.lstrip("-").replace("-", "_"): v for k, v in dataset_opts.items()})
        return
    if used := [k for k, v in dataset_opts.items() if v is not None]:
        raise UserError(f"{', '.join(used)}: only with --dataset FILE")
    duration_s = float(parse_duration(duration or "1h", "--duration", allow_zero=False) or 0.0)
    source_pool = _pool(profile, pool, missing)
    sess = session_options(sessions, session_rate, app_scope, session_start)
    if block_tokens is not None and sess is None:
        raise UserError("--prefix-block-tokens sets the blocks of sessions' prompts; add "
                        "--sessions (auto, chat, agent or file:shapes.toml)")
    block_tokens = block_tokens or DEFAULT_BLOCK_TOKENS
    sess_note = "" if sess is None else (f", sessions {sess['mode']} ({sess['rate_of']} rate, "
                                         f"app scope {sess['app_scope']}, "
                                         f"{sess['start']} start)")
    synth_opts = {"--process": process, "--cv": cv, "--input-tokens": input_tokens,
                  "--output-tokens": output_tokens,
                  "--apps": apps if sess is None else None,  # with sessions: the session mix
                  "--reasoning-fraction": reasoning_fraction}
    pool_opts = {"--mode": mode, "--naive": naive or None, "--start": start, "--top-k": top_k,
                 "--app": app_name, "--correlated": correlated or None}
    show = not quiet and console(stderr=True).is_terminal
    if source_pool is None:
        used = [k for k, v in pool_opts.items() if v is not None]
        if used:
            raise UserError(f"{', '.join(used)} need --profile or --pool; a synthetic workload "
                            "takes --process, --cv, --input-tokens, --output-tokens, --apps")
        rate_fn: object = rate or "10"
        if isinstance(rate_fn, str) and rate_fn.strip().lower().startswith("file:"):
            rate_fn = read_rate_file(rate_fn.strip()[5:])
        elif isinstance(rate_fn, str) and rate_fn.strip().lower().startswith(("trace", "peak:")):
            raise UserError(f"--rate {rate!r} needs --profile or --pool (it scales a trace); "
                            "give req/s, ramp:.. or step:.. for a synthetic workload")
        table = synthetic_workload(
            process=process or "poisson", rate=rate_fn, cv=1.0 if cv is None else cv,  # type: ignore[arg-type]
            duration_s=duration_s,
            input_tokens=input_tokens or "lognormal:mean=512,cv=0.6,max=4096",
            output_tokens=output_tokens or "lognormal:mean=128,cv=0.6,max=1024",
            apps=apps or DEFAULT_APPS,
            reasoning_fraction=reasoning_fraction or 0.0, seed=seed)
        table = apply_sessions(table, sess, apps=None, seed=seed, duration_s=duration_s,
                               block_tokens=block_tokens)
        _write(lambda: _write_table(table, out), out)
        source = f"synthetic ({process or 'poisson'}, rate {rate or '10'}){sess_note}"
    else:
        used = [k for k, v in synth_opts.items() if v is not None]
        if used:
            hint = ("; --apps sets the app mix of sessions: add --sessions auto"
                    if "--apps" in used else "")
            raise UserError(f"{', '.join(used)}: only for synthetic workloads; with "
                            f"--profile/--pool the pool gives arrivals and lengths{hint}")
        if apps is not None and app_name is not None:
            raise UserError("give --app (one app for every request) or --apps (the sessions' "
                            "app mix), not both")
        p = source_pool
        if start is not None:
            offset = float(parse_duration(start, "--start") or 0.0)
            if offset >= p.duration_s:
                raise UserError(f"--start {start}: beyond the pool's span of {p.duration_s:g} s")
            p = p.span(p.start_s + offset, p.end_s)
        if top_k is not None:
            p = p.top_k(top_k)
        if mode is not None and mode not in MODES:
            raise UserError(f"--mode {mode!r}: use one of {', '.join(MODES)}")
        name = f"profile {profile}" if profile else f"pool {pool}"
        if naive:
            if mode is not None or correlated:
                raise UserError("--naive has no arrival mode or field correlation; drop "
                                "--mode/--correlated")
            fn = _check_rate(p, rate, duration_s)
            mean = float(fn.integral(duration_s)) / duration_s
            table = naive_workload(p, duration_s, seed=seed, rate=mean, app=app_name)
            table = apply_sessions(table, sess, apps=apps, seed=seed, duration_s=duration_s,
                                   block_tokens=block_tokens)
            _write(lambda: _write_table(table, out), out)
            source = f"naive baseline of {name} (Poisson, {mean:.4g} req/s){sess_note}"
        else:
            _check_rate(p, rate, duration_s)  # fail on a bad --rate before anything is written
            batches = _with_progress(
                iter_workload_batches(p, duration_s, rate=rate, mode=mode or "renewal",
                                      seed=seed, correlated=correlated, app=app_name),
                duration_s, show)
            if sess is not None:  # streams: follow-ups are held back until their time
                batches = iter_sessionized(
                    batches, shapes=sess["shapes"], apps=parse_app_mix(apps) if apps else None,
                    app_scope=sess["app_scope"], rate_of=sess["rate_of"], seed=seed,
                    duration_s=duration_s, block_tokens=block_tokens, start=sess["start"])
            _write(lambda: write_workload_parquet(batches, out), out)
            source = (f"{name}, rate {rate or 'trace'}, mode {mode or 'renewal'}, seed {seed}"
                      f"{sess_note}")
    if not quiet:
        console().print(summary_table(out, source, None if sess is None else sess["shapes"],
                                      "steady" if sess is None else sess["start"]))


def _generate_dataset(out: Path, dataset: Path, *, quiet: bool, profile: str | None,
                      pool: Path | None, rate: str | None, duration: str | None, seed: int,
                      process: str | None, cv: float | None, output_tokens: str | None,
                      apps: str | None, app_name: str | None, others: dict[str, object],
                      dataset_format: str | None, requests: int | None,
                      single_turn: bool | None, tokenizer: str | None, endpoint: str | None,
                      think_time: str | None, max_context_tokens: int | None) -> None:
    """``generate --dataset``: every conversation a session (docs/prompts.md, Datasets)."""
    if profile is not None or pool is not None:
        raise UserError(f"give --dataset or {'--profile' if profile else '--pool'}, not both")
    if used := [k for k, v in others.items() if v is not None]:
        raise UserError(f"{', '.join(used)}: not with --dataset (it gives the prompts and their "
                        "lengths); it takes --rate, --process, --cv, --requests, --duration, "
                        "--single-turn, --tokenizer, --apps/--app")
    if apps is not None and app_name is not None:
        raise UserError("give --app (one app for every session) or --apps (a mix), not both")
    if endpoint is not None and endpoint not in ("chat", "completions"):
        raise UserError(f"--endpoint {endpoint!r}: use chat or completions")
    if requests is not None and requests < 1:
        raise UserError(f"--requests {requests}: must be a whole number >= 1")
    duration_s = parse_duration(duration, "--duration", allow_zero=False)
    rate_fn: object = rate or "5"
    if isinstance(rate_fn, str) and rate_fn.strip().lower().startswith("file:"):
        rate_fn = read_rate_file(rate_fn.strip()[5:])
    elif isinstance(rate_fn, str) and rate_fn.strip().lower().startswith(("trace", "peak:")):
        raise UserError(f"--rate {rate!r} needs --profile or --pool (it scales a trace); give "
                        "session starts/s, ramp:.. or step:.. for a dataset")
    table, _, _, stats = dataset_table(
        dataset, fmt=dataset_format, tokenizer=tokenizer, rate=rate_fn,
        process=process or "poisson", cv=1.0 if cv is None else cv, seed=seed,
        requests=requests, duration_s=duration_s, single_turn=bool(single_turn),
        think_s=parse_duration(think_time, "--think-time"), apps=app_name or apps,
        chat=(endpoint or "chat") == "chat", output_tokens=output_tokens,
        max_context_tokens=max_context_tokens)
    _write(lambda: _write_table(table, out), out)
    err = console(stderr=True)
    for note in dataset_notes(stats)[1 if quiet else 0:]:  # -q: only the warning
        err.print(f"[dim]{note}[/dim]", soft_wrap=True)
    if not quiet:
        source = (f"dataset {dataset} ({'single turn' if single_turn else 'sessions'}, "
                  f"{process or 'poisson'} starts at {rate or '5'}/s, seed {seed})")
        console().print(summary_table(out, source))


def _check_rate(p: ClientPool, rate: str | None, duration_s: float) -> object:
    try:
        return resolve_rate(p, rate, duration_s)
    except UserError as exc:
        if "is not a rate" in str(exc):
            raise UserError(f"--rate {rate!r} is not a rate; use {RATE_SPEC_FORMS}") from None
        raise


def _write(do: object, out: Path) -> int:
    try:
        return do()  # type: ignore[operator]
    except OSError as exc:
        tmp = out.with_name(out.name + ".tmp")
        if tmp.exists():
            tmp.unlink()
        raise UserError(f"-o {out}: cannot write ({exc.strerror or exc}); choose another "
                        "path") from None
