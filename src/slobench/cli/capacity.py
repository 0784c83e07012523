"""``slobench capacity``: the highest load a setup sustains within its SLOs, and the whole curve.

Without ``--target`` every trial runs on the simulator (virtual time: seconds for the whole
search); with ``--target URL`` every trial is a live run against that server. Each trial is a
run directory of its own; ``capacity.json`` and ``capacity.html`` sum them up.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pyarrow.parquet as pq
import typer
from rich.table import Table

from slobench.cli.main import app, user_errors
from slobench.cli.options import (
    build_workload,
    engine_config,
    engine_model_option,
    gpu_option,
    max_batched_tokens_option,
    max_num_seqs_option,
    policy_option,
    sessions_option,
    tp_option,
)
from slobench.client.backends.openai import strip_credentials
from slobench.errors import UserError
from slobench.report.terminal import console, engine_text
from slobench.slo.capacity import (
    CapacityResult,
    Trial,
    average_trials,
    find_capacity,
    is_saturated,
    trial_from_summary,
)
from slobench.slo.spec import parse_slo
from slobench.units import parse_duration

WORKLOAD = "Workload"
SEARCH = "Search"
_NUMBER = re.compile(r"^\s*\d+(\.\d*)?([eE][+-]?\d+)?\s*$")


def scaled_rate(rate: str, load: float) -> str:
    """``rate`` multiplied by ``load``: a number, ``trace``, ``trace*k`` or ``peak:p``."""
    text = rate.strip().lower()
    if _NUMBER.match(text):
        return f"{float(text) * load:.10g}"
    if text == "trace":
        return f"trace*{load:.10g}"
    if m := re.fullmatch(r"trace\s*\*\s*([0-9.eE+-]+)", text):
        return f"trace*{float(m.group(1)) * load:.10g}"
    if m := re.fullmatch(r"peak:\s*([0-9.eE+-]+)", text):
        return f"peak:{float(m.group(1)) * load:.10g}"
    raise UserError(f"--rate {rate!r}: capacity scales a steady rate; give req/s (e.g. 10), "
                    "trace, trace*2 or peak:50, not a ramp or a rate file")


@app.command()
@user_errors
def capacity(
    target: str = typer.Option(None, "--target", "-t", help="Live server URL; without it every "
                               "trial runs on the simulator."),
    engine_preset: str = typer.Option("auto", "--engine", "-e", help="Live: engine preset "
                                      "(auto: detected; or vllm, sglang, tgi, trtllm, llamacpp, "
                                      "emulator, openai, generic)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Live: environment "
                                    "variable holding the API key (never written to disk)."),
    profile: str = typer.Option(None, "--profile", help="Built-in workload profile; its rate "
                                "is scaled.", rich_help_panel=WORKLOAD),
    rate: str = typer.Option("4", "--rate", "-r", help="Base rate, scaled by the search: req/s, "
                             "trace, trace*k or peak:p.", rich_help_panel=WORKLOAD),
    process: str = typer.Option("poisson", "--process", help="Arrivals: poisson, gamma, "
                                "constant.", rich_help_panel=WORKLOAD),
    cv: float = typer.Option(1.0, "--cv", help="Inter-arrival CV (gamma).",
                             rich_help_panel=WORKLOAD),
    duration: str = typer.Option("120s", "--duration", "-d", help="Length of each trial.",
                                 rich_help_panel=WORKLOAD),
    input_tokens: str = typer.Option("lognormal:mean=512,cv=0.6,max=4096", "--input-tokens",
                                     help="Prompt lengths.", rich_help_panel=WORKLOAD),
    output_tokens: str = typer.Option("lognormal:mean=128,cv=0.6,max=1024", "--output-tokens",
                                      help="Output lengths.", rich_help_panel=WORKLOAD),
    apps: str = typer.Option(None, "--apps", help="Application-class mix.",
                             rich_help_panel=WORKLOAD),
    sessions: str = sessions_option(),
    seed: int = typer.Option(0, "--seed", help="Random seed of the workload (the same for "
                             "every trial).", rich_help_panel=WORKLOAD),
    slo: str = typer.Option(None, "--slo", "-s", help="SLOs per class, with their attainment "
                            "targets (default 90%: docs/slo.md)."),
    warmup: str = typer.Option("0s", "--warmup", help="Excluded from each trial's summary."),
    start: float = typer.Option(1.0, "--start", help="First load, as a multiple of --rate.",
                                rich_help_panel=SEARCH),
    tolerance: float = typer.Option(0.05, "--tolerance", help="Stop when the bracket is "
                                    "within this relative width.", rich_help_panel=SEARCH),
    max_trials: int = typer.Option(24, "--max-trials", help="Most trials in all.",
                                   rich_help_panel=SEARCH, min=2),
    repeats: int = typer.Option(1, "--repeats", help="Live: trials per load (majority vote, "
                                "mean attainment).", rich_help_panel=SEARCH, min=1),
    model: str = engine_model_option(),
    gpu: str = gpu_option(),
    tp: int = tp_option(),
    policy: str = policy_option(),
    max_num_seqs: int = max_num_seqs_option(),
    max_num_batched_tokens: int = max_batched_tokens_option(),
    replicas: int = typer.Option(1, "--replicas", help="Simulated replicas behind a router."),
    router: str = typer.Option("round_robin", "--router", help="round_robin, "
                               "least_outstanding, prefix_affinity."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Where run directories go."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-trial lines."),
) -> None:
    """Find the highest load at which every class still meets its SLO attainment target, and
    report the whole curve (attainment and goodput against load)."""
    from slobench.benchmark import (
        BenchmarkConfig,
        TargetConfig,
        run_benchmark,
        run_simulation,
    )
    from slobench.client.pacing import LoadPlan
    from slobench.client.runner import Timeouts

    duration_s = float(parse_duration(duration, "--duration", allow_zero=False) or 0.0)
    warmup_s = float(parse_duration(warmup, "--warmup") or 0.0)
    if warmup_s >= duration_s:
        raise UserError("--warmup must be shorter than --duration")
    parse_slo(slo)  # fail on a bad spec before any trial
    scaled_rate(rate, 1.0)
    err = console(stderr=True)
    engine = None
    if target is None:
        engine = engine_config(model=model, gpu=gpu, tp=tp, dtype="bf16", kv_dtype="bf16",
                               factors=None, policy=policy, max_num_seqs=max_num_seqs,
                               max_num_batched_tokens=max_num_batched_tokens,
                               chunked_prefill=True, prefix_caching=True)
        err.print(engine_text(engine.describe()))
    search_id = time.strftime("capacity-%Y%m%d-%H%M%S")
    folder = out / search_id
    folder.mkdir(parents=True, exist_ok=True)
    counter = iter(range(1, 10_000))

    def one(load: float) -> Trial:
        table, source, options = build_workload(
            None, closed_loop=False, requests=None, duration_s=duration_s,
            rate=scaled_rate(rate, load), process=process, cv=cv, input_tokens=input_tokens,
            output_tokens=output_tokens, apps=apps, reasoning_fraction=0.0, seed=seed,
            profile=profile, sessions=sessions)
        run_id = f"trial-{next(counter):02d}-x{load:.4g}"
        if engine is not None:
            analysis = run_simulation(table, engine, replicas=replicas, router=router, slo=slo,
                                      warmup_s=warmup_s, out=folder, run_id=run_id,
                                      workload_source=source, workload_options=options,
                                      horizon_s=duration_s, html_report=False)
        else:
            key = os.environ.get(api_key_env) or None
            cfg = BenchmarkConfig(
                target=TargetConfig(url=target, engine=engine_preset, api_key=key),
                plan=LoadPlan(mode="open", duration_s=duration_s, warmup_s=warmup_s),
                timeouts=Timeouts(), slo=slo, out=folder, run_id=run_id,
                workload_source=source, workload_options=options,
                html_report=False)  # capacity.html sums the trials up; `report` makes one
            analysis = run_benchmark(table, cfg)
        records = pq.read_table(analysis.run.path / "records.parquet")
        window = tuple(analysis.summary["window"])
        return trial_from_summary(load, analysis.summary,
                                  saturated=is_saturated(records, window),  # type: ignore[arg-type]
                                  run_id=run_id)

    def evaluate(load: float) -> Trial:
        if engine is not None or repeats == 1:
            return one(load)
        return average_trials([one(load) for _ in range(repeats)])

    def show(t: Trial) -> None:
        if not quiet:
            verdict = "[green]meets[/green]" if t.passed else "[red]fails[/red]"
            sat = ", saturated" if t.saturated else ""
            err.print(f"load ×{t.load:.4g}: {t.offered_rps:.3g} req/s offered, attainment "
                      f"{t.attainment:.1%}, goodput {t.goodput_rps:.3g} req/s: {verdict}{sat}")

    result = find_capacity(evaluate, start=start, rel_tol=tolerance, max_trials=max_trials,
                           on_trial=show)
    shown = strip_credentials(target) if target else None  # no user:password@ or ?api_key=
    report = {"target": shown or "simulator", "engine": engine.describe() if engine else None,
              "rate": rate, "profile": profile, "duration_s": duration_s, "slo": slo,
              **result.as_dict()}
    (folder / "capacity.json").write_text(json.dumps(report, indent=2) + "\n")
    html = write_capacity_html(result, folder / "capacity.html", title=f"Capacity of "
                               f"{shown or 'the simulated engine'}")
    console().print(capacity_table(result))
    if result.capacity_rps is None:
        console().print(f"[red]No load met the SLOs[/red] ({result.stopped}). Curve: {html}")
        raise typer.Exit(1)
    console().print(f"Capacity: [bold]{result.capacity_rps:.3g} req/s[/bold] (load "
                    f"×{result.capacity_load:.4g} of --rate {rate}); {result.stopped}. "
                    f"Curve: {html}")


def capacity_table(result: CapacityResult) -> Table:
    table = Table(title="Attainment and goodput against load", title_justify="left")
    for name in ("load", "offered req/s", "attainment", "goodput req/s", "TTFT p99", "verdict"):
        table.add_column(name, justify="right" if name != "verdict" else "left")
    for t in result.curve():
        ttft = "—" if t.ttft_p99_s is None else (f"{t.ttft_p99_s * 1e3:.0f}ms"
                                                if t.ttft_p99_s < 1 else f"{t.ttft_p99_s:.2f}s")
        verdict = "meets" if t.passed else ("fails, saturated" if t.saturated else "fails")
        table.add_row(f"×{t.load:.4g}", f"{t.offered_rps:.3g}", f"{t.attainment:.1%}",
                      f"{t.goodput_rps:.3g}", ttft, verdict)
    return table


def write_capacity_html(result: CapacityResult, path: Path, *, title: str) -> Path:
    """Attainment and goodput against offered load, the capacity marked."""
    from slobench.report.html import goodput_load_figure, write_figures_page

    points = [{"load": t.offered_rps, "goodput": t.goodput_rps, "attainment": t.attainment,
               "label": ", ".join(t.run_ids)} for t in result.curve()]
    fig = goodput_load_figure(points, title="Goodput and SLO attainment against offered load",
                              capacity_rps=result.capacity_rps)
    return write_figures_page(path, title, [fig], intro=[f"Search stopped: {result.stopped}."])
