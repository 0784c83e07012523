"""``slobench simulate [WORKLOAD]``: the engine model in virtual time; writes a run like ``run``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from slobench.benchmark import run_simulation
from slobench.cli.main import app, user_errors
from slobench.cli.options import (
    app_scope_option,
    build_workload,
    catalog_choice,
    catalog_option,
    chunked_prefill_option,
    dataset_format_option,
    dataset_option,
    dtype_option,
    engine_config,
    engine_model_option,
    factors_option,
    gpu_option,
    kv_dtype_option,
    max_batched_tokens_option,
    max_num_seqs_option,
    no_catalog_option,
    policy_option,
    prefix_caching_option,
    session_rate_option,
    session_start_option,
    sessions_option,
    single_turn_option,
    tp_option,
)
from slobench.report.terminal import console, engine_text, render
from slobench.units import parse_duration

WORKLOAD = "Workload (when no WORKLOAD file is given)"


@app.command()
@user_errors
def simulate(
    workload: Path = typer.Argument(None, help="Workload Parquet file (default: synthetic)."),
    profile: str = typer.Option(None, "--profile", help="Built-in workload profile "
                                "(docs/profiles.md); --rate trace for its own rate.",
                                rich_help_panel=WORKLOAD),
    rate: str = typer.Option("10", "--rate", "-r", help="Requests/s: 10, ramp:1..20/60s or "
                             "step:2+2/30s..20.", rich_help_panel=WORKLOAD),
    process: str = typer.Option("poisson", "--process", help="Arrivals: poisson, gamma, "
                                "constant.", rich_help_panel=WORKLOAD),
    cv: float = typer.Option(1.0, "--cv", help="Inter-arrival CV (gamma).",
                             rich_help_panel=WORKLOAD),
    duration: str = typer.Option("300s", "--duration", "-d", help="Span of the synthetic "
                                 "workload.", rich_help_panel=WORKLOAD),
    requests: int = typer.Option(None, "--requests", "-n", help="Number of requests instead.",
                                 rich_help_panel=WORKLOAD),
    input_tokens: str = typer.Option("lognormal:mean=512,cv=0.6,max=4096", "--input-tokens",
                                     help="Prompt lengths.", rich_help_panel=WORKLOAD),
    output_tokens: str = typer.Option("lognormal:mean=128,cv=0.6,max=1024", "--output-tokens",
                                      help="Output lengths.", rich_help_panel=WORKLOAD),
    apps: str = typer.Option(None, "--apps", help="Application-class mix (default "
                             "chatbot:0.6,coding:0.3,summarization:0.1); with --sessions also "
                             "for --workload/--profile.", rich_help_panel=WORKLOAD),
    reasoning_fraction: float = typer.Option(0.0, "--reasoning-fraction", help="Thinking share"
                                             " of reasoning outputs.", rich_help_panel=WORKLOAD),
    seed: int = typer.Option(0, "--seed", help="Random seed of the synthetic workload.",
                             rich_help_panel=WORKLOAD),
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
    replicas: int = typer.Option(1, "--replicas", help="Engine replicas behind a router."),
    router: str = typer.Option("round_robin", "--router", help="round_robin, "
                               "least_outstanding, prefix_affinity."),
    slo: str = typer.Option(None, "--slo", "-s", help="SLOs per class (docs/slo.md)."),
    warmup: str = typer.Option("0s", "--warmup", help="Excluded from the summary."),
    cooldown: str = typer.Option("0s", "--cooldown", help="Excluded from the summary."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Where run directories go."),
    run_id: str = typer.Option(None, "--run-id", help="Name of the run directory."),
    sessions: str = sessions_option(),
    session_rate: str = session_rate_option(),
    app_scope: str = app_scope_option(),
    session_start: str = session_start_option(),
    dataset: Path = dataset_option(),
    dataset_format: str = dataset_format_option(),
    single_turn: bool = single_turn_option(),
    prefix_block_tokens: int = typer.Option(512, "--prefix-block-tokens", help="Tokens per "
                                            "Workload prefix_blocks hash (Mooncake: 512); a "
                                            "multiple of the KV block size.", min=1),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    catalog: str = catalog_option(),
    no_catalog: bool = no_catalog_option(),
) -> None:
    """Run the engine model in virtual time over a workload (no GPU, no waiting) and report
    latency, SLO attainment and goodput exactly as for a live run."""
    engine = engine_config(
        model=model, gpu=gpu, tp=tp, dtype=dtype, kv_dtype=kv_dtype, factors=factors,
        policy=policy, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, chunked_prefill=chunked_prefill,
        prefix_caching=prefix_caching)
    duration_s = None if requests else parse_duration(duration, "--duration", allow_zero=False)
    table, source, options = build_workload(
        workload, closed_loop=False, requests=requests, duration_s=duration_s, rate=rate,
        process=process, cv=cv, input_tokens=input_tokens, output_tokens=output_tokens,
        apps=apps, reasoning_fraction=reasoning_fraction, seed=seed, profile=profile,
        sessions=sessions, session_rate=session_rate, app_scope=app_scope,
        block_tokens=prefix_block_tokens, dataset=dataset, dataset_format=dataset_format,
        single_turn=single_turn, session_start=session_start)
    err = console(stderr=True)
    err.print(engine_text(engine.describe()))
    span = float(table["arrival_s"].to_numpy().max()) if table.num_rows else 0.0
    bar = Progress(TextColumn("[bold]simulating"), BarColumn(bar_width=24),
                   TaskProgressColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} "
                                                    "virtual s"), TimeElapsedColumn(),
                   console=err, transient=True)
    show = not quiet and err.is_terminal
    task = bar.add_task("sim", total=max(span, 1e-9))
    if show:
        bar.start()
    try:
        analysis = run_simulation(
            table, engine, replicas=replicas, router=router, slo=slo,
            warmup_s=parse_duration(warmup, "--warmup") or 0.0,
            cooldown_s=parse_duration(cooldown, "--cooldown") or 0.0, out=out, run_id=run_id,
            workload_source=source, workload_options=options,
            prefix_block_tokens=prefix_block_tokens, horizon_s=duration_s,
            catalog=catalog_choice(catalog, no_catalog),
            progress=(lambda t: bar.update(task, completed=min(t, span))) if show else None)
    finally:
        if show:
            bar.stop()
    sim = analysis.manifest.get("simulation") or {}
    stats = sim.get("stats") or {}
    sent = stats.get("requests", table.num_rows)
    notes = [f"Simulated {sim.get('simulated_s', 0):.0f} s of traffic ({sent} "
             f"requests, {replicas} replica(s), {router}) in {sim.get('wall_s', 0):.2f} s: "
             f"{sim.get('speedup') or 0:,.0f}× real time."]
    if stats.get("followups_after_horizon"):
        notes.append(f"{stats['followups_after_horizon']} session turns fell due after "
                     "--duration and were not sent, as in a live run.")
    specs = {a: analysis.slos.for_app(a).text for a in (analysis.summary.get("classes") or {})}
    console().print(render(analysis.summary, analysis.health, slo_specs=specs,
                           run_path=str(analysis.run.path), notes=notes))
