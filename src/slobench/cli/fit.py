"""``slobench fit LOG -o POOL``: build a client pool from a request log (docs/fit.md)."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from slobench.cli.main import app, user_errors
from slobench.errors import UserError
from slobench.report.terminal import console
from slobench.units import parse_duration
from slobench.workload.fit import (
    FAMILIES,
    LOG_FORMATS,
    TIME_UNITS,
    FitResult,
    LogColumns,
    export_servegen,
    fit_pool,
    save_fit,
)

COLS = "Column map (CSV, JSON lines or Parquet logs)"
MODEL = "Model"
_STAGES = {"reading": (0.0, 0.35), "sorting": (0.35, 0.5), "fitting arrivals": (0.5, 0.8),
           "lengths": (0.8, 1.0)}


def _col(flag: str, what: str) -> object:
    return typer.Option(None, flag, help=what, rich_help_panel=COLS)


def _check_out(out: Path) -> Path:
    if out.is_dir():
        raise UserError(f"-o {out}: is a directory; give a file name like pool.npz")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"-o {out}: the directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise UserError(f"-o {out}: cannot write there (permission denied); choose another path")
    return out


@app.command()
@user_errors
def fit(
    log: Path = typer.Argument(..., help="Request log: CSV, JSON lines or Parquet (or an "
                               "Azure, BurstGPT, Mooncake, Vidur trace)."),
    out: Path = typer.Option(..., "--out", "-o", help="Pool file to write (.npz; "
                             "`generate --pool` loads it)."),
    fmt: str = typer.Option("auto", "--format", help=f"Log format: {', '.join(LOG_FORMATS)} "
                            "(table: generic with the column map)."),
    time_col: str = _col("--time-col", "Arrival time column (seconds, or ISO date-times)."),
    time_unit: str = typer.Option("s", "--time-unit", help="Unit of numeric times: "
                                  f"{', '.join(TIME_UNITS)}.", rich_help_panel=COLS),
    client_col: str = _col("--client-col", "Client id column (none: one client)."),
    input_col: str = _col("--input-col", "Input (prompt) tokens column."),
    output_col: str = _col("--output-col", "Output tokens column (reasoning included)."),
    reasoning_col: str = _col("--reasoning-col", "Reasoning tokens column (optional)."),
    session_col: str = _col("--session-col", "Session id column (optional)."),
    app_col: str = _col("--app-col", "Application class column (optional)."),
    window: str = typer.Option("600s", "--window", help="Window of rates, CVs and gap "
                               "families.", rich_help_panel=MODEL),
    block: str = typer.Option("3600s", "--block", help="Block of length distributions (a "
                              "multiple of --window).", rich_help_panel=MODEL),
    min_share: float = typer.Option(0.01, "--min-share", help="Clients under this share of "
                                    "requests merge into 'other'.", rich_help_panel=MODEL),
    max_gaps: int = typer.Option(5000, "--max-gaps", help="Most gaps per window used by the "
                                 "family fit (a random sample).", rich_help_panel=MODEL),
    length_bin: float = typer.Option(0.01, "--length-bin", help="Relative bin width of token "
                                     "counts above 128 (0: exact).", rich_help_panel=MODEL),
    name: str = typer.Option(None, "--name", help="Pool name (default: the log's file name)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (gap subsample, tie spreading)."),
    export: Path = typer.Option(None, "--export-servegen", help="Also write the pool in the "
                                "ServeGen format into this directory (needs --window 600s)."),
    report_json: Path = typer.Option(None, "--report", help="Write the fit report as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Build a client pool from a request log: per client and window the rate, the
    inter-arrival CV and the best gap distribution (exponential, Gamma, Weibull, lognormal; by
    AIC, with KS), per client and block the length distributions, and sessions when the log
    has them."""
    out = _check_out(out)
    window_s = float(parse_duration(window, "--window", allow_zero=False) or 0.0)
    block_s = float(parse_duration(block, "--block", allow_zero=False) or 0.0)
    columns = LogColumns(time=time_col, client=client_col, input=input_col, output=output_col,
                         reasoning=reasoning_col, session=session_col, app=app_col,
                         time_unit=time_unit)
    if export is not None and abs(window_s - 600.0) > 1e-9:
        raise UserError("--export-servegen: the ServeGen format has 600 s windows; drop "
                        "--window or give --window 600s")
    if fmt == "table" and not columns.given():
        fmt = "auto"
    show = not quiet and console(stderr=True).is_terminal
    kwargs = {"format": fmt, "columns": columns, "window_s": window_s, "block_s": block_s,
              "min_share": min_share, "max_gaps": max_gaps, "length_bin": length_bin,
              "name": name, "seed": seed}
    try:
        if show:
            bar = Progress(TextColumn("[bold]fitting[/bold] {task.description}"),
                           BarColumn(bar_width=24), TimeElapsedColumn(),
                           console=console(stderr=True), transient=True)
            task = bar.add_task("reading", total=1.0)

            def progress(stage: str, frac: float) -> None:
                lo, hi = _STAGES.get(stage, (0.0, 1.0))
                bar.update(task, description=stage, completed=lo + (hi - lo) * frac)

            with bar:
                result = fit_pool(log, progress=progress, **kwargs)  # type: ignore[arg-type]
        else:
            result = fit_pool(log, **kwargs)  # type: ignore[arg-type]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{log}: cannot read the file ({exc})") from None
    try:
        size = save_fit(result, out)
    except OSError as exc:
        raise UserError(f"-o {out}: cannot write ({exc.strerror or exc}); choose another "
                        "path") from None
    if export is not None:
        export_servegen(result.pool, export)
    if report_json is not None:
        try:
            report_json.write_bytes(orjson.dumps(result.report, option=orjson.OPT_INDENT_2
                                                 | orjson.OPT_SERIALIZE_NUMPY))
        except OSError as exc:
            raise UserError(f"--report {report_json}: cannot write ({exc.strerror})") from None
    if not quiet:
        c = console()
        for t in summary_tables(result, out, size, export):
            c.print(t)


