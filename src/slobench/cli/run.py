"""``slobench run``: benchmark a target (a URL, or the built-in target) with a workload and SLOs."""

from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import replace
from pathlib import Path

import orjson
import typer

from slobench.benchmark import (
    BenchmarkConfig,
    TargetConfig,
    built_in_target,
    emulator_health,
    run_benchmark,
)
from slobench.cli.main import app, user_errors
from slobench.cli.options import (
    DEFAULT_APPS,
    app_scope_option,
    build_workload,
    catalog_choice,
    catalog_option,
    dataset_format_option,
    dataset_option,
    gpu_option,
    no_catalog_option,
    policy_option,
    session_rate_option,
    session_start_option,
    sessions_option,
    single_turn_option,
    tp_option,
)
from slobench.client.pacing import LoadPlan
from slobench.client.runner import Progress, Runner, Timeouts
from slobench.engine.config import DEFAULT_MODEL, EngineConfig
from slobench.errors import UserError
from slobench.report.live import LiveDisplay
from slobench.report.terminal import console, engine_text, render
from slobench.slo.fidelity import fidelity_warnings
from slobench.slo.spec import parse_slo
from slobench.store.rundir import RunDir
from slobench.units import parse_duration

_RAMP = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*/\s*([^.]+?)\s*\.\.\s*(\d+)\s*$")


def parse_ramp(text: str) -> tuple[int, int, float, int]:
    m = _RAMP.match(text)
    if not m:
        raise UserError(f"--ramp: '{text}' is not a step ramp; write START+STEP/INTERVAL..MAX, "
                        "e.g. 2+2/10s..16 (2 users, 2 more every 10 s, up to 16)")
    interval = parse_duration(m.group(3), "--ramp interval", allow_zero=False)
    return int(m.group(1)), int(m.group(2)), float(interval or 0), int(m.group(4))


def parse_json_object(text: str | None, option: str) -> dict:
    if not text:
        return {}
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UserError(f"{option}: not valid JSON ({exc}); write it like "
                        "'{\"temperature\": 0}'") from None
    if not isinstance(obj, dict):
        raise UserError(f"{option}: must be a JSON object like '{{\"temperature\": 0}}'")
    return obj


def parse_headers(values: list[str]) -> dict[str, str]:
    headers = {}
    for h in values:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise UserError(f"--header: '{h.split(':')[0]}...' is not 'Name: value'")
        headers[name.strip()] = value.strip()
    return headers


