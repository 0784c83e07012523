"""``slobench report RUN_DIR``: recompute and print the summary of any run."""

from __future__ import annotations

from pathlib import Path

import orjson
import typer
from rich.console import Console

from slobench.benchmark import Analysis, analyze
from slobench.cli.main import app, user_errors
from slobench.errors import UserError
from slobench.report.run_report import write_run_report
from slobench.report.terminal import console, render
from slobench.slo.fidelity import fidelity_warnings
from slobench.store.catalog import register_safely
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
    html: bool = typer.Option(True, "--html/--no-html", help="Also write RUN/report.html (plots; "
                              "opens offline; docs/reports.md)."),
) -> None:
    """Recompute and print the summary of a run, an interrupted or killed one included."""
    a = analyze(run_dir, slo=slo, warmup_s=parse_duration(warmup, "--warmup"),
                cooldown_s=parse_duration(cooldown, "--cooldown"))
    if slo is None and warmup is None and cooldown is None:  # as it ran: update its catalog entry
        register_safely(a.run.path, doc={"summary": a.summary, "client_health": a.health})
    if as_json:
        typer.echo(orjson.dumps({"summary": a.summary, "client_health": a.health},
                                option=orjson.OPT_INDENT_2).decode())
        if html:
            _write_html(a, console(stderr=True))
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
                           notes=notes, server=a.manifest.get("server_metrics")))
    if html:
        _write_html(a, console())


def _write_html(a: Analysis, out: Console) -> None:
    """The HTML report next to the run's files; a run directory we may not write to is a
    warning (the summary above stands), not a failure."""
    try:
        page = write_run_report(a.run.path, analysis=a)
    except UserError as exc:
        console(stderr=True).print(f"warning: {exc} (or pass --no-html)", soft_wrap=True,
                                   markup=False)
        return
    out.print(f"HTML report: {page}", soft_wrap=True, markup=False)
