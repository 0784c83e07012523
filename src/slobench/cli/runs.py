"""``slobench runs``: list and filter the catalog; ``slobench export``: summaries, classes or
records of runs as CSV, JSON or Parquet."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import orjson
import typer
from rich.console import Console

from slobench.cli.main import app, user_errors
from slobench.errors import UserError
from slobench.report.runs_table import KIND_SHORT, runs_table
from slobench.report.terminal import MAX_WIDTH, console

FILTERS = "Filters"
KIND_ALIASES = {v: k for k, v in KIND_SHORT.items()}


def _console() -> Console:
    """Up to 100 columns, or the whole width of a wider terminal (the table has much to show)."""
    out = console()
    if out.is_terminal:
        out.width = max(40, shutil.get_terminal_size((MAX_WIDTH, 24)).columns)
    return out


@app.command("runs")
@user_errors
def runs_cmd(
    engine: str = typer.Option(None, "--engine", "-e", help="Engine (vllm, sglang, tgi, "
                               "llama.cpp, slobench-emulator, slobench-simulator, ...).",
                               rich_help_panel=FILTERS),
    model: str = typer.Option(None, "--model", "-m", help="Part of the model name.",
                              rich_help_panel=FILTERS),
    hardware: str = typer.Option(None, "--hardware", help="Part of the hardware name (h100).",
                                 rich_help_panel=FILTERS),
    scenario: str = typer.Option(None, "--scenario", help="Part of the scenario name "
                                 "(profile:language, synthetic, ...).", rich_help_panel=FILTERS),
    workload: str = typer.Option(None, "--workload", "-w", help="Workload fingerprint (a "
                                 "prefix): runs of the very same requests.",
                                 rich_help_panel=FILTERS),
    status: str = typer.Option(None, "--status", help="complete, running, interrupted, "
                               "killed.", rich_help_panel=FILTERS),
    kind: str = typer.Option(None, "--kind", help="live, simulated, capacity-trial, "
                             "sweep-point.", rich_help_panel=FILTERS),
    since: str = typer.Option(None, "--since", help="Started since a date (2026-05-01, local "
                              "time) or within an age (12h, 7d).", rich_help_panel=FILTERS),
    limit: int = typer.Option(50, "--limit", "-n", help="At most this many runs, newest "
                              "first.", rich_help_panel=FILTERS),
    scan: Path = typer.Option(None, "--scan", help="First index every run directory under "
                              "DIR (idempotent; brings killed runs up to date)."),
    catalog: str = typer.Option(None, "--catalog", help="Catalog URL or file (default: "
                                "$SLOBENCH_CATALOG, else catalog.sqlite in --scan DIR or "
                                "runs/)."),
    as_json: bool = typer.Option(False, "--json", help="Print the runs as JSON."),
) -> None:
    """List the runs of the catalog, newest first, filtered (docs/catalog.md)."""
    from slobench import api
    from slobench.store.catalog import parse_since, resolve_url, shown_url

    since_utc = parse_since(since, "--since") if since else None
    root = scan
    where = shown_url(resolve_url(catalog, root) or "")
    if scan is not None:
        result = api.scan(scan, catalog)
        err = console(stderr=True)
        err.print(f"Indexed {len(result.registered)} run(s) under {scan} into {where}.",
                  soft_wrap=True, markup=False, highlight=False)
        for path, reason in result.failed:
            err.print(f"warning: {path}: not indexed ({reason})", soft_wrap=True, markup=False)
    if kind is not None:
        kind = KIND_ALIASES.get(kind.strip().lower(), kind.strip().lower())
        if kind not in KIND_SHORT:
            raise UserError(f"--kind {kind}: use one of {', '.join(KIND_SHORT)}")
    rows = api.list_runs(catalog, root=root, engine=engine, model=model, hardware=hardware,
                         scenario=scenario, workload=workload, status=status, kind=kind,
                         since=since_utc, limit=limit)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2
                                             | orjson.OPT_NAIVE_UTC) + b"\n")
        return
    out = _console()
    if not rows:
        out.print("No runs match.", highlight=False)
        return
    more = " (--limit)" if len(rows) == limit else ""
    out.print(runs_table(rows, f"{len(rows)} run(s){more} in {where}", out.width))


@app.command()
@user_errors
def export(
    runs: list[str] = typer.Argument(..., help="Runs: directories, or ids in the catalog."),
    what: str = typer.Option("summary", "--what", help="summary (one row per run), classes "
                             "(one row per run and SLO class) or records (one row per "
                             "request, with TTFT/TPOT/E2E)."),
    fmt: str = typer.Option(None, "--format", "-f", help="csv, json or parquet (default: from "
                            "--output's suffix, else csv)."),
    output: Path = typer.Option(None, "--output", "-o", help="File to write (default: "
                                "standard output; Parquet needs a file)."),
    catalog: str = typer.Option(None, "--catalog", help="Catalog to look run ids up in "
                                "(default: $SLOBENCH_CATALOG, else runs/catalog.sqlite)."),
) -> None:
    """Write the summaries, per-class results or per-request records of runs as CSV, JSON or
    Parquet (docs/api.md)."""
    from slobench import api

    what = what.strip().lower()
    if what not in ("summary", "classes", "records"):
        raise UserError(f"--what {what}: use summary, classes or records")
    form = api.format_of(output, fmt)
    if form == "parquet" and output is None:
        raise UserError("--format parquet: give --output FILE (Parquet is binary)")
    if what == "records":
        table = api.records_table(runs, catalog)
    else:
        table = api.summary_table(runs, catalog, what=what)
    data = api.write_table_as(table, form, output)
    if data is not None:
        sys.stdout.buffer.write(data)
    else:
        console(stderr=True).print(f"Wrote {table.num_rows} row(s) to {output} ({form}).",
                                   soft_wrap=True, markup=False, highlight=False)
