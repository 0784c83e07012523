"""One benchmark run, start to finish: probe the target, open a run directory, drive the load,
turn the journal into records, judge client health, summarize against the SLOs.

This is the library behind ``slobench run`` and ``slobench report``; the CLI only parses options
and prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pyarrow as pa

from slobench.client.backends.openai import (
    OpenAIBackend,
    normalize_base_url,
    request_headers,
    target_query,
)
from slobench.client.backends.presets import AUTO, resolve_preset
from slobench.client.journal import Journal
from slobench.client.pacing import LoadPlan
from slobench.client.probe import identify_server
from slobench.client.ray_shards import RayCluster
from slobench.client.ray_shards import connect as connect_ray
from slobench.client.runner import (
    Progress,
    Runner,
    RunOutcome,
    Timeouts,
    new_event_loop,
    sigint_ignored,
)
from slobench.client.shards import (
    ShardedRunner,
    default_workers,
    effective_workers,
    is_loopback,
    unit_count,
)
from slobench.clock import RunClock
from slobench.engine.config import EngineConfig
from slobench.errors import UserError
from slobench.prompts.images import ImagePrompter, resolve_encoder
from slobench.prompts.synth import make_synthesizer
from slobench.prompts.tokenizer import ServerTokenizer
from slobench.schema import write_table
from slobench.slo.fidelity import length_fidelity
from slobench.slo.health import DEFAULT_CPU_THRESHOLD, DEFAULT_LAG_THRESHOLD_S, assess
from slobench.slo.spec import SLOSet, parse_slo
from slobench.slo.summary import summarize
from slobench.store.catalog import register_safely
from slobench.store.rundir import RECORDS, SUMMARY, RunDir, recorded_window, redact


@dataclass
class TargetConfig:
    url: str | None = None  # None: start the built-in target
    model: str | None = None
    engine: str = AUTO  # an engine preset name, or auto: the detected engine's
    endpoint: str = "chat"
    stream: bool = True
    api_key: str | None = field(default=None, repr=False)  # never written anywhere
    headers: dict[str, str] = field(default_factory=dict)
    extra_body: dict[str, Any] = field(default_factory=dict)
    hardware: str | None = None  # what the target runs on (a label for the catalog)

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("api_key")
        d["api_key_set"] = bool(self.api_key)
        d["headers"] = {name: "***" for name in self.headers}  # headers often carry credentials
        return d


@dataclass
class BenchmarkConfig:
    target: TargetConfig
    plan: LoadPlan
    timeouts: Timeouts = field(default_factory=Timeouts)
    slo: str | None = None
    lag_threshold_s: float = DEFAULT_LAG_THRESHOLD_S
    cpu_threshold: float = DEFAULT_CPU_THRESHOLD
    out: Path = Path("runs")
    run_id: str | None = None
    seed: int = 0
    workload_source: str = "synthetic"
    workload_options: dict[str, Any] = field(default_factory=dict)
    builtin_engine: EngineConfig | None = None  # set when the target is the built-in emulator
    tokenizer: str | None = None  # prompt token counting: builtin, a tokenizer.json, a model id
    prompt_corpus: Path | None = None  # text to cut prompts from (default: the shipped corpus)
    prefix_block_tokens: int = 512  # tokens per Workload prefix_blocks hash
    vision_encoder: str = "qwen2.5-vl"  # sizes images to the Workload's image_tokens
    catalog: str | None = None  # catalog URL or path; None: $SLOBENCH_CATALOG or OUT/catalog.sqlite
    html_report: bool = True  # write report.html at the end (capacity trials skip it)
    scrape_interval_s: float = 1.0  # GET /metrics every this often during the run; 0: off
    # client worker processes (docs/running.md#sharding); 1: one process, the client in this
    # one; None: client.shards.default_workers (one per usable core, less one for a built-in
    # target)
    workers: int | None = 1
    # run the workers as Ray actors on the cluster at this address (docs/running.md#ray); None:
    # local processes
    ray_address: str | None = None

    def public(self) -> dict[str, Any]:
        return {
            "builtin_engine": self.builtin_engine.describe() if self.builtin_engine else None,
            "target": self.target.public(),
            "plan": asdict(self.plan),
            "timeouts": asdict(self.timeouts),
            "slo": self.slo,
            "lag_threshold_s": self.lag_threshold_s,
            "cpu_threshold": self.cpu_threshold,
            "scrape_interval_s": self.scrape_interval_s,
            "workers": self.workers,
            "ray": self.ray_address,
            "seed": self.seed,
            "workload_source": self.workload_source,
            "workload_options": self.workload_options,
            "prompts": {"tokenizer": self.tokenizer or "builtin",
                        "corpus": str(self.prompt_corpus) if self.prompt_corpus else "built-in",
                        "prefix_block_tokens": self.prefix_block_tokens,
                        "vision_encoder": self.vision_encoder},
        }


@dataclass
class Analysis:
    """Everything ``report`` shows about a run."""

    run: RunDir
    manifest: dict[str, Any]
    summary: dict[str, Any]
    health: dict[str, Any]
    records_source: str
    torn_lines: int
    slos: SLOSet


# -- the target --------------------------------------------------------------------------------

@contextlib.contextmanager
def built_in_target(engine: EngineConfig) -> Iterator[str]:
    """The embedded default target: the engine emulator, in a subprocess so its work never
    counts as client CPU."""
    from slobench.engine.emulator import EmulatorProcess

    with EmulatorProcess(engine) as srv:
        yield srv.base_url


def emulator_health(base_url: str | None) -> dict[str, Any] | None:
    """The built-in emulator's own account of whether it kept real time (GET /health)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=5) as resp:
            data = orjson.loads(resp.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def probe_target(target: TargetConfig, timeout_s: float = 10.0) -> str:
    """Check the target answers before anything is measured; return the model to use."""
    base = normalize_base_url(target.url or "")
    headers = request_headers(target.url or "", target.api_key, target.headers)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s, \
                s.get(base + "/v1/models" + target_query(target.url or ""),
                      headers=headers) as resp:
            status = resp.status
            body = await resp.read() if status == 200 else b""
    except aiohttp.ClientConnectorError as exc:
        raise UserError(f"--target: cannot reach {base} ({exc.os_error or exc}); is the server "
                        "running and the URL right?") from None
    except (TimeoutError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
        raise UserError(f"--target: {base} did not answer GET /v1/models within {timeout_s:g}s "
                        f"({type(exc).__name__}); check the URL and the server") from None
    if status in (401, 403):
        raise UserError(f"--target: {base} refused the credentials (HTTP {status}); set the key "
                        "with --api-key-env NAME (an environment variable holding it)")
    if target.model:
        return target.model
    if status == 200:
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            return str(orjson.loads(body)["data"][0]["id"])
    raise UserError(f"--model: {base} does not list its models (GET /v1/models gave HTTP "
                    f"{status}); name the model with --model")


# -- running -----------------------------------------------------------------------------------


def measurement_window(plan: LoadPlan, outcome: RunOutcome, records: pa.Table) -> list[float]:
    """[start, end) of scheduled times that the summary counts: warm-up and cool-down excluded,
    and for an interrupted run, nothing from the first request the interruption cut off."""
    end = outcome.schedule_end_s
    if plan.duration_s is not None and not outcome.interrupted:
        end = plan.duration_s
    if outcome.interrupted and records.num_rows:
        import pyarrow.compute as pc

        cancelled = records.filter(pc.equal(records["status"], "cancelled"))
        if cancelled.num_rows:
            end = min(end, pc.min(cancelled["scheduled_s"]).as_py())
    end = max(end, 1e-9)
    start = min(plan.warmup_s, end)
    return [start, max(start, end - plan.cooldown_s)]


def client_workers(cfg: BenchmarkConfig, workload: pa.Table,
                   cluster: RayCluster | None = None) -> int:
    """How many client worker processes (or Ray actors, on ``cluster``) drive the run:
    ``cfg.workers`` (None: the default), never more than can each get a share of the workload
    and the plan."""
    requested = cfg.workers
    if requested is None and cluster is not None:
        requested = cluster.default_workers()
    elif requested is None:
        local = cfg.builtin_engine is not None or is_loopback(cfg.target.url)
        requested = default_workers(local_target=local)
    if cluster is not None:
        cluster.check_workers(requested)
    return effective_workers(cfg.plan, requested, unit_count(workload))


def token_counting(records: pa.Table) -> dict[str, int]:
    return dict(Counter(records["token_count_source"].to_pylist()))


def run_benchmark(workload: pa.Table, cfg: BenchmarkConfig, *,
                  on_start: Callable[[RunDir, Runner | ShardedRunner], None] | None = None,
                  on_progress: Callable[[Progress], None] | None = None) -> Analysis:
    slos = parse_slo(cfg.slo)
    slos.check_classes(set(workload["app"].to_pylist()))
    target = cfg.target
    chat = target.endpoint == "chat"
    resolve_encoder(cfg.vision_encoder)  # an unknown name fails before anything starts
    cluster = connect_ray(cfg.ray_address) if cfg.ray_address else None
    n_workers = client_workers(cfg, workload, cluster)
    resolve_preset(target.engine, None)  # so does an unknown --engine
    from_server = cfg.tokenizer == "server"
    synth = None if from_server else make_synthesizer(
        cfg.tokenizer, cfg.prompt_corpus, block_tokens=cfg.prefix_block_tokens, chat=chat)
    loop = new_event_loop()
    finishing = contextlib.ExitStack()
    try:
        model = loop.run_until_complete(probe_target(target))
        base_url = normalize_base_url(target.url or "")
        auth = request_headers(target.url or "", target.api_key, target.headers)
        server = identify_server(base_url, auth)  # never fails; short timeouts
        preset = resolve_preset(target.engine, server.get("engine"))  # --engine auto: detected
        if synth is None:  # --tokenizer server: the target's own tokenize endpoint
            tokenizer = ServerTokenizer(base_url, model, headers=auth, dialect=preset.tokenize)
            tokenizer.check(chat=chat)
            synth = make_synthesizer(tokenizer, cfg.prompt_corpus,
                                     block_tokens=cfg.prefix_block_tokens, chat=chat)
        backend = OpenAIBackend(target.url or "", model=model, preset=preset,
                                endpoint=target.endpoint, stream=target.stream,
                                api_key=target.api_key, extra_body=target.extra_body,
                                headers=target.headers)
        run = RunDir.create(cfg.out, cfg.run_id)
        # the run id salts every prompt: no prefix-cache hits carried over from earlier runs
        synth.nonce = run.run_id
        secrets = (target.api_key,) if target.api_key else ()
        run.write_workload(workload)
        config = cfg.public()
        config["target"]["model"] = model
        config["slo"] = slos.to_text()
        run.start_manifest(config=config, workload=workload, workload_source=cfg.workload_source,
                           target={"url": backend.base_url, "model": model, "api": backend.name,
                                   "engine": preset.name, "engine_requested": target.engine,
                                   "stream": target.stream},
                           secrets=secrets)
        run.update_manifest(server=redact(server, secrets))
        register_safely(run.path, catalog=cfg.catalog, pid=os.getpid())  # status: running
        clock = RunClock()
        runner: Runner | ShardedRunner
        if cluster is not None:  # one Ray actor per shard, start synchronized on wall clocks
            from slobench.client.ray_shards import RayShardedRunner

            runner = RayShardedRunner.create(
                workload, n_workers, backend=backend, plan=cfg.plan, clock=clock,
                journal_paths=[run.worker_journal_path(k) for k in range(n_workers)],
                timeouts=cfg.timeouts, synthesizer=synth, vision_encoder=cfg.vision_encoder,
                nonce=run.run_id, on_progress=on_progress)
            if cluster.nodes > 1 and is_loopback(backend.base_url):
                runner.warnings.append(  # type: ignore[attr-defined]
                    f"--target {backend.base_url} is a loopback address but the Ray cluster "
                    f"has {cluster.nodes} nodes: workers on other nodes cannot reach it; give "
                    "an address every node can reach")
        elif n_workers > 1:  # one process per shard, one shared start instant
            runner = ShardedRunner.create(
                workload, n_workers, backend=backend, plan=cfg.plan, clock=clock,
                journal_paths=[run.worker_journal_path(k) for k in range(n_workers)],
                timeouts=cfg.timeouts, synthesizer=synth, vision_encoder=cfg.vision_encoder,
                nonce=run.run_id, on_progress=on_progress)
        else:
            runner = Runner(workload, backend, cfg.plan, journal=Journal(run.journal_path),
                            clock=clock, timeouts=cfg.timeouts, synthesizer=synth,
                            images=ImagePrompter(cfg.vision_encoder, nonce=run.run_id),
                            on_progress=on_progress)
        if on_start:
            on_start(run, runner)
        scraper = None
        if cfg.scrape_interval_s > 0 and preset.metrics_path:  # a thread of its own: never
            from slobench.client.server_metrics import MetricsScraper  # on the client's loop

            scraper = MetricsScraper(base_url, run.path, clock, interval_s=cfg.scrape_interval_s,
                                     engine=server.get("engine") or preset.engine, headers=auth,
                                     path=preset.metrics_path).start()
        try:
            outcome = (runner.run() if isinstance(runner, ShardedRunner)
                       else loop.run_until_complete(runner.run()))
        finally:
            # the run has stopped: a Ctrl-C now (the second of a double press) must not leave
            # its directory half written; what remains is bounded work
            finishing.enter_context(sigint_ignored())
            scrape_info = scraper.stop() if scraper else (
                None if cfg.scrape_interval_s <= 0 else
                {"note": f"{preset.engine} has no Prometheus endpoint slobench can read"})
    except BaseException:
        finishing.close()
        raise
    finally:
        loop.close()
        if cluster is not None:
            from slobench.client.ray_shards import disconnect

            disconnect()

    try:
        records, torn = run.finalize_records()
        window = measurement_window(cfg.plan, outcome, records)
        cpu_samples: list[float] | dict[str, list[float]] = outcome.cpu_samples
        sharding: dict[str, Any] = {}
        if isinstance(runner, ShardedRunner):
            cpu_samples = runner.cpu_samples_by_worker()
            runner.merge_prompt_stats(synth.stats)
            sharding = {"workers": runner.describe()}
        health = assess(records, cpu_samples, lag_threshold_s=cfg.lag_threshold_s,
                        cpu_threshold=cfg.cpu_threshold,
                        failed_workers=sharding["workers"]["failed"] if sharding else None)
        summary = summarize(records, slos, window=tuple(window))
        from slobench.client.server_metrics import finalize as finalize_metrics
        from slobench.client.server_metrics import run_summary as server_summary

        finalize_metrics(run.path)
        server_metrics = server_summary(run.path, scrape_info, records, window)
        run.write_json(SUMMARY, {"summary": summary, "client_health": health,
                                 "server_metrics": server_metrics})
        manifest = run.update_manifest(
            status="interrupted" if outcome.interrupted else "complete",
            server_metrics=server_metrics,
            window=window,
            cpu_samples=cpu_samples,
            client_health=health,
            token_counting=token_counting(records),
            requests_sent=outcome.sent,
            dispatch_poll={"wall_s": outcome.spin_s, "iterations": outcome.polls,
                           "cpu_per_iteration_s": outcome.poll_cost_s},
            journal={"torn_lines": torn},
            prompts={"tokenizer": synth.tokenizer.name, "overhead_tokens": synth.overhead,
                     **synth.stats.as_dict(), "images_dropped": runner.images_dropped},
            length_fidelity=length_fidelity(workload, records),
            **sharding,
        )
        register_safely(run.path, catalog=cfg.catalog, pid=os.getpid(),
                        doc={"summary": summary, "client_health": health})
    finally:
        finishing.close()
    if cfg.html_report:
        from slobench.report.run_report import try_write_run_report  # a failure only warns
        try_write_run_report(run.path)
    return Analysis(run, manifest, summary, health, "records.parquet", torn, slos)


def analyze(path: Path, *, slo: str | None = None, warmup_s: float | None = None,
            cooldown_s: float | None = None) -> Analysis:
    """Recompute a run's summary from its files (an interrupted or killed run included)."""
    run = RunDir.open(path)
    manifest = run.manifest()
    config = manifest.get("config") or {}
    records, source, torn = run.load_records()
    slos = parse_slo(slo if slo is not None else config.get("slo"), source="--slo" if slo
                     else f"{path}/manifest.json")
    window = list(recorded_window(manifest, records))
    if warmup_s is not None or cooldown_s is not None:
        start, end = window
        plan = config.get("plan") or {}
        end_full = end + plan.get("cooldown_s", 0.0)
        window = [warmup_s if warmup_s is not None else start,
                  end_full - (cooldown_s if cooldown_s is not None else plan.get("cooldown_s", 0))]
        if window[1] <= window[0]:
            raise UserError("--warmup/--cooldown: they leave nothing of the run to summarize")
    thresholds = (manifest.get("client_health") or {}).get("thresholds") or {}
    if (manifest.get("target") or {}).get("kind") == "simulation":
        health = simulated_health()
    else:
        health = assess(records, manifest.get("cpu_samples"),
                        lag_threshold_s=thresholds.get("send_lag_p99_s", DEFAULT_LAG_THRESHOLD_S),
                        cpu_threshold=thresholds.get("cpu", DEFAULT_CPU_THRESHOLD),
                        failed_workers=(manifest.get("workers") or {}).get("failed"))
    summary = summarize(records, slos, window=tuple(window))
    return Analysis(run, manifest, summary, health, source, torn, slos)


# -- simulating --------------------------------------------------------------------------------


def slo_deadlines(slos: SLOSet, apps: set[str]) -> dict[str, tuple[float | None, float | None]]:
    """Per app, the (TTFT, TPOT) limits an SLO-aware scheduler schedules by."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for app in apps:
        limits = {c.metric: c.limit_s for c in slos.for_app(app).constraints}
        out[app] = (limits.get("ttft"), limits.get("tpot"))
    return out


def simulated_health() -> dict[str, Any]:
    """A simulated run has no client: nothing can lag, the run is valid by construction."""
    return {"valid": True, "reasons": [], "simulated": True, "send_lag_s": {"count": 0},
            "cpu": {"samples": 0}}


def run_simulation(workload: pa.Table, engine: EngineConfig, *, replicas: int = 1,
                   router: str = "round_robin", slo: str | None = None,
                   warmup_s: float = 0.0, cooldown_s: float = 0.0, out: Path = Path("runs"),
                   run_id: str | None = None, workload_source: str = "synthetic",
                   workload_options: dict[str, Any] | None = None,
                   progress: Callable[[float], None] | None = None,
                   prefix_block_tokens: int | None = 512,
                   horizon_s: float | None = None, catalog: str | None = None,
                   html_report: bool = True) -> Analysis:
    """The engine model in virtual time over a Workload; writes a run directory like a live run
    (records, summary, manifest), so every summary, SLO and report works on it unchanged."""
    import time

    from slobench.engine.simulator import simulate

    slos = parse_slo(slo)
    apps = set(workload["app"].to_pylist())
    slos.check_classes(apps)
    engine.validate_all()
    if replicas < 1:
        raise UserError("--replicas: must be >= 1")
    run = RunDir.create(out, run_id)
    run.write_workload(workload)
    config = {"engine": engine.describe(), "replicas": replicas, "router": router,
              "slo": slos.to_text(), "plan": {"warmup_s": warmup_s, "cooldown_s": cooldown_s},
              "workload_options": workload_options or {}}
    run.start_manifest(config=config, workload=workload, workload_source=workload_source,
                       target={"kind": "simulation", "model": engine.served_name,
                               "engine": engine.model_dump(), "replicas": replicas,
                               "router": router, "prefix_block_tokens": prefix_block_tokens})
    register_safely(run.path, catalog=catalog, pid=os.getpid())  # status: running
    wall = time.perf_counter()
    result = simulate(workload, engine.scheduler_maker(prefix_block_tokens), replicas=replicas,
                      router=router, progress=progress, deadlines=slo_deadlines(slos, apps),
                      horizon_s=horizon_s)
    wall = time.perf_counter() - wall
    records = result.records
    write_table(records, run.path / RECORDS)
    sent = records["scheduled_s"].to_numpy()  # follow-up turns: when they were released
    end = float(sent.max()) + 1e-9 if len(sent) else 1e-9
    start = min(warmup_s, end)
    window = [start, max(start, end - cooldown_s)]
    if window[1] <= window[0]:
        raise UserError("--warmup/--cooldown: they leave nothing of the workload to summarize")
    health = simulated_health()
    summary = summarize(records, slos, window=tuple(window))
    run.write_json(SUMMARY, {"summary": summary, "client_health": health})
    manifest = run.update_manifest(
        status="complete", window=window, client_health=health,
        token_counting=token_counting(records),
        simulation={"wall_s": wall, "simulated_s": result.sim_end_s,
                    "speedup": result.sim_end_s / wall if wall > 0 else None,
                    "stats": result.stats})
    register_safely(run.path, catalog=catalog, pid=os.getpid(),
                    doc={"summary": summary, "client_health": health})
    if html_report:
        from slobench.report.run_report import try_write_run_report  # a failure only warns
        try_write_run_report(run.path)
    return Analysis(run, manifest, summary, health, RECORDS, 0, slos)
