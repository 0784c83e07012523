"""``slobench plan``: the fewest replicas that serve a workload within SLO, and what they cost,
over a what-if grid of GPUs, tensor parallelism, token budgets and routers (simulator only).

Every grid point is searched independently (``min_replicas``: double, then bisect), in parallel
processes; the workload is generated once and shared through a Parquet file.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from slobench.cli.main import app, user_errors
from slobench.cli.options import (
    build_workload,
    engine_model_option,
    policy_option,
    sessions_option,
)
from slobench.errors import UserError
from slobench.report.terminal import console
from slobench.schema import write_table
from slobench.units import parse_duration

WORKLOAD = "Workload (when no WORKLOAD file is given)"
GRID = "What-if grid (comma-separated values)"


def _list(text: str, what: str, cast: type = str) -> list[Any]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError(f"{what}: give at least one value")
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise UserError(f"{what} {text!r}: every value must be a whole number") from None


def plan_one(job: dict[str, Any]) -> dict[str, Any]:
    """One grid point: the fewest replicas meeting the SLOs (runs in a worker process)."""
    import pyarrow.parquet as pq

    from slobench.engine.config import EngineConfig
    from slobench.engine.simulator import simulate
    from slobench.slo.capacity import is_saturated, min_replicas, trial_from_summary
    from slobench.slo.spec import parse_slo
    from slobench.slo.summary import summarize

    table = pq.read_table(job["workload"])
    engine = EngineConfig(**job["engine"])
    slos = parse_slo(job["slo"])
    window = (0.0, job["horizon_s"])
    maker = engine.scheduler_maker(job["prefix_block_tokens"])
    seen: dict[int, Any] = {}

    def evaluate(n: int):
        res = simulate(table, maker, replicas=n, router=job["router"],
                       horizon_s=job["horizon_s"])
        summary = summarize(res.records, slos, window=window)
        t = trial_from_summary(float(n), summary,
                               saturated=is_saturated(res.records, window))
        seen[n] = (t, res.stats.get("generation_tokens", 0))
        return t

    best, trials = min_replicas(evaluate, max_replicas=job["max_replicas"])
    out = {**job["label"], "replicas": best, "trials": len(trials)}
    if best is not None:
        t, gen_tokens = seen[best]
        out.update(attainment=t.attainment, goodput_rps=t.goodput_rps,
                   output_tokens_per_s=gen_tokens / job["horizon_s"])
    return out


@app.command()
@user_errors
def plan(
    workload: Path = typer.Argument(None, help="Workload file (default: generated from the "
                                    "options below)."),
    profile: str = typer.Option(None, "--profile", help="Built-in workload profile.",
                                rich_help_panel=WORKLOAD),
    rate: str = typer.Option("20", "--rate", "-r", help="Aggregate req/s (a profile: trace, "
                             "trace*k, peak:p, a number).", rich_help_panel=WORKLOAD),
    duration: str = typer.Option("600s", "--duration", "-d", help="Span of the workload.",
                                 rich_help_panel=WORKLOAD),
    input_tokens: str = typer.Option("lognormal:mean=512,cv=0.6,max=4096", "--input-tokens",
                                     help="Prompt lengths.", rich_help_panel=WORKLOAD),
    output_tokens: str = typer.Option("lognormal:mean=128,cv=0.6,max=1024", "--output-tokens",
                                      help="Output lengths.", rich_help_panel=WORKLOAD),
    apps: str = typer.Option(None, "--apps", help="Application-class mix.",
                             rich_help_panel=WORKLOAD),
    sessions: str = sessions_option(),
    seed: int = typer.Option(0, "--seed", help="Random seed of the workload.",
                             rich_help_panel=WORKLOAD),
    slo: str = typer.Option(None, "--slo", "-s", help="SLOs per class (docs/slo.md)."),
    model: str = engine_model_option(),
    gpus: str = typer.Option("h100", "--gpu", help="GPU types to try.", rich_help_panel=GRID),
    tps: str = typer.Option("1", "--tp", help="Tensor-parallel sizes to try.",
                            rich_help_panel=GRID),
    budgets: str = typer.Option("8192", "--max-num-batched-tokens", help="Step token budgets "
                                "to try.", rich_help_panel=GRID),
    routers: str = typer.Option("least_outstanding", "--router", help="Routers to try: "
                                "round_robin, least_outstanding, prefix_affinity.",
                                rich_help_panel=GRID),
    policy: str = policy_option(),
    max_replicas: int = typer.Option(64, "--max-replicas", help="Give up above this many.",
                                     min=1),
    prices: Path = typer.Option(None, "--prices", help="JSON/TOML: dollars per GPU-hour by "
                                "GPU (default: example prices, docs/plan.md)."),
    jobs: int = typer.Option(0, "--jobs", "-j", help="Worker processes (default: CPUs).",
                             min=0),
    prefix_block_tokens: int = typer.Option(512, "--prefix-block-tokens", help="Tokens per "
                                            "Workload prefix_blocks hash.", min=1),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Where the plan is written."),
) -> None:
    """The fewest replicas (per GPU type, TP size, token budget and router) that serve the
    workload within its SLOs, with their cost per hour and per million output tokens."""
    from slobench.engine.config import EngineConfig
    from slobench.engine.prices import load_prices, price_per_gpu_hour
    from slobench.slo.spec import parse_slo

    parse_slo(slo)
    price_table = load_prices(prices)
    duration_s = float(parse_duration(duration, "--duration", allow_zero=False) or 0.0)
    table, source, _ = build_workload(
        workload, closed_loop=False, requests=None, duration_s=duration_s, rate=rate,
        process="poisson", cv=1.0, input_tokens=input_tokens, output_tokens=output_tokens,
        apps=apps, reasoning_fraction=0.0, seed=seed, profile=profile, sessions=sessions)
    horizon = duration_s if workload is None else float(table["arrival_s"].to_numpy().max())
    grid = list(itertools.product(_list(gpus, "--gpu"), _list(tps, "--tp", int),
                                  _list(budgets, "--max-num-batched-tokens", int),
                                  _list(routers, "--router")))
    folder = out / time.strftime("plan-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "workload.parquet"
        write_table(table, path)
        job_list = []
        for gpu, tp, budget, router in grid:
            engine = EngineConfig(model=model, gpu=gpu, tp=tp, policy=policy,
                                  max_num_batched_tokens=budget,
                                  max_num_seqs=min(256, budget)).validate_all()
            job_list.append({
                "workload": str(path), "engine": engine.model_dump(), "slo": slo,
                "router": router, "horizon_s": horizon, "max_replicas": max_replicas,
                "prefix_block_tokens": prefix_block_tokens,
                "label": {"gpu": engine.cost_model.gpu.name, "tp": tp,
                          "max_num_batched_tokens": budget, "router": router}})
        workers = min(jobs or os.cpu_count() or 1, len(job_list))
        err = console(stderr=True)
        err.print(f"[dim]Planning {len(job_list)} configuration(s) of {model} for {source} "
                  f"({table.num_rows} requests over {horizon:.0f} s) on {workers} "
                  "process(es)...[/dim]")
        if workers == 1:
            results = [plan_one(j) for j in job_list]
        else:
            with ProcessPoolExecutor(workers) as pool:
                results = list(pool.map(plan_one, job_list))
    for r in results:
        price = price_per_gpu_hour(price_table, r["gpu"])
        if r["replicas"] is not None and price is not None:
            r["gpus"] = r["replicas"] * r["tp"]
            r["dollars_per_hour"] = r["gpus"] * price
            tok_h = r["output_tokens_per_s"] * 3600
            r["dollars_per_million_output_tokens"] = (r["dollars_per_hour"] / tok_h * 1e6
                                                      if tok_h else None)
    results.sort(key=lambda r: (r.get("dollars_per_hour") is None,
                                r.get("dollars_per_hour") or 0.0))
    (folder / "plan.json").write_text(json.dumps(
        {"model": model, "workload": source, "requests": table.num_rows, "horizon_s": horizon,
         "slo": slo, "prices": price_table, "results": results}, indent=2) + "\n")
    console().print(plan_table(results))
    best = next((r for r in results if r.get("dollars_per_hour") is not None), None)
    if best is None:
        console().print(f"[red]No configuration met the SLOs within {max_replicas} replicas."
                        f"[/red] Plan: {folder / 'plan.json'}")
        raise typer.Exit(1)
    console().print(f"Cheapest: [bold]{best['replicas']} × {best['gpu']} (TP {best['tp']})"
                    f"[/bold], {best['router']}, ${best['dollars_per_hour']:.2f}/h. "
                    f"Plan: {folder / 'plan.json'}")


def plan_table(results: list[dict[str, Any]]) -> Table:
    table = Table(title="Fewest replicas within SLO", title_justify="left")
    for name in ("GPU", "TP", "budget", "router", "replicas", "GPUs", "$/h", "$/M out tok",
                 "attainment"):
        table.add_column(name, justify="left" if name in ("GPU", "router") else "right")
    for r in results:
        if r["replicas"] is None:
            table.add_row(r["gpu"], str(r["tp"]), str(r["max_num_batched_tokens"]), r["router"],
                          "none", "—", "—", "—", "—")
            continue
        per_m = r.get("dollars_per_million_output_tokens")
        table.add_row(r["gpu"], str(r["tp"]), str(r["max_num_batched_tokens"]), r["router"],
                      str(r["replicas"]), str(r.get("gpus", "—")),
                      f"{r['dollars_per_hour']:.2f}" if "dollars_per_hour" in r else "—",
                      f"{per_m:.2f}" if per_m else "—", f"{r['attainment']:.1%}")
    return table
