"""``slobench study``: packaged studies. ``provisioning``: does a naive workload under-provision?

For each profile: the realistic per-client workload and the naive baseline (aggregate Poisson at
the same mean rate, lengths from the aggregate distributions: ``naive_workload``) are each
planned on the simulator (the fewest replicas within SLO); then the realistic workload is run on
the replicas the naive plan chose. The report: both replica counts, the under-provisioning
(1 − naive / realistic) and the SLO attainment the realistic traffic gets on the naive plan.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from slobench.cli.main import app, user_errors
from slobench.cli.options import engine_model_option, gpu_option, policy_option, tp_option
from slobench.errors import UserError
from slobench.report.terminal import console
from slobench.schema import write_table
from slobench.units import parse_duration

study_app = typer.Typer(help="Packaged studies (docs/provisioning.md).", no_args_is_help=True)
app.add_typer(study_app, name="study")


def provisioning_row(profile: str, *, rate: str, duration_s: float, seed: int,
                     engine: dict[str, Any], slo: str | None, router: str,
                     max_replicas: int, folder: Path, capacity_tol: float = 0.03
                     ) -> dict[str, Any]:
    """One profile of the study (see the module docstring)."""
    import pyarrow.parquet as pq

    from slobench.engine.config import EngineConfig
    from slobench.engine.simulator import simulate
    from slobench.planning import plan_one
    from slobench.slo.capacity import find_capacity, is_saturated, trial_from_summary
    from slobench.slo.spec import parse_slo
    from slobench.slo.summary import summarize
    from slobench.workload.generate import naive_workload
    from slobench.workload.profiles import load_profile, profile_workload

    real = profile_workload(profile, rate=rate, duration_s=duration_s, requests=None, seed=seed)
    mean_rate = real.num_rows / duration_s
    pool = load_profile(profile)  # lengths of the same span the realistic workload covers
    span = pool.span(pool.start_s, min(pool.end_s, pool.start_s + duration_s))
    naive = naive_workload(span, duration_s, seed=seed, rate=mean_rate)
    paths = {}
    for name, table in (("realistic", real), ("naive", naive)):
        paths[name] = folder / f"{profile}-{name}.parquet"
        write_table(table, paths[name])
    plans = {}
    for name, path in paths.items():
        plans[name] = plan_one({
            "workload": str(path), "engine": engine, "slo": slo, "router": router,
            "horizon_s": duration_s, "max_replicas": max_replicas,
            "prefix_block_tokens": 512, "label": {"workload": name}})
    r_real, r_naive = plans["realistic"]["replicas"], plans["naive"]["replicas"]
    row: dict[str, Any] = {
        "profile": profile, "requests": real.num_rows, "mean_rps": mean_rate,
        "realistic_replicas": r_real, "naive_replicas": r_naive,
        "naive_attainment_on_naive_plan": plans["naive"].get("attainment"),
    }
    if r_real is None or r_naive is None:
        row["note"] = "; ".join(f"{name}: {plans[name].get('note') or 'no plan'}"
                                for name in ("realistic", "naive")
                                if plans[name]["replicas"] is None)
        return row
    row["under_provisioning"] = 1.0 - r_naive / r_real
    cfg = EngineConfig(**engine)
    res = simulate(pq.read_table(paths["realistic"]), cfg.scheduler_maker(512),
                   replicas=r_naive, router=router, horizon_s=duration_s)
    window = (0.0, duration_s)
    summary = summarize(res.records, parse_slo(slo), window=window)
    t = trial_from_summary(float(r_naive), summary,
                           saturated=is_saturated(res.records, window))
    row["realistic_attainment_on_naive_plan"] = t.attainment
    row["realistic_goodput_on_naive_plan"] = t.goodput_rps
    row["realistic_meets_slo_on_naive_plan"] = t.passed
    row["attainment_shortfall"] = max(0.0, (plans["realistic"].get("attainment") or 0.0)
                                      - t.attainment)

    # Replica counts are coarse; the capacity of one fixed deployment (the realistic plan) is
    # not: how much traffic each workload says it carries within SLO.
    slos = parse_slo(slo)

    def trial(make: Any, load: float) -> Any:
        table = make(load)
        res = simulate(table, cfg.scheduler_maker(512), replicas=r_real, router=router,
                       horizon_s=duration_s)
        summary = summarize(res.records, slos, window=window)
        return trial_from_summary(load, summary, saturated=is_saturated(res.records, window))

    def make_real(load: float) -> Any:
        return profile_workload(profile, rate=_times(rate, load), duration_s=duration_s,
                                requests=None, seed=seed)

    def make_naive(load: float) -> Any:
        return naive_workload(span, duration_s, seed=seed, rate=mean_rate * load)

    for name, make in (("realistic", make_real), ("naive", make_naive)):
        cap = find_capacity(lambda x, m=make: trial(m, x), start=1.0, rel_tol=capacity_tol)
        row[f"{name}_capacity_rps"] = cap.capacity_rps
    if row.get("realistic_capacity_rps") and row.get("naive_capacity_rps"):
        row["naive_overestimates_capacity"] = (row["naive_capacity_rps"]
                                               / row["realistic_capacity_rps"] - 1.0)
    return row


def _times(rate: str, load: float) -> str:
    from slobench.cli.capacity import scaled_rate

    return scaled_rate(rate, load)


@study_app.command("provisioning")
@user_errors
def provisioning(
    profiles: str = typer.Option("language,reasoning", "--profiles", help="Built-in profiles "
                                 "to study (comma-separated)."),
    rate: str = typer.Option("trace", "--rate", "-r", help="Each profile's rate: trace, "
                             "trace*k, peak:p or req/s."),
    duration: str = typer.Option("15min", "--duration", "-d", help="Span of each workload."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    slo: str = typer.Option(None, "--slo", "-s", help="SLOs per class (docs/slo.md)."),
    model: str = engine_model_option(),
    gpu: str = gpu_option(),
    tp: int = tp_option(),
    policy: str = policy_option(),
    router: str = typer.Option("least_outstanding", "--router", help="round_robin, "
                               "least_outstanding, prefix_affinity."),
    max_replicas: int = typer.Option(256, "--max-replicas", help="Give up above this many.",
                                     min=1),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Where the report goes."),
) -> None:
    """Plan capacity with a realistic per-client workload and with the naive baseline (same
    mean rate, aggregate lengths); run the realistic traffic on the naive plan; report the
    under-provisioning and the SLO attainment it costs."""
    from slobench.engine.config import EngineConfig
    from slobench.slo.spec import parse_slo
    from slobench.workload.profiles import profile_names

    parse_slo(slo)
    names = [p.strip() for p in profiles.split(",") if p.strip()]
    unknown = [p for p in names if p not in profile_names()]
    if not names or unknown:
        raise UserError(f"--profiles: unknown {', '.join(unknown) or '(none given)'}; built-in "
                        f"profiles are {', '.join(profile_names())}")
    duration_s = float(parse_duration(duration, "--duration", allow_zero=False) or 0.0)
    engine = EngineConfig(model=model, gpu=gpu, tp=tp, policy=policy).validate_all()
    folder = out / time.strftime("study-provisioning-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    err = console(stderr=True)
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            err.print(f"[dim]{name}: planning the realistic and the naive workload...[/dim]")
            rows.append(provisioning_row(name, rate=rate, duration_s=duration_s, seed=seed,
                                         engine=engine.model_dump(), slo=slo, router=router,
                                         max_replicas=max_replicas, folder=Path(tmp)))
    report = {"study": "provisioning", "model": model, "gpu": engine.cost_model.gpu.name,
              "tp": tp, "rate": rate, "duration_s": duration_s, "seed": seed, "slo": slo,
              "router": router, "wall_s": time.perf_counter() - started, "rows": rows}
    (folder / "provisioning.json").write_text(json.dumps(report, indent=2) + "\n")
    table = provisioning_table(rows)
    (folder / "provisioning.md").write_text(provisioning_markdown(report) + "\n")
    console().print(table)
    console().print(f"Report: {folder / 'provisioning.md'} ({report['wall_s']:.0f} s)")


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def _rps(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def _n(x: int | None) -> str:
    return "none" if x is None else str(x)


def provisioning_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Naive vs realistic provisioning", title_justify="left")
    for name in ("profile", "req/s", "replicas real", "replicas naive", "under-prov.",
                 "attain. on naive plan", "capacity real", "capacity naive", "naive over"):
        table.add_column(name, justify="left" if name == "profile" else "right")
    for r in rows:
        table.add_row(r["profile"], f"{r['mean_rps']:.3g}", _n(r["realistic_replicas"]),
                      _n(r["naive_replicas"]), _pct(r.get("under_provisioning")),
                      _pct(r.get("realistic_attainment_on_naive_plan")),
                      _rps(r.get("realistic_capacity_rps")), _rps(r.get("naive_capacity_rps")),
                      _pct(r.get("naive_overestimates_capacity")))
    notes = [f"{r['profile']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        table.caption = "\n".join(notes)
    return table


def provisioning_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Provisioning study: {report['model']} on {report['gpu']} (TP {report['tp']})",
             "",
             f"Rate {report['rate']}, {report['duration_s']:.0f} s per workload, seed "
             f"{report['seed']}, router {report['router']}, SLOs "
             f"{report['slo'] or 'defaults (docs/slo.md)'}.",
             "",
             "| profile | req/s | replicas (realistic) | replicas (naive) | under-provisioned | "
             "realistic attainment on the naive plan | capacity of the realistic plan, "
             "realistic traffic (req/s) | same, naive traffic (req/s) | naive overestimates "
             "capacity by |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['profile']} | {r['mean_rps']:.3g} | {_n(r['realistic_replicas'])} | "
                     f"{_n(r['naive_replicas'])} | {_pct(r.get('under_provisioning'))} | "
                     f"{_pct(r.get('realistic_attainment_on_naive_plan'))} | "
                     f"{_rps(r.get('realistic_capacity_rps'))} | "
                     f"{_rps(r.get('naive_capacity_rps'))} | "
                     f"{_pct(r.get('naive_overestimates_capacity'))} |")
    notes = [f"- {r['profile']}: {r['note']}" for r in report["rows"] if r.get("note")]
    return "\n".join(lines + (["", *notes] if notes else []))


# ---------------------------------------------------------------------------------------------
# Step-load comparison

STEP_METRICS = (
    ("throughput", "completed req/s", lambda b: b["throughput"]["requests_per_s"], "max"),
    ("goodput", "goodput req/s", lambda b: b["goodput_rps"], "max"),
    ("ttft_p50", "TTFT p50 (s)", lambda b: b["latency"]["ttft"].get("p50"), "min"),
    ("ttft_p99", "TTFT p99 (s)", lambda b: b["latency"]["ttft"].get("p99"), "min"),
    ("tpot_p50", "TPOT p50 (s)", lambda b: b["latency"]["tpot"].get("p50"), "min"),
    ("e2e_p99", "E2E p99 (s)", lambda b: b["latency"]["e2e"].get("p99"), "min"),
)


def step_windows(plan: Any) -> list[tuple[int, float, float]]:
    """(users, start, end) of every step of a step ramp."""
    starts = plan.ramp_start_times()
    times = sorted(set(starts))
    out = []
    for k, t in enumerate(times):
        end = times[k + 1] if k + 1 < len(times) else t + plan.ramp_interval_s
        out.append((sum(1 for s in starts if s <= t), t, end))
    return out


def step_table(results: dict[str, list[dict[str, Any]]], metric: str) -> Table:
    """One metric: a row per step, a column per target, the best of each row in bold."""
    label, better = next((lab, b) for m, lab, _, b in STEP_METRICS if m == metric)
    targets = list(results)
    table = Table(title=label, title_justify="left")
    table.add_column("users", justify="right")
    for t in targets:
        table.add_column(t, justify="right")
    n_steps = max(len(v) for v in results.values())
    for k in range(n_steps):
        values = []
        for t in targets:
            steps = results[t]
            values.append(steps[k]["metrics"].get(metric) if k < len(steps) else None)
        known = [v for v in values if v is not None]
        best = (max(known) if better == "max" else min(known)) if known else None
        users = next(results[t][k]["users"] for t in targets if k < len(results[t]))
        cells = []
        for v in values:
            text = "—" if v is None else f"{v:.3g}"
            cells.append(f"[bold green]{text}[/bold green]" if v is not None and v == best
                         and len(known) > 1 else text)
        table.add_row(str(users), *cells)
    return table


@study_app.command("steps")
@user_errors
def steps(
    targets: list[str] = typer.Option(..., "--target", "-t", help="A server URL, or "
                                      "emulator:GPU (e.g. emulator:h100, emulator:l40s) to "
                                      "start the built-in emulator; repeat for each target."),
    ramp: str = typer.Option("2+2/10s..16", "--ramp", help="Step ramp: START+STEP/INTERVAL..MAX"
                             " users (the same for every target)."),
    engine_preset: str = typer.Option("auto", "--engine", "-e", help="Engine preset "
                                      "for URL targets (auto: detected from the server)."),
    input_tokens: str = typer.Option("lognormal:mean=512,cv=0.6,max=4096", "--input-tokens",
                                     help="Prompt lengths."),
    output_tokens: str = typer.Option("lognormal:mean=128,cv=0.6,max=1024", "--output-tokens",
                                      help="Output lengths."),
    think_time: str = typer.Option("0s", "--think-time", help="Pause between a user's "
                                   "requests."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the workload."),
    slo: str = typer.Option(None, "--slo", "-s", help="SLOs per class (docs/slo.md)."),
    model: str = engine_model_option(),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Where runs and the report go."),
) -> None:
    """The same step ramp of closed-loop users against several targets, and one table per
    metric (a row per step, a column per target): no single metric has a single winner."""
    import contextlib

    from slobench.benchmark import BenchmarkConfig, TargetConfig, built_in_target, run_benchmark
    from slobench.cli.run import parse_ramp
    from slobench.client.pacing import LoadPlan
    from slobench.client.runner import Timeouts
    from slobench.engine.config import EngineConfig
    from slobench.slo.spec import parse_slo
    from slobench.slo.summary import summarize
    from slobench.workload.synthetic import synthetic_workload

    parse_slo(slo)
    r_start, r_step, r_interval, r_max = parse_ramp(ramp)
    plan = LoadPlan(mode="ramp", ramp_start=r_start, ramp_step=r_step,
                    ramp_interval_s=r_interval, ramp_max=r_max,
                    think_s=parse_duration(think_time, "--think-time")).validate()
    windows = step_windows(plan)
    plan = LoadPlan(**{**plan.__dict__, "duration_s": windows[-1][2]}).validate()
    table = synthetic_workload(process="constant", rate=1000.0, n_requests=5000,
                               input_tokens=input_tokens, output_tokens=output_tokens,
                               apps="chatbot", seed=seed)
    folder = out / time.strftime("study-steps-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    slos = parse_slo(slo)
    err = console(stderr=True)
    results: dict[str, list[dict[str, Any]]] = {}
    for k, spec in enumerate(targets):
        with contextlib.ExitStack() as stack:
            if spec.startswith("emulator:"):
                engine = EngineConfig(model=model, gpu=spec.split(":", 1)[1]).validate_all()
                url = stack.enter_context(built_in_target(engine))
                preset = "vllm"
            else:
                url, preset = spec, engine_preset
            err.print(f"[dim]{spec}: ramp {ramp} ({windows[-1][2]:.0f} s)...[/dim]")
            analysis = run_benchmark(table, BenchmarkConfig(
                target=TargetConfig(url=url, engine=preset), plan=plan,
                timeouts=Timeouts(request_s=120, stall_s=60), slo=slo, out=folder,
                run_id=f"target-{k + 1}"))
        import pyarrow.parquet as pq

        records = pq.read_table(analysis.run.path / "records.parquet")
        per_step = []
        for users, a, b in windows:
            summary = summarize(records, slos, window=(a, b))
            block = summary["overall"]
            per_step.append({"users": users, "window": [a, b], "metrics": {
                m: pick(block) for m, _, pick, _ in STEP_METRICS}})
        results[spec] = per_step
    report = {"study": "steps", "ramp": ramp, "targets": targets, "slo": slo,
              "results": results}
    (folder / "steps.json").write_text(json.dumps(report, indent=2) + "\n")
    con = console()
    for metric, *_ in STEP_METRICS:
        con.print(step_table(results, metric))
    con.print(f"Report: {folder / 'steps.json'}")
