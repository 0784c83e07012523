"""``slobench report RUN_DIR``: recompute and print the summary of any run."""

from __future__ import annotations

from pathlib import Path

import orjson
import typer

from slobench.benchmark import analyze
from slobench.cli.main import app, user_errors
from slobench.report.terminal import console, render
from slobench.slo.fidelity import fidelity_warnings
from slobench.units import parse_duration


@app.command()
@user_errors
def report(
    run_dir: Path = typer.Argument(..., help="A run directory, e.g. runs/20261121-101500-ab12cd."),
    slo: str = typer.Option(None, "--slo", help="Judge the run against these SLOs instead of "
                            "the ones it ran with."),
    warmup: str = typer.Option(None, "--warmup", help="Override the warm-up excluded from the "
                               "summary."),
    cooldown: str = typer.Option(None, "--cooldown", help="Override the cool-down excluded."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Recompute and print the summary of a run, an interrupted or killed one included."""
    a = analyze(run_dir, slo=slo, warmup_s=parse_duration(warmup, "--warmup"),
                cooldown_s=parse_duration(cooldown, "--cooldown"))
    if as_json:
        typer.echo(orjson.dumps({"summary": a.summary, "client_health": a.health},
                                option=orjson.OPT_INDENT_2).decode())
        return
    notes = []
    status = a.manifest.get("status")
    if status == "running":
        notes.append(f"This run did not finish (killed?): summary from {a.records_source}.")
    elif status == "interrupted":
        notes.append("This run was interrupted: the summary covers what was measured before.")
    if a.torn_lines:
        notes.append(f"{a.torn_lines} torn journal line(s) skipped.")
    notes += fidelity_warnings(a.manifest.get("length_fidelity") or {})
    specs = {app: a.slos.for_app(app).text for app in (a.summary.get("classes") or {})}
    console().print(render(a.summary, a.health, slo_specs=specs, run_path=str(a.run.path),
                           notes=notes))
