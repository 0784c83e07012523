"""The terminal table of ``slobench runs``: one row per catalog run, fitted to the width."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from slobench.report.terminal import fmt_frac, fmt_rate, fmt_s

KIND_SHORT = {"live": "live", "simulated": "sim", "capacity-trial": "trial",
              "sweep-point": "sweep"}
STATUS_STYLE = {"complete": "green", "running": "yellow", "interrupted": "yellow",
                "killed": "red"}


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return "–"
    local = (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).astimezone()
    now = dt.datetime.now().astimezone()
    if local.date() == now.date():
        return local.strftime("%H:%M")
    return local.strftime("%m-%d" if local.year == now.year else "%y-%m-%d")


# (key, header, justify, priority: the lowest go first when the terminal is narrow,
#  width a flexible column may shrink to before any column is dropped; None: never shrunk)
COLUMNS: tuple[tuple[str, str, str, int, int | None], ...] = (
    ("run", "run", "left", 10, 22), ("when", "when", "left", 2, None),
    ("kind", "kind", "left", 3, None), ("engine", "engine", "left", 7, 8),
    ("model", "model", "left", 7, 10), ("hw", "hw", "left", 5, 6),
    ("scenario", "scenario", "left", 4, 8), ("reqs", "reqs", "right", 5, None),
    ("met", "SLO\nmet", "right", 9, None), ("goodput", "good-\nput/s", "right", 9, None),
    ("ttft", "TTFT\np99", "right", 8, None), ("status", "status", "left", 8, None),
)
GAP = 2  # columns are 2 apart: one space of padding, one of the box's divider
ENGINE_SHORT = {"slobench-emulator": "emulator", "slobench-simulator": "simulator"}


def _cells(r: dict[str, Any]) -> dict[str, Text]:
    hw = r.get("hardware") or "–"
    if r.get("tp") and r["tp"] > 1:
        hw = f"{r['tp']}×{hw}"
    engine = r.get("engine") or "–"
    if engine in ENGINE_SHORT:
        engine = ENGINE_SHORT[engine]
    elif r.get("engine_version"):
        engine = f"{engine} {r['engine_version']}"
    passed = r.get("slo_passed")
    status = r.get("status") or "–"
    unhealthy = "!" if r.get("client_healthy") is False else ""
    return {
        "run": Text(r["run"]), "when": Text(_when(r.get("started_at"))),
        "kind": Text(KIND_SHORT.get(r.get("kind") or "", "–")), "engine": Text(engine),
        "model": Text(r.get("model") or "–"), "hw": Text(hw),
        "scenario": Text(r.get("scenario") or (r.get("workload_fingerprint") or "–")[:8]),
        "reqs": Text("–" if r.get("requests") is None else str(r["requests"])),
        "met": Text(fmt_frac(r.get("attainment")) + unhealthy,
                    style="green" if passed else "red" if passed is not None else ""),
        "goodput": Text(fmt_rate(r.get("goodput_rps"), "")),
        "ttft": Text(fmt_s(r.get("ttft_p99"))),
        "status": Text(status, style=STATUS_STYLE.get(status, "")),
    }


def _fit(natural: dict[str, int], width: int) -> dict[str, int]:
    """Column widths that fit ``width``: shrink the flexible columns to their comfortable
    width, then drop the least important columns, then shrink further (to 4)."""
    spec = {key: (prio, soft) for key, _, _, prio, soft in COLUMNS}
    widths = dict(natural)

    def total() -> int:
        return sum(widths.values()) + GAP * (len(widths) - 1)

    for floor in (None, 4):
        while total() > width:
            flexible = [k for k in widths if spec[k][1] is not None
                        and widths[k] > (floor or spec[k][1])]
            if not flexible:
                break
            widest = max(flexible, key=lambda k: widths[k] - (floor or spec[k][1]))
            widths[widest] -= 1
        if floor is None:
            while total() > width and len(widths) > 4:
                del widths[min(widths, key=lambda k: spec[k][0])]
    while total() < width:  # room left after dropping a column: give it back
        short = [k for k in widths if widths[k] < natural[k]]
        if not short:
            break
        widths[max(short, key=lambda k: natural[k] - widths[k])] += 1
    return widths


def runs_table(rows: list[dict[str, Any]], title: str, width: int) -> Table:
    cells = [_cells(r) for r in rows]
    natural = {key: max(max(len(line) for line in header.split("\n")),
                        *(c[key].cell_len for c in cells))
               for key, header, *_ in COLUMNS}
    widths = _fit(natural, width)
    hidden = [key for key, *_ in COLUMNS if key not in widths]
    if hidden:
        title += f"; not shown for width: {', '.join(hidden)}"
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1, 0, 0),
                  title=title, title_justify="left", title_style="dim")
    keys = [key for key, *_ in COLUMNS if key in widths]
    for key, header, justify, *_ in COLUMNS:
        if key in widths:
            table.add_column(header, justify=justify, no_wrap=True,  # type: ignore[arg-type]
                             overflow="ellipsis", width=widths[key])
    for c in cells:
        if c["run"].cell_len > widths["run"]:  # keep both ends: group…/trial-03
            name, w = c["run"].plain, widths["run"]
            c["run"] = Text(name[:(w - 1) // 2] + "…" + name[-(w - 1 - (w - 1) // 2):])
        table.add_row(*(c[k] for k in keys))
    return table
