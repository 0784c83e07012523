"""``slobench plan``: the fewest replicas that serve a workload within SLO, and what they cost,
over a what-if grid of GPUs, tensor parallelism, token budgets and routers (simulator only).

Every grid point is searched independently (``slobench.planning``), in parallel processes; the
workload is generated once and shared through a Parquet file. ``--windows`` plans a replica
count per window (a diurnal, autoscaled deployment) next to the static plan.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
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
    ray: str = typer.Option(None, "--ray", help="Run the grid as Ray tasks on this cluster "
                            "(auto, HOST:PORT or ray://HOST:PORT; needs slobench[ray])."),
    windows: str = typer.Option(None, "--windows", help="Plan a replica count per window of "
                                "this length (e.g. 1h: an autoscaled deployment over a diurnal "
                                "workload), next to the static plan."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Where the plan is written."),
) -> None:
    """The fewest replicas (per GPU type, TP size, token budget and router) that serve the
    workload within its SLOs, with their cost per hour and per million output tokens."""
    from slobench.engine.config import EngineConfig
    from slobench.engine.prices import load_prices, price_per_gpu_hour
    from slobench.planning import plan_one, plan_schedule, run_jobs
    from slobench.slo.spec import parse_slo

    parse_slo(slo)
    price_table = load_prices(prices)
    duration_s = float(parse_duration(duration, "--duration", allow_zero=False) or 0.0)
    window_s = (float(parse_duration(windows, "--windows", allow_zero=False) or 0.0)
                if windows else None)
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
                "prefix_block_tokens": prefix_block_tokens, "window_s": window_s,
                "label": {"gpu": engine.cost_model.gpu.name, "tp": tp,
                          "max_num_batched_tokens": budget, "router": router}})
        workers = min(jobs or os.cpu_count() or 1, len(job_list))
        if window_s is not None and window_s >= horizon:
            raise UserError(f"--windows {windows}: the workload spans {horizon:.0f} s, so there "
                            "is only one window; give a shorter window (e.g. 1h for a day)")
        err = console(stderr=True)
        where = f"Ray at {ray}" if ray else f"{workers} process(es)"
        err.print(f"[dim]Planning {len(job_list)} configuration(s) of {model} for {source} "
                  f"({table.num_rows} requests over {horizon:.0f} s) on {where}...[/dim]")
        with Progress(TextColumn("[bold]planning"), BarColumn(bar_width=24),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                      transient=True) as bar:
            task = bar.add_task("", total=len(job_list))
            results = run_jobs(plan_schedule if window_s is not None else plan_one, job_list,
                               workers=workers, ray_address=ray,
                               on_done=lambda _: bar.advance(task))
    for r in results:
        price = price_per_gpu_hour(price_table, r["gpu"])
        if r["replicas"] is not None and price is not None:
            r["gpus"] = r["replicas"] * r["tp"]
            r["dollars_per_hour"] = r["gpus"] * price
            if "replica_hours" in r:  # a schedule: pay for the replica-hours it uses
                r["dollars_per_hour"] = r["replica_hours"] * r["tp"] * price / (horizon / 3600)
                if r.get("static_replica_hours") is not None:
                    r["static_dollars_per_hour"] = r["static_replicas"] * r["tp"] * price
            tok_h = r["output_tokens_per_s"] * 3600
            r["dollars_per_million_output_tokens"] = (r["dollars_per_hour"] / tok_h * 1e6
                                                      if tok_h else None)
    results.sort(key=lambda r: (r.get("dollars_per_hour") is None,
                                r.get("dollars_per_hour") or 0.0))
    (folder / "plan.json").write_text(json.dumps(
        {"model": model, "workload": source, "requests": table.num_rows, "horizon_s": horizon,
         "slo": slo, "prices": price_table, "results": results}, indent=2) + "\n")
    console().print(plan_table(results) if window_s is None else schedule_table(results))
    if window_s is not None:
        write_schedule_html(results, folder / "plan.html", horizon)
    best = next((r for r in results if r.get("dollars_per_hour") is not None), None)
    if best is None:
        notes = "; ".join(sorted({r["note"] for r in results if r.get("note")}))
        console().print(f"[red]No configuration met the SLOs within {max_replicas} replicas"
                        f"{' (' + notes + ')' if notes else ''}.[/red] Plan: "
                        f"{folder / 'plan.json'}")
        raise typer.Exit(1)
    if window_s is None:
        console().print(f"Cheapest: [bold]{best['replicas']} × {best['gpu']} (TP {best['tp']})"
                        f"[/bold], {best['router']}, ${best['dollars_per_hour']:.2f}/h. "
                        f"Plan: {folder / 'plan.json'}")
        return
    counts = " ".join(str(w["replicas"]) for w in best["schedule"])
    console().print(f"Cheapest: [bold]{best['gpu']} (TP {best['tp']})[/bold], {best['router']}: "
                    f"replicas per {windows} window: {counts}; {best['replica_hours']:.1f} "
                    f"replica-hours, ${best['dollars_per_hour']:.2f}/h on average. "
                    f"Plan: {folder / 'plan.json'}, {folder / 'plan.html'}")


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


def _num(x: Any, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) else "—"


def schedule_table(results: list[dict[str, Any]]) -> Table:
    """Time-varying plans next to the static plan of each grid point."""
    table = Table(title="Replicas per window (autoscaled) against one static count",
                  title_justify="left")
    for name in ("GPU", "TP", "budget", "router", "replicas", "repl·h", "$/h", "static",
                 "repl·h ", "$/h ", "worst window"):
        table.add_column(name, justify="left" if name in ("GPU", "router") else "right")
    for r in results:
        head = [r["gpu"], str(r["tp"]), str(r["max_num_batched_tokens"]), r["router"]]
        if r["replicas"] is None:
            table.add_row(*head, "none", *["—"] * 6)
            continue
        ks = [w["replicas"] for w in r["schedule"]]
        worst = r.get("static_worst_window_attainment")
        table.add_row(
            *head, f"{min(ks)}–{max(ks)}", _num(r["replica_hours"], ".1f"),
            _num(r.get("dollars_per_hour"), ".2f"), str(r.get("static_replicas") or "none"),
            _num(r.get("static_replica_hours"), ".1f"),
            _num(r.get("static_dollars_per_hour"), ".2f"),
            (f"{worst:.1%} ({r['static_windows_failed']} fail)" if worst is not None
             else "—"))
    table.caption = ("replicas: fewest–most over the windows; static: one count for the whole "
                     "span, its cost, and its worst window's SLO attainment")
    return table


def write_schedule_html(results: list[dict[str, Any]], path: Path, horizon_s: float) -> Path:
    """Replicas per window against time for each grid point, static counts dashed, and the
    offered load on a second axis."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for i, r in enumerate(x for x in results if x["replicas"] is not None):
        name = f"{r['gpu']} TP{r['tp']} {r['max_num_batched_tokens']} {r['router']}"
        xs = [w["from_s"] / 3600 for w in r["schedule"]] + [r["schedule"][-1]["to_s"] / 3600]
        ys = [w["replicas"] for w in r["schedule"]]
        fig.add_trace(go.Scatter(x=xs, y=[*ys, ys[-1]], name=f"{name}: per window",
                                 line_shape="hv", mode="lines"), secondary_y=False)
        if r.get("static_replicas"):
            fig.add_trace(go.Scatter(x=[0, horizon_s / 3600], y=[r["static_replicas"]] * 2,
                                     name=f"{name}: static", mode="lines",
                                     line={"dash": "dash"}), secondary_y=False)
        if i == 0:
            fig.add_trace(go.Bar(x=[(w["from_s"] + w["to_s"]) / 7200 for w in r["schedule"]],
                                 y=[w["offered_rps"] for w in r["schedule"]],
                                 name="offered load (req/s)", opacity=0.25),
                          secondary_y=True)
    fig.update_layout(title="Replica plan over time", xaxis_title="hours",
                      template="plotly_white")
    fig.update_yaxes(title_text="replicas", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="req/s", rangemode="tozero", secondary_y=True)
    path.write_text(fig.to_html(include_plotlyjs=True, full_html=True), encoding="utf-8")
    return path
