"""``slobench sweep SWEEP.toml``: a server-parameter grid, each point a live benchmark run.

Each grid point starts the server from the file's command template (no shell, a free port of
127.0.0.1), runs the scenario against it, and stops its whole process group; ``sweep.json``
ranks the points by goodput (docs/sweep.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.table import Table

from slobench.cli.main import app, user_errors
from slobench.report.terminal import console
from slobench.sweep import (
    PointResult,
    SweepResult,
    load_sweep,
    params_text,
    run_sweep,
    scenario_workload,
)


def _seconds(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v * 1e3:.0f}ms" if v < 1 else f"{v:.2f}s"


def sweep_table(result: SweepResult) -> Table:
    """Params → goodput, SLO attainment, TTFT p99, TPOT p99, status; best goodput first."""
    table = Table(title=f"Sweep {result.sweep_id}: by goodput", title_justify="left")
    table.add_column("point", no_wrap=True)
    table.add_column("params", overflow="fold", max_width=36)
    for name in ("goodput/s", "attain.", "TTFT p99", "TPOT p99"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for p in result.ranked():
        has = p.goodput_rps is not None
        table.add_row(p.point.removeprefix("point-"), params_text(p.params),
                      f"{p.goodput_rps:.3g}" if has else "—",
                      f"{p.attainment:.1%}" if p.attainment is not None else "—",
                      _seconds(p.ttft_p99_s), _seconds(p.tpot_p99_s), p.status)
    return table


@app.command()
@user_errors
def sweep(
    file: Path = typer.Argument(..., help="Sweep file (TOML or JSON): command template, grid, "
                                "scenario (docs/sweep.md)."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Where the sweep folder "
                             "(runs/sweep-<time>/) goes."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment "
                                    "variable holding the API key (never written to disk)."),
    check: bool = typer.Option(False, "--check", help="Only check the file and list the "
                               "points; start nothing."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-point lines."),
) -> None:
    """Benchmark a server at every point of a parameter grid: start it per point (no shell,
    127.0.0.1), wait for health, run the scenario, stop it; rank the points by goodput."""
    spec = load_sweep(file)
    err = console(stderr=True)
    points = spec.points()
    if check:
        scenario_workload(spec)
        for i, params in enumerate(points, 1):
            console().print(f"point-{i:02d}  {params_text(params)}", markup=False,
                            highlight=False)
        console().print(f"{file}: OK, {len(points)} points", markup=False)
        return

    def started(p: PointResult) -> None:
        if not quiet:
            err.print(f"[dim]{p.point} ({params_text(p.params)}): starting[/dim]")

    def finished(p: PointResult) -> None:
        if quiet:
            return
        if p.status == "ok":
            err.print(f"{p.point}: goodput {p.goodput_rps or 0:.3g} req/s, attainment "
                      f"{p.attainment or 0:.1%}", markup=False)
        else:
            err.print(f"{p.point}: {p.status}: {p.error}", markup=False)

    key = os.environ.get(api_key_env) or None
    result = run_sweep(spec, out=out, api_key=key, on_start=started, on_point=finished)
    path = result.write()
    console().print(sweep_table(result))
    for p in result.points:
        if p.status == "failed":
            tail = (p.stderr_tail or "").strip().splitlines()[-3:]
            more = f"; stderr: {' | '.join(tail)}" if tail else ""
            err.print(f"{p.point} failed: {p.error}{more}", markup=False, soft_wrap=True)
    console().print(f"Results: {path}", markup=False)
    if result.interrupted:
        raise typer.Exit(130)
    if any(p.status != "ok" for p in result.points):
        raise typer.Exit(1)