@app.command()
@user_errors
def run(
    target: str = typer.Option(None, "--target", "-t", help="Base URL of an OpenAI-compatible "
                               "server. Default: start the built-in target.",
        rich_help_panel="Target"),
    model: str = typer.Option(None, "--model", "-m", help="Model name (default: the first one "
                              "the server lists). Without --target: the emulated model "
                              "(default llama-3.1-8b).",
        rich_help_panel="Target"),
    engine: str = typer.Option("auto", "--engine", "-e", help="Engine preset: auto "
                               "(detected from the server), vllm, sglang, tgi, trtllm, llamacpp, "
                               "emulator, openai, generic. See docs/engines.md.",
        rich_help_panel="Target"),
    endpoint: str = typer.Option("chat", "--endpoint", help="chat or completions.",
        rich_help_panel="Target"),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Stream tokens (SSE).",
        rich_help_panel="Target"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment "
                                    "variable holding the API key (never written to disk).",
        rich_help_panel="Target"),
    api_key: str = typer.Option(None, "--api-key", help="API key (prefer --api-key-env: a flag "
                                "is visible in process lists). Never written to disk.",
        rich_help_panel="Target"),
    header: list[str] = typer.Option([], "--header", "-H", help="Extra HTTP header 'Name: value'"
                                     " (repeatable; values are never written to disk).",
        rich_help_panel="Target"),
    extra_body: str = typer.Option(None, "--extra-body", help="JSON object merged into every "
                                   "request body.",
        rich_help_panel="Target"),
    workload: Path = typer.Option(None, "--workload", "-w", help="Workload: Parquet/JSONL, "
                                  "or an Azure, BurstGPT, Mooncake or Vidur trace (docs/traces.md)"
                                  ". Default: synthetic, from the options below.",
        rich_help_panel="Workload"),
    profile: str = typer.Option(None, "--profile", help="Built-in workload profile "
                                "(language, reasoning, multimodal, ...; docs/profiles.md); "
                                "--rate trace for its own rate.",
        rich_help_panel="Workload"),
    rate: str = typer.Option("4", "--rate", "-r", help="Requests/s: 10, ramp:1..20/60s or "
                             "step:2+2/30s..20.",
        rich_help_panel="Workload"),
    process: str = typer.Option("poisson", "--process", help="Arrivals: poisson, gamma, "
                                "constant.",
        rich_help_panel="Workload"),
    cv: float = typer.Option(1.0, "--cv", help="Inter-arrival coefficient of variation (gamma).",
        rich_help_panel="Workload"),
    input_tokens: str = typer.Option("lognormal:mean=512,cv=0.6,max=4096", "--input-tokens",
                                     help="Prompt lengths: 512, lognormal:mean=512,cv=0.6, "
                                     "uniform:100..200.",
        rich_help_panel="Workload"),
    output_tokens: str = typer.Option("lognormal:mean=128,cv=0.6,max=1024", "--output-tokens",
                                      help="Output lengths (same forms).",
        rich_help_panel="Workload"),
    apps: str = typer.Option(None, "--apps", help="Application-class mix, e.g. "
                             f"chatbot:0.7,coding:0.3 (default {DEFAULT_APPS}); with --sessions "
                             "also for --workload/--profile.",
        rich_help_panel="Workload"),
    reasoning_fraction: float = typer.Option(0.0, "--reasoning-fraction", help="Share of a "
                                             "reasoning request's output that is thinking.",
        rich_help_panel="Workload"),
    mode: str = typer.Option("open", "--mode", help="open (arrival schedule), closed (N users),"
                             " ramp (users added in steps).",
        rich_help_panel="Load"),
    users: int = typer.Option(8, "--users", "-u", help="Closed loop: concurrent users.",
        rich_help_panel="Load"),
    think_time: str = typer.Option(None, "--think-time", help="Closed loop: pause between a "
                                   "user's requests (default: the Workload's think_s).",
        rich_help_panel="Load"),
    ramp: str = typer.Option("2+2/10s..16", "--ramp", help="Step ramp: START+STEP/INTERVAL..MAX"
                             " users.",
        rich_help_panel="Load"),
    max_concurrency: int = typer.Option(None, "--max-concurrency", help="Cap on requests in "
                                        "flight (queueing counts in latency).",
        rich_help_panel="Load"),
    duration: str = typer.Option(None, "--duration", "-d", help="Stop sending after this long "
                                 "(e.g. 60s). Default: 20s unless --requests is given.",
        rich_help_panel="Load"),
    requests: int = typer.Option(None, "--requests", "-n", help="Stop after this many "
                                 "requests.",
        rich_help_panel="Load"),
    warmup: str = typer.Option("0s", "--warmup", help="Excluded from the summary (kept in "
                               "records).",
        rich_help_panel="Load"),
    cooldown: str = typer.Option("0s", "--cooldown", help="Excluded from the summary at the "
                                 "end.",
        rich_help_panel="Load"),
    workers: int = typer.Option(None, "--workers", help="Client worker processes, each "
                                "driving a share of the sessions (docs/running.md#sharding). "
                                "Default: one per usable core, less one when the target "
                                "runs on this machine.", min=1,
        rich_help_panel="Load"),
    ray: str = typer.Option(None, "--ray", metavar="ADDRESS", help="Run the client workers as "
                            "Ray actors on the cluster at ADDRESS (HOST:6379, ray://HOST:10001, "
                            "auto; docs/running.md#ray-across-machines). --workers then "
                            "defaults to the cluster's CPUs (at most 64).",
        rich_help_panel="Load"),
    timeout: str = typer.Option("600s", "--timeout", help="Per-request time limit.",
        rich_help_panel="Load"),
    stall_timeout: str = typer.Option("60s", "--stall-timeout", help="Longest silence within a "
                                      "response.",
        rich_help_panel="Load"),
    slo: str = typer.Option(None, "--slo", "-s", help="SLOs per class, e.g. 'chatbot: "
                            "ttft<=1s, tpot<=100ms; coding: tpot<=50ms' (defaults: docs/slo.md).",
        rich_help_panel="SLOs and output"),
    lag_threshold: str = typer.Option("5ms", "--lag-threshold", help="p99 send lag above which "
                                      "the run is not valid.",
        rich_help_panel="SLOs and output"),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Where run directories go.",
        rich_help_panel="SLOs and output"),
    run_id: str = typer.Option(None, "--run-id", help="Name of the run directory.",
        rich_help_panel="SLOs and output"),
    seed: int = typer.Option(0, "--seed", help="Random seed for the workload.",
        rich_help_panel="Workload"),
    sessions: str = sessions_option(),
    session_rate: str = session_rate_option(),
    app_scope: str = app_scope_option(),
    session_start: str = session_start_option(),
    dataset: Path = dataset_option(),
    dataset_format: str = dataset_format_option(),
    single_turn: bool = single_turn_option(),
    tokenizer: str = typer.Option(None, "--tokenizer", help="Count prompt tokens as the server "
                                  "does: a tokenizer.json (or its folder), a Hugging Face model "
                                  "id in the local cache, server (the target's tokenize "
                                  "endpoint), or builtin (default; the emulator's).",
        rich_help_panel="Prompts"),
    prompt_corpus: Path = typer.Option(None, "--prompt-corpus", help="Folder of .txt files, "
                                       "one file, or a ShareGPT .json / prompts .jsonl to cut "
                                       "prompts from (default: the shipped corpus).",
        rich_help_panel="Prompts"),
    prefix_block_tokens: int = typer.Option(512, "--prefix-block-tokens", help="Tokens per "
                                            "Workload prefix_blocks hash (Mooncake: 512).",
        min=5, rich_help_panel="Prompts"),
    vision_encoder: str = typer.Option("qwen2.5-vl", "--vision-encoder", help="Sizes images "
                                       "to the workload's image_tokens: qwen2.5-vl, qwen2-vl, "
                                       "llava-1.5, llava-next, internvl, pixtral "
                                       "(docs/prompts.md).",
        rich_help_panel="Prompts"),
    gpu: str = gpu_option(),
    tp: int = tp_option(),
    policy: str = policy_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar.",
        rich_help_panel="SLOs and output"),
    scrape_interval: str = typer.Option("1s", "--scrape-interval", help="Scrape the target's "
                                        "Prometheus /metrics this often during the run; 0: off "
                                        "(docs/server-metrics.md).",
                                        rich_help_panel="SLOs and output"),
    catalog: str = catalog_option(),
    no_catalog: bool = no_catalog_option(),
    hardware: str = typer.Option(None, "--hardware", help="What --target runs on, e.g. 8xH100 "
                                 "(a label for the catalog; the built-in target knows its own).",
                                 rich_help_panel="Catalog (docs/catalog.md)"),
) -> None:
    """Benchmark a target with a workload; report latency, SLO attainment and goodput."""
    duration_s = parse_duration(duration, "--duration", allow_zero=False)
    if duration_s is None and requests is None and workload is None and mode != "ramp":
        duration_s = 20.0
    ramp_start, ramp_step, ramp_interval, ramp_max = parse_ramp(ramp)
    plan = LoadPlan(
        mode=mode, users=users, think_s=parse_duration(think_time, "--think-time"),  # type: ignore[arg-type]
        ramp_start=ramp_start, ramp_step=ramp_step, ramp_interval_s=ramp_interval,
        ramp_max=ramp_max, max_concurrency=max_concurrency, duration_s=duration_s,
        max_requests=requests, warmup_s=parse_duration(warmup, "--warmup") or 0.0,
        cooldown_s=parse_duration(cooldown, "--cooldown") or 0.0,
    ).validate()
    if mode == "ramp" and duration_s is None and requests is None:
        # until the last users have run one full interval
        plan = replace(plan, duration_s=plan.ramp_start_times()[-1] + ramp_interval)
        duration_s = plan.duration_s
    slos = parse_slo(slo)  # fail fast on a bad spec, before anything starts
    timeouts = Timeouts(request_s=parse_duration(timeout, "--timeout", allow_zero=False) or 600,
                        stall_s=parse_duration(stall_timeout, "--stall-timeout",
                                               allow_zero=False) or 60)
    if apps is not None and (workload is not None or profile is not None) and \
            (sessions or "off").strip().lower() == "off":
        raise UserError("--apps with --workload/--profile sets the app mix of sessions; add "
                        "--sessions (auto, chat, agent or file:shapes.toml)")
    table, source, options = build_workload(
        workload, closed_loop=plan.mode != "open", requests=requests, duration_s=duration_s,
        rate=rate, process=process, cv=cv, input_tokens=input_tokens,
        output_tokens=output_tokens, apps=apps, reasoning_fraction=reasoning_fraction, seed=seed,
        profile=profile, sessions=sessions, session_rate=session_rate, app_scope=app_scope,
        block_tokens=prefix_block_tokens, dataset=dataset, dataset_format=dataset_format,
        single_turn=single_turn, tokenizer=tokenizer, chat=endpoint == "chat",
        think_s=plan.think_s, session_start=session_start)
    slos.check_classes(set(table["app"].to_pylist()))
    # Only an empty start has a start-up transient (a steady one has sessions under way at 0).
    steady_s = float(options.get("session_steady_after_s") or 0.0)
    if plan.mode == "open" and options.get("session_start") == "empty" \
            and plan.warmup_s < steady_s:
        console(stderr=True).print(
            f"[dim]Sessions: follow-up turns build up over the start (a request comes "
            f"{steady_s:.0f} s after its session's start on average); --warmup "
            f"{math.ceil(steady_s)}s keeps most of the start-up out of the summary, or "
            "--session-start steady starts with sessions under way (docs/sessions.md)[/dim]")
    api_key = api_key or os.environ.get(api_key_env) or None
    headers = parse_headers(header)
    tcfg = TargetConfig(url=target, model=model, engine=engine, endpoint=endpoint, stream=stream,
                        api_key=api_key, headers=headers, hardware=hardware,
                        extra_body=parse_json_object(extra_body, "--extra-body"))
    cfg = BenchmarkConfig(target=tcfg, plan=plan, timeouts=timeouts, slo=slo,
                          lag_threshold_s=parse_duration(lag_threshold, "--lag-threshold") or 0.005,
                          out=out, run_id=run_id, seed=seed, workload_source=source,
                          workload_options=options, tokenizer=tokenizer,
                          prompt_corpus=prompt_corpus, prefix_block_tokens=prefix_block_tokens,
                          vision_encoder=vision_encoder,
                          catalog=catalog_choice(catalog, no_catalog),
                          scrape_interval_s=parse_duration(scrape_interval,
                                                           "--scrape-interval") or 0.0,
                          workers=workers, ray_address=ray)
    if ray:  # an address nobody answers fails before a built-in target starts
        from slobench.client.ray_shards import check_reachable

        check_reachable(ray)
    out_console = console()
    err_console = console(stderr=True)
    with contextlib.ExitStack() as stack:
        if target is None:
            engine_cfg = EngineConfig(model=model or DEFAULT_MODEL, gpu=gpu, tp=tp,
                                      policy=policy).validate_all()
            cfg.builtin_engine = engine_cfg
            cfg.target.model = None  # whatever the emulator serves
            err_console.print(engine_text(engine_cfg.describe()))
            cfg.target.url = stack.enter_context(built_in_target(engine_cfg))
            err_console.print(f"[dim]No --target given: benchmarking the built-in engine "
                              f"emulator at {cfg.target.url}[/dim]")
        live = not quiet and err_console.is_terminal
        display: list[LiveDisplay] = []  # entered once the run starts, exited by the stack

        def on_start(run_dir: RunDir, runner: Runner) -> None:
            planned = (f"{table.num_rows} requests planned" if plan.mode == "open" else
                       f"{plan.users if plan.mode == 'closed' else plan.ramp_max} users")
            err_console.print(f"[dim]Run {run_dir.run_id}: {planned}, mode {plan.mode}, "
                              f"journal {run_dir.path / 'records.journal*.jsonl'}[/dim]")
            if live:
                display.append(stack.enter_context(LiveDisplay(
                    err_console, slos, total=runner.progress.total, duration_s=duration_s)))

        def on_progress(progress: Progress) -> None:
            if display:
                display[0].update(progress)

        analysis = run_benchmark(table, cfg, on_start=on_start,
                                 on_progress=on_progress if live else None)
        emulator = emulator_health(cfg.target.url) if target is None else None
    if emulator is not None:
        analysis.run.update_manifest(emulator=emulator)
    specs = {a: analysis.slos.for_app(a).text for a in (analysis.summary.get("classes") or {})}
    notes = []
    if analysis.manifest.get("status") == "interrupted":
        notes.append("Interrupted: the summary covers requests scheduled before the cut-off.")
    if not stream:
        notes.append("Not streaming: TTFT equals E2E and TPOT/ITL cannot be measured.")
    notes += fidelity_warnings(analysis.manifest.get("length_fidelity") or {})
    notes += (analysis.manifest.get("workers") or {}).get("warnings") or []
    if emulator is not None and not emulator.get("keeping_real_time", True):
        notes.append(f"The emulator fell behind real time ({emulator['late_steps']} of "
                     f"{emulator['steps']} steps late, worst {emulator['lag_max_s'] * 1e3:.0f} "
                     "ms): its latencies are pessimistic; use `slobench simulate` for this load.")
    out_console.print(render(analysis.summary, analysis.health, slo_specs=specs,
                             run_path=str(analysis.run.path), notes=notes,
                             server=analysis.manifest.get("server_metrics")))
    if analysis.manifest.get("status") == "interrupted":
        raise typer.Exit(130)
