"""``slobench workload inspect FILE``: describe one workload (a table, and figures on request)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import typer
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from slobench.cli.main import app, user_errors
from slobench.errors import UserError
from slobench.report.terminal import console, fmt_frac, fmt_rate, fmt_s
from slobench.workload.realism import MIN_WINDOWS
from slobench.workload.traces import FORMATS

workload_app = typer.Typer(
    name="workload",
    help="Describe workloads: rate over time, burstiness, clients, lengths, sessions.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(workload_app, name="workload")

_SPARK = "▁▂▃▄▅▆▇█"
_SPARK_WIDTH = 80


@workload_app.command("inspect")
@user_errors
def inspect(
    file: Path = typer.Argument(..., help="A workload or trace: our Parquet/JSONL, Azure, "
                                "BurstGPT, Mooncake or Vidur (format detected)."),
    html: Path = typer.Option(None, "--html", help="Write an HTML page with figures (works "
                              "offline) to this path."),
    png: Path = typer.Option(None, "--png", help="Write one PNG per figure into this directory "
                             "(needs kaleido + Chromium, or matplotlib)."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON instead "
                                 "of tables."),
    fmt: str = typer.Option("auto", "--format", help=f"Trace format: auto, {', '.join(FORMATS)}."),
) -> None:
    """Describe one workload: rate, burstiness, clients, apps, lengths (see docs/inspect.md).

    Also images, sessions and prefix reuse when the workload has them.
    """
    from slobench.workload.inspect import inspect_workload
    from slobench.workload.traces import load_trace

    try:
        table = load_trace(file, fmt)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: cannot read the file ({exc})") from None
    stats = inspect_workload(table)
    notes: list[str] = []
    if html is not None:
        from slobench.report.workload_plots import write_html

        notes.append(f"HTML report written to {write_html(stats, html, source=file.name)}")
    if png is not None:
        from slobench.report.workload_plots import PngUnavailable, write_pngs

        try:
            paths = write_pngs(stats, png)
            notes.append(f"{len(paths)} PNG figure(s) written to {png}")
        except PngUnavailable as exc:
            sys.stderr.write(f"warning: PNG figures skipped: {exc}\n")
    if as_json:
        typer.echo(orjson.dumps({"file": str(file), **stats},
                                option=orjson.OPT_INDENT_2).decode())
        for note in notes:
            sys.stderr.write(note + "\n")
        return
    out = console()
    out.print(render(stats, str(file)))
    for note in notes:
        out.print(Text(note, style="dim"))


# ----------------------------------------------------------------------------- terminal


def _num(v: Any) -> str:
    if v is None:
        return "–"
    v = float(v)
    if v >= 1e6:
        return f"{v / 1e6:.3g}M"
    if v >= 1e4:
        return f"{v / 1e3:.3g}k"
    if v >= 1000 or v == int(v):
        return f"{v:,.0f}"
    return f"{v:.4g}"


def _span(seconds: float) -> str:
    if seconds >= 3600:
        h, m = divmod(round(seconds / 60), 60)
        return f"{h}h {m}m"
    if seconds >= 120:
        m, s = divmod(round(seconds), 60)
        return f"{m}m {s}s"
    return fmt_s(seconds)


def _table(*columns: str) -> Table:
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1))
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right", no_wrap=True)
    return t


def sparkline(values: list[float], width: int = _SPARK_WIDTH) -> str:
    """Values as a one-line bar chart, averaged down to at most ``width`` characters."""
    if not values:
        return ""
    n = len(values)
    k = -(-n // width)  # values per character
    grouped = [sum(values[i:i + k]) / len(values[i:i + k]) for i in range(0, n, k)]
    top = max(grouped)
    if top <= 0:
        return _SPARK[0] * len(grouped)
    return "".join(_SPARK[min(len(_SPARK) - 1, int(v / top * len(_SPARK)))] for v in grouped)


def render(stats: dict[str, Any], source: str) -> Group:
    """The compact terminal summary (fits 100 columns)."""
    parts: list[Any] = []
    rot = stats["rate_over_time"]
    ia = stats.get("interarrival") or {}
    cv = ia.get("cv")
    head = (f"{source}: {stats['requests']:,} requests over {_span(stats['span_s'])}, "
            f"mean {fmt_rate(stats.get('mean_rate_rps'), ' req/s')}, "
            f"peak {fmt_rate(rot.get('peak_rps'), ' req/s')} "
            f"({fmt_s(rot['bin_s'])} bins); inter-arrival CV "
            f"{'–' if cv is None else f'{cv:.2f}'} (Poisson 1).")
    parts.append(Text(head, style="bold"))
    if rot.get("counts"):
        parts.append(Text(f"rate  {sparkline(rot['rate_rps'])}", style="cyan"))

    scales = _table("burstiness", *(f"{fmt_s(s['window_s'])} windows" for s in stats["scales"]))
    rows = {"windows": [], "mean count": [], "CV of counts": [], "  Poisson CV": [],
            "var/mean (Poisson 1)": []}
    for s in stats["scales"]:
        rows["windows"].append(_num(s["windows"]))
        rows["mean count"].append(_num(s["mean_count"]))
        rows["CV of counts"].append("–" if s["cv"] is None else f"{s['cv']:.3f}")
        rows["  Poisson CV"].append("–" if s["poisson_cv"] is None else f"{s['poisson_cv']:.3f}")
        d = s["dispersion"]
        rows["var/mean (Poisson 1)"].append(
            Text("–") if d is None else Text(f"{d:.2f}", style="red" if d > 2 else ""))
    for name, cells in rows.items():
        scales.add_row(name, *cells)
    parts.append(scales)

    lengths = _table("tokens", "p50", "p90", "p99", "max", "mean", "total")
    tok = stats["tokens"]
    for key in ("input", "output", "reasoning"):
        t = tok.get(key)
        if t:
            name = key if key != "reasoning" else f"reasoning ({fmt_frac(tok['reasoning_share'])})"
            lengths.add_row(name, _num(t["p50"]), _num(t["p90"]), _num(t["p99"]), _num(t["max"]),
                            _num(t["mean"]), _num(tok[f"total_{key}"]))
    parts.append(lengths)

    for key, label, what in (("clients", "client", "clients"), ("apps", "app", "apps")):
        block = stats[key]
        t = _table(f"{label} ({block['distinct']})", "requests", "share", "token share")
        for e in block["top"]:
            t.add_row(e["name"][:40], f"{e['requests']:,}", fmt_frac(e["share"]),
                      fmt_frac(e["token_share"]))
        rest = block.get("rest")
        if rest:
            t.add_row(f"rest ({rest['count']} {what})", f"{rest['requests']:,}",
                      fmt_frac(rest["share"]), fmt_frac(rest["token_share"]), style="dim")
        parts.append(t)

    lines = []
    if stats.get("sessions"):
        s = stats["sessions"]
        think = s.get("think_s") or {}
        lines.append(
            f"Sessions: {s['sessions']:,} ({s['multi_turn_sessions']:,} multi-turn), turns per "
            f"multi-turn session p50 {_num(s['turns_per_multi_turn_session']['p50'])} max "
            f"{_num(s['turns_per_multi_turn_session']['max'])}; follow-ups "
            f"{fmt_frac(s['followup_share'])} of requests, think time p50 "
            f"{fmt_s(think.get('p50'))} p99 {fmt_s(think.get('p99'))}.")
    if stats.get("images"):
        im = stats["images"]
        lines.append(
            f"Images: {im['images']:,} in {fmt_frac(im['share_with_images'])} of requests, "
            f"per request p50 {_num(im['images_per_request']['p50'])} max "
            f"{_num(im['images_per_request']['max'])}; tokens per image p50 "
            f"{_num(im['tokens_per_image']['p50'])} p99 {_num(im['tokens_per_image']['p99'])}.")
    if stats.get("prefix"):
        p = stats["prefix"]
        lines.append(
            f"Prefix blocks: {p['requests_with_prefix']:,} requests, {p['blocks']:,} blocks "
            f"({p['distinct_blocks']:,} distinct); first block seen before in "
            f"{fmt_frac(p['first_block_reuse'])} of requests; {fmt_frac(p['block_reuse'])} of "
            f"blocks seen before (unbounded prefix-cache hit ratio).")
    parts.extend(Text(line) for line in lines)
    return Group(*parts)


# ----------------------------------------------------------------------------- compare

_VERDICT_STYLE = {"close": "green", "differs": "yellow", "far": "bold red", "n/a": "dim"}
_SHARE_KEYS = ("top1_share", "top5_share", "followup_share", "block_reuse")


@workload_app.command("compare")
@user_errors
def compare(
    a: str = typer.Argument(..., help="Workload A: a workload or trace file, a ServeGen pool "
                            "directory, or profile:NAME."),
    b: str = typer.Argument(..., help="Workload B, the reference (same forms as A)."),
    duration: str = typer.Option("1h", "--duration", "-d", help="Span generated for a pool or "
                                 "profile (files are used whole)."),
    seed: int = typer.Option(0, "--seed", help="Random seed for a pool or profile."),
    plots: Path = typer.Option(None, "--plots", help="Write compare.html (and PNGs when kaleido "
                               "or matplotlib is installed) into this directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of "
                                 "the table."),
) -> None:
    """Realism report of A against the reference B: rate, burstiness across time scales,
    lengths, clients, sessions, each judged close / differs / far (see docs/realism.md)."""
    from slobench.units import parse_duration
    from slobench.workload.realism import compare_workloads, load_source

    duration_s = float(parse_duration(duration, "--duration", allow_zero=False) or 0.0)
    if seed < 0:
        raise UserError(f"--seed {seed} must be a whole number >= 0")
    table_a, desc_a = load_source(a, duration_s=duration_s, seed=seed)
    table_b, desc_b = load_source(b, duration_s=duration_s, seed=seed)
    report = compare_workloads(table_a, table_b, names=("A", "B"))
    report["sources"] = {"A": desc_a, "B": desc_b}
    notes: list[str] = []
    if plots is not None:
        from slobench.report.realism_plots import PngUnavailable, write_html, write_pngs

        notes.append(f"HTML report written to {write_html(report, plots / 'compare.html')}")
        try:
            paths = write_pngs(report, plots)
            notes.append(f"{len(paths)} PNG figure(s) written to {plots}")
        except PngUnavailable as exc:
            sys.stderr.write(f"warning: PNG figures skipped: {exc}\n")
    if as_json:
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        for note in notes:
            sys.stderr.write(note + "\n")
        return
    out = console()
    out.print(render_compare(report))
    for note in notes:
        out.print(Text(note, style="dim"))


def _value(key: str, v: Any) -> str:
    if v is None:
        return "–"
    if key in _SHARE_KEYS:
        return fmt_frac(v)
    return _num(v) if abs(float(v)) >= 10 or float(v) == int(v) else f"{float(v):.3g}"


def _distance(s: dict[str, Any], d: float | None = None) -> str:
    """A distance (or a threshold, ``d``) in the unit of its measure."""
    d = s["distance"] if d is None else d
    if d is None:
        return "–"
    if d == float("inf"):
        return "∞"
    m = s["measure"]
    if m == "rel. diff":
        return f"{d:.1%}"
    if m == "ratio":
        return f"×{d:.2f}"
    if m == "abs. diff":
        return f"±{d:.3f}"
    if m == "wasserstein":
        return f"W1 {d:.1%}"
    return f"KS {d:.3f}"


def _threshold(s: dict[str, Any], d: float) -> str:
    m = s["measure"]
    if m in ("rel. diff", "wasserstein"):
        return f"{d:.0%}"
    return f"×{d:g}" if m == "ratio" else f"{d:g}"


def render_compare(report: dict[str, Any]) -> Group:
    """The comparison table (fits 100 columns) and the summary line."""
    parts: list[Any] = []
    for side, key in (("A", "a"), ("B", "b")):
        s = report[key]
        src = report.get("sources", {}).get(side, side)
        parts.append(Text(f"{side}: {src}: {s['requests']:,} requests over "
                          f"{_span(s['span_s'])}, {fmt_rate(s['mean_rate_rps'], ' req/s')}"
                          + ("  (reference)" if side == "B" else "")))
    t = _table("statistic", "A", "B", "distance", "close / far", "verdict")
    group = None
    for s in report["statistics"]:
        if s["group"] != group and group is not None:
            t.add_section()
        group = s["group"]
        v = s["verdict"]
        t.add_row(s["label"], _value(s["key"], s["a"]), _value(s["key"], s["b"]), _distance(s),
                  f"{_threshold(s, s['close'])} / {_threshold(s, s['far'])}",
                  Text(v, style=_VERDICT_STYLE.get(v, "")))
    parts.append(t)
    style = _VERDICT_STYLE.get(report["verdict"], "")
    parts.append(Text(report["summary"], style=style))
    if report["counts"].get("n/a"):
        parts.append(Text("n/a: not judged (a value missing on a side, or fewer than "
                          f"{MIN_WINDOWS} whole windows at that time scale)", style="dim"))
    return Group(*parts)
