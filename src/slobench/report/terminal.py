"""Terminal output: a per-class summary table that fits 100 columns, throughput, client health."""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

MAX_WIDTH = 100


def fmt_s(value: float | None) -> str:
    """Seconds, compactly: 450µs, 85ms, 1.23s, 75s."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    v = float(value)
    if v == 0:
        return "0s"
    if v < 0:
        return "-" + fmt_s(-v)
    if v < 1e-3:
        return f"{v * 1e6:.0f}µs"
    if v < 1:
        return f"{v * 1e3:.3g}ms" if v < 0.1 else f"{v * 1e3:.0f}ms"
    if v < 100:
        return f"{v:.3g}s"
    return f"{v:.0f}s"


def fmt_rate(value: float | None, unit: str = "/s") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3g}{unit}" if value < 1000 else f"{value:,.0f}{unit}"


def fmt_frac(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.1%}" if value < 0.9995 else "100%"


def _lat(block: dict[str, Any], metric: str, q: str) -> str:
    return fmt_s(((block.get("latency") or {}).get(metric) or {}).get(q))


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1),
                  title_justify="left")
    for name, justify in (("class", "left"), ("reqs", "right"), ("err", "right"),
                          ("TTFT\np50", "right"), ("TTFT\np99", "right"),
                          ("TPOT\np50", "right"), ("TPOT\np99", "right"), ("ITL\np99", "right"),
                          ("E2E\np99", "right"), ("SLO\nmet", "right"),
                          ("goodput\nreq/s", "right")):
        table.add_column(name, justify=justify, no_wrap=True, max_width=14)  # type: ignore[arg-type]

    def row(name: str, block: dict[str, Any], style: str | None = None) -> None:
        slo = block.get("slo") or {}
        att = slo.get("attainment")
        passed = slo.get("passed")
        att_text = Text(fmt_frac(att), style="green" if passed else "red" if passed is not None
                        else "")
        errors = sum((block.get("errors") or {}).values())
        table.add_row(name, str(block.get("requests", 0)),
                      Text(str(errors), style="red" if errors else ""),
                      _lat(block, "ttft", "p50"), _lat(block, "ttft", "p99"),
                      _lat(block, "tpot", "p50"), _lat(block, "tpot", "p99"),
                      _lat(block, "itl", "p99"), _lat(block, "e2e", "p99"), att_text,
                      fmt_rate(block.get("goodput_rps"), ""), style=style)

    classes = summary.get("classes") or {}
    for app in sorted(classes):
        row(app[:14], classes[app])
    if len(classes) != 1:
        table.add_section()
        row("all", summary.get("overall") or {}, style="bold")
    return table


def health_text(health: dict[str, Any]) -> Text:
    if health.get("simulated"):
        return Text("Simulated in virtual time: no client, so no send lag to judge.",
                    style="green")
    lag = health.get("send_lag_s") or {}
    cpu = health.get("cpu") or {}
    detail = f"send lag p50 {fmt_s(lag.get('p50'))} p99 {fmt_s(lag.get('p99'))}"
    if cpu.get("samples"):
        detail += f", client CPU mean {cpu['mean']:.0%} of a core"
    if health.get("valid", True):
        return Text(f"Client healthy ({detail}).", style="green")
    text = Text(f"RUN NOT VALID: {'; '.join(health.get('reasons') or [])} ({detail}).",
                style="bold red")
    return text


def server_metrics_text(block: dict[str, Any] | None) -> str | None:
    """One line on the server side of a run (the ``server_metrics`` block of its manifest):
    queue, KV-cache use, prefix-cache hit rate, batching efficiency; None when there is none."""
    if not block:
        return None
    s = block.get("summary") or {}
    parts = []
    for key, label in (("requests_running", "running"), ("requests_waiting", "waiting")):
        if s.get(key):
            parts.append(f"{label} {s[key]['mean']:.1f} mean / {s[key]['max']:.0f} max")
    if s.get("kv_cache_usage"):
        parts.append(f"KV cache {fmt_frac(s['kv_cache_usage']['mean'])} mean / "
                     f"{fmt_frac(s['kv_cache_usage']['max'])} max")
    if s.get("prefix_cache_hit_rate") is not None:
        parts.append(f"prefix-cache hit rate {fmt_frac(s['prefix_cache_hit_rate'])}")
    if s.get("tokens_per_step") is not None:
        parts.append(f"{s['tokens_per_step']:.1f} tokens/step")
    if s.get("preemptions") is not None:
        parts.append(f"{s['preemptions']} preemptions")
    cache = block.get("prompt_cache") or {}
    if cache.get("hit_share") is not None:
        parts.append(f"cached prompt tokens (usage) {fmt_frac(cache['hit_share'])}")
    if parts:
        return "Server metrics: " + "; ".join(parts) + "."
    return f"Server metrics: none ({block['note']})." if block.get("note") else None


def render(summary: dict[str, Any], health: dict[str, Any], *, slo_specs: dict[str, str],
           run_path: str | None = None, notes: list[str] | None = None,
           server: dict[str, Any] | None = None) -> Group:
    overall = summary.get("overall") or {}
    thr = overall.get("throughput") or {}
    window = summary.get("window") or [0, 0]
    parts: list[Any] = [summary_table(summary)]
    lines = [
        f"Window {fmt_s(window[0])}–{fmt_s(window[1])} ({summary.get('total_requests', 0)} "
        f"requests, {summary.get('excluded_by_window', 0)} outside the window). "
        f"Throughput {fmt_rate(thr.get('requests_per_s'), ' req/s')}, "
        f"{fmt_rate(thr.get('input_tokens_per_s'), ' in tok/s')}, "
        f"{fmt_rate(thr.get('output_tokens_per_s'), ' out tok/s')}; "
        f"goodput {fmt_rate(overall.get('goodput_rps'), ' req/s')}.",
    ]
    errors = overall.get("errors") or {}
    if errors:
        lines.append("Errors: " + ", ".join(f"{k} {v}" for k, v in errors.items()) + ".")
    classes = summary.get("classes") or {}
    specs = [f"{app}: {slo_specs[app]}" for app in sorted(classes) if app in slo_specs]
    if specs:
        lines.append("SLOs (met when all hold; target attainment per class): " + "; ".join(specs))
    server_line = server_metrics_text(server)
    if server_line:
        lines.append(server_line)
    for line in lines:
        parts.append(Text(line))
    for note in notes or []:
        parts.append(Text(note, style="yellow"))
    parts.append(health_text(health))
    if run_path:
        parts.append(Text(f"Run saved to {run_path}", style="dim"))
    return Group(*parts)


def console(stderr: bool = False) -> Console:
    c = Console(stderr=stderr, highlight=False)
    if c.width > MAX_WIDTH or not c.is_terminal:
        c.width = MAX_WIDTH
    return c


def engine_text(d: dict[str, Any]) -> Text:
    """One paragraph about an engine model: what it is, what the model says it can do."""
    cfg = d.get("config") or {}
    parts = [f"{d.get('model')} on {d.get('tp', 1)}× {d.get('gpu')} "
             f"({d.get('weight_dtype')} weights, {d.get('kv_dtype')} KV)"]
    if d.get("kv_capacity_tokens") is not None:
        parts.append(f"KV cache {d['kv_capacity_tokens']:,} tokens")
    floor = d.get("decode_step_floor_s")
    if floor:
        parts.append(f"decode step at batch 1 {fmt_s(floor)}")
    if d.get("ttft_256_idle_s"):
        parts.append(f"idle TTFT at 256 prompt tokens {fmt_s(d['ttft_256_idle_s'])}")
    if cfg:
        parts.append(f"policy {cfg.get('policy')}, max {cfg.get('max_num_seqs')} seqs, "
                     f"{cfg.get('max_num_batched_tokens')} tokens/step")
    return Text("Engine model: " + "; ".join(parts) + ".", style="cyan")