def summary_tables(result: FitResult, out: Path, size: int, export: Path | None) -> list[Table]:
    """The short summary: what was fitted, the families chosen, the biggest clients."""
    r = result.report
    pool = result.pool
    t = Table(title=f"Pool {out.name}", title_justify="left", show_header=False, box=None,
              pad_edge=False)
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold", max_width=76)
    t.add_row("source", f"{r['source']} ({r['format']}, {r['rows']:,} requests)")
    t.add_row("clients", f"{r['clients']} ({r['clients_merged_into_other']} merged into "
              f"'other' below {float(r['min_share']):.1%} of requests)")  # type: ignore[arg-type]
    t.add_row("windows", f"{r['windows']} x {r['window_s']:g} s; client-windows active "
              f"{r['client_windows_active']:,}, fitted {r['client_windows_fitted']:,}; length "
              f"blocks {r['block_s']:g} s")
    fams = r["families"]
    t.add_row("gap families", ", ".join(f"{k} {v:,}" for k, v in fams.items()  # type: ignore
                                         if v or k in FAMILIES))
    mk = r["median_ks"]
    t.add_row("KS (chosen)", "-" if mk is None else f"median {mk:.3f}, p90 {r['p90_ks']:.3f}")
    t.add_row("mean rate", f"{pool.mean_rate():,.3f} req/s over {pool.duration_s:,.0f} s")
    if r.get("timestamp_resolution_s"):
        t.add_row("timestamps", f"{r['timestamp_resolution_s']:g} s ticks (ties spread within "
                  "a tick)")
    lens = pool.summary()["lengths"]
    for f, d in lens.items():  # type: ignore[union-attr]
        if d["mean"] is not None:
            fmt = "{:.3f}" if f == "reason_ratio" else "{:,.0f}"
            t.add_row(f, " / ".join(fmt.format(d[k]) for k in ("mean", "p50", "p90", "p99"))
                      + "  (mean/p50/p90/p99)")
    s = r.get("sessions")
    if s:
        th = s["think_s"]  # type: ignore[index]
        t.add_row("sessions", f"{s['sessions']:,}, turns mean {s['turns']['mean']:.2f} "  # type: ignore[index]
                  f"(p90 {s['turns']['p90']:g}); think time ({s['think_basis']}) p50 "  # type: ignore[index]
                  f"{th['p50']:.1f} s, p90 {th['p90']:.1f} s")
    t.add_row("written", f"{out} ({size:,} bytes)" + (f"; ServeGen format in {export}"
                                                      if export else ""))
    c = Table(title="Top clients", title_justify="left", box=None, pad_edge=False)
    for col in ("client", "share", "req/s", "CV", "families", "median KS"):
        c.add_column(col, justify="left" if col in ("client", "families") else "right")
    for pc in r["per_client"][:10]:  # type: ignore[index]
        c.add_row(str(pc["client"])[:32], f"{pc['share']:.1%}", f"{pc['mean_rate_rps']:.3g}",
                  "-" if pc["cv"] is None else f"{pc['cv']:.2f}",
                  ", ".join(f"{k} {v}" for k, v in pc["families"].items()),
                  "-" if pc["median_ks"] is None else f"{pc['median_ks']:.3f}")
    return [t, c]
