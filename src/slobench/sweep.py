"""Live parameter sweeps: start a server once per point of a parameter grid, benchmark it, stop it.

A sweep file (TOML or JSON; docs/sweep.md) names a launch command template, a grid and one
scenario. For every point of the grid's cartesian product the server is started *without a
shell* (``shlex.split`` of the template, placeholders substituted inside argv items only) on a
free port of 127.0.0.1, in a process group of its own; once its health URL answers 200 the
scenario runs against it with :func:`slobench.benchmark.run_benchmark`, then the whole process
group is stopped (SIGTERM, a grace period, SIGKILL), on success, on errors and on Ctrl-C alike.

This is the library behind ``slobench sweep``; the CLI only parses options and prints.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import pyarrow as pa

from slobench.errors import UserError, did_you_mean
from slobench.units import parse_duration

TOP_KEYS = ("command", "health", "startup_timeout", "stop_timeout", "grid", "scenario")
SCENARIO_KEYS = ("rate", "duration", "warmup", "process", "cv", "input_tokens", "output_tokens",
                 "apps", "profile", "sessions", "seed", "slo", "engine", "model")
SCENARIO_DEFAULTS: dict[str, Any] = {
    "rate": "4", "duration": "30s", "warmup": "0s", "process": "poisson", "cv": 1.0,
    "input_tokens": "lognormal:mean=512,cv=0.6,max=4096",
    "output_tokens": "lognormal:mean=128,cv=0.6,max=1024", "apps": None, "profile": None,
    "sessions": None, "seed": 0, "slo": None, "engine": "auto", "model": None,
}
RESERVED = ("port",)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# a grid value substituted into argv: letters, digits and a few harmless punctuation marks only
_SIMPLE = re.compile(r"^[A-Za-z0-9_.:+\-/=,@%]+$")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ";;", ">", ">>", "<", "<<", "2>", "2>&1", "&>"}
STDERR_TAIL_CHARS = 2000
MAX_POINTS = 1000


@dataclass
class SweepSpec:
    """A checked sweep file."""

    path: Path
    command: list[str]  # argv template: items may hold {placeholders}
    health: str = "/health"
    startup_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0
    grid: dict[str, list[int | float | str]] = field(default_factory=dict)
    scenario: dict[str, Any] = field(default_factory=dict)

    def points(self) -> list[dict[str, int | float | str]]:
        """The grid's cartesian product, in file order (the last key varies fastest)."""
        keys = list(self.grid)
        return [dict(zip(keys, values, strict=True))
                for values in itertools.product(*self.grid.values())]

    def argv(self, params: dict[str, Any], port: int) -> list[str]:
        """The command line of one point: placeholders replaced inside each argv item."""
        values = {**{k: format_value(v) for k, v in params.items()}, "port": str(port)}

        def sub(m: re.Match[str]) -> str:
            if m.group(0) in ("{{", "}}"):
                return m.group(0)[0]
            return values[m.group(1).strip()]

        return [_PLACEHOLDER.sub(sub, item) for item in self.command]


def format_value(value: int | float | str) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


# -- reading and checking ------------------------------------------------------------------------


def _read_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot read the sweep file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: the sweep file is not UTF-8 text") from None
    as_json = path.suffix.lower() == ".json" or (
        path.suffix.lower() != ".toml" and text.lstrip().startswith("{"))
    if as_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    else:
        from slobench import tomlread

        try:
            data = tomlread.loads(text)
        except tomlread.TOMLDecodeError as exc:
            raise UserError(f"{path}: not valid TOML ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a sweep file is a table (TOML) or an object (JSON) of keys "
                        f"{', '.join(TOP_KEYS)}")
    return data


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_value(path: Path, key: str, v: Any) -> int | float | str:
    if _is_number(v):
        return v  # type: ignore[no-any-return]
    if isinstance(v, str) and _SIMPLE.match(v) and len(v) <= 200:
        return v
    if isinstance(v, str):
        raise UserError(f"{path}: grid.{key}: value {v!r} is not a simple string; grid values "
                        "are numbers or strings of letters, digits and . _ : + - / = , @ % "
                        "(no spaces, quotes or shell metacharacters)")
    raise UserError(f"{path}: grid.{key}: value {v!r} ({type(v).__name__}) is neither a number "
                    "nor a simple string")


def _duration(path: Path, key: str, v: Any) -> float:
    if not (_is_number(v) or isinstance(v, str)):
        raise UserError(f"{path}: {key}: give a duration like \"120s\"")
    return float(parse_duration(v, f"{path}: {key}", allow_zero=False) or 0.0)


def load_sweep(path: Path) -> SweepSpec:
    """Read and check a sweep file; every problem is one UserError naming the file and key."""
    path = Path(path)
    data = _read_document(path)
    for key in data:
        if key not in TOP_KEYS:
            raise UserError(f"{path}: unknown key '{key}'; {did_you_mean(key, TOP_KEYS)}"
                            f"known keys: {', '.join(TOP_KEYS)}")
    if "command" not in data:
        raise UserError(f"{path}: command: missing; e.g. command = \"slobench emulate --port "
                        "{port} --max-num-seqs {max_num_seqs}\"")
    raw = data["command"]
    if isinstance(raw, str):
        try:
            command = shlex.split(raw)
        except ValueError as exc:
            raise UserError(f"{path}: command: cannot split it into arguments ({exc})") from None
    elif isinstance(raw, list) and all(isinstance(a, str) for a in raw):
        command = list(raw)
    else:
        raise UserError(f"{path}: command: give a string (split like a shell would, but run "
                        "without one) or a list of strings")
    if not command or not command[0].strip():
        raise UserError(f"{path}: command: empty")
    for item in command:
        if item in _SHELL_OPERATORS:
            raise UserError(f"{path}: command: '{item}' is a shell operator, but the command "
                            "runs without a shell (it would be passed as an argument); start "
                            "one program")
    health = data.get("health", "/health")
    if not isinstance(health, str) or not health.startswith("/") or any(
            c.isspace() for c in health):
        raise UserError(f"{path}: health: give a URL path starting with '/', e.g. \"/health\"")
    startup = _duration(path, "startup_timeout", data.get("startup_timeout", "120s"))
    stop = _duration(path, "stop_timeout", data.get("stop_timeout", "10s"))

    grid_raw = data.get("grid")
    if not isinstance(grid_raw, dict) or not grid_raw:
        raise UserError(f"{path}: grid: give a table of parameters, each a list of values, "
                        "e.g. [grid] max_num_seqs = [64, 256]")
    grid: dict[str, list[int | float | str]] = {}
    for key, values in grid_raw.items():
        if not _NAME.match(key):
            raise UserError(f"{path}: grid.{key}: a parameter name is letters, digits and _")
        if key in RESERVED:
            raise UserError(f"{path}: grid.{key}: '{{{key}}}' is set by slobench (a free port "
                            "of 127.0.0.1); choose another name")
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: grid.{key}: must be a non-empty list of values, e.g. "
                            f"{key} = [64, 256]")
        grid[key] = [_check_value(path, key, v) for v in values]
        if len({format_value(v) for v in grid[key]}) != len(grid[key]):
            raise UserError(f"{path}: grid.{key}: a value is listed twice")
    n = math.prod(len(v) for v in grid.values())
    if n > MAX_POINTS:
        raise UserError(f"{path}: grid: {n} points; at most {MAX_POINTS} in one sweep")

    used: set[str] = set()
    for item in command:
        for m in _PLACEHOLDER.finditer(item):
            if m.group(0) in ("{{", "}}"):
                continue
            name = m.group(1).strip()
            if name not in grid and name not in RESERVED:
                raise UserError(f"{path}: command: unknown placeholder '{{{name}}}'; "
                                f"{did_you_mean(name, [*grid, *RESERVED])}placeholders are "
                                f"{{port}} and the grid's keys ({', '.join(grid)})")
            used.add(name)
    unused = [k for k in grid if k not in used]
    if unused:
        raise UserError(f"{path}: grid.{unused[0]}: not used in command (add "
                        f"{{{unused[0]}}} where the server takes it)")

    scen_raw = data.get("scenario", {})
    if not isinstance(scen_raw, dict):
        raise UserError(f"{path}: scenario: give a table, e.g. [scenario] rate = \"8\"")
    scenario = dict(SCENARIO_DEFAULTS)
    for key, v in scen_raw.items():
        if key not in SCENARIO_KEYS:
            raise UserError(f"{path}: scenario.{key}: unknown key; "
                            f"{did_you_mean(key, SCENARIO_KEYS)}known keys: "
                            f"{', '.join(SCENARIO_KEYS)}")
        if not (_is_number(v) or isinstance(v, str)):
            raise UserError(f"{path}: scenario.{key}: give a string or a number")
        scenario[key] = v
    for key in ("seed",):
        if not isinstance(scenario[key], int) or isinstance(scenario[key], bool):
            raise UserError(f"{path}: scenario.{key}: give an integer")
    if not _is_number(scenario["cv"]):
        raise UserError(f"{path}: scenario.cv: give a number")
    scenario["rate"] = format_value(scenario["rate"]) if _is_number(scenario["rate"]) \
        else scenario["rate"]
    scenario["duration_s"] = _duration(path, "scenario.duration", scenario.pop("duration"))
    w = scenario.pop("warmup")
    scenario["warmup_s"] = float(parse_duration(w, f"{path}: scenario.warmup") or 0.0) \
        if isinstance(w, (str, int, float)) else 0.0
    if scenario["warmup_s"] >= scenario["duration_s"]:
        raise UserError(f"{path}: scenario.warmup: must be shorter than scenario.duration")
    return SweepSpec(path=path, command=command, health=health, startup_timeout_s=startup,
                     stop_timeout_s=stop, grid=grid, scenario=scenario)


# -- servers -------------------------------------------------------------------------------------


def free_port() -> int:
    """A port of 127.0.0.1 free right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerFailed(Exception):
    """The server of a point did not come up (timeout, early exit, cannot start)."""


class SweepServer:
    """One point's server: started without a shell in a process group of its own; ``stop``
    ends the whole group (SIGTERM, ``grace_s``, SIGKILL)."""

    def __init__(self, argv: list[str], *, base_url: str, health: str, log_dir: Path,
                 name: str, startup_timeout_s: float, grace_s: float) -> None:
        self.argv = argv
        self.base_url = base_url
        self.health_url = base_url + health
        self.startup_timeout_s = startup_timeout_s
        self.grace_s = grace_s
        self.stdout_path = log_dir / f"{name}.stdout.log"
        self.stderr_path = log_dir / f"{name}.stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    def start(self) -> None:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            try:
                self.proc = subprocess.Popen(  # an argv list: no shell
                    self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    start_new_session=True, close_fds=True)
            except OSError as exc:
                raise ServerFailed(f"cannot start {self.argv[0]!r}: "
                                   f"{exc.strerror or exc}") from None
        self.pid = self.proc.pid

    def wait_healthy(self) -> float:
        """Poll the health URL until it answers 200; the seconds it took."""
        assert self.proc is not None
        t0 = time.monotonic()
        deadline = t0 + self.startup_timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerFailed(f"the server exited with code {code} before answering "
                                   f"{self.health_url}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - t0
            except urllib.error.HTTPError:
                pass  # up, not healthy yet
            except (OSError, ValueError):
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise ServerFailed(f"{self.health_url} did not answer 200 within "
                                   f"{self.startup_timeout_s:g}s")
            time.sleep(0.2)

    def stderr_tail(self, chars: int = STDERR_TAIL_CHARS) -> str:
        with contextlib.suppress(OSError):
            data = self.stderr_path.read_bytes()
            return data[-chars:].decode(errors="replace").strip()
        return ""

    def _group_alive(self, pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # pragma: no cover - cannot happen for our own group
            return True
        return True

    def stop(self) -> int | None:
        """End the server's whole process group; its exit code (None if never started)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        pgid = proc.pid  # start_new_session: the leader's pid is the group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline:
            if proc.poll() is not None and not self._group_alive(pgid):
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        try:
            return proc.wait(timeout=self.grace_s + 5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            proc.kill()
            return proc.wait()

    def __enter__(self) -> SweepServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _reinstall_sigterm() -> None:
    """The runner's own handlers leave SIGTERM at its default when a run ends: put ours back."""
    with contextlib.suppress(ValueError):
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _raise_interrupt)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM to the sweep behaves like Ctrl-C, so the running server is stopped, too."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the sweep -----------------------------------------------------------------------------------


@dataclass
class PointResult:
    point: str  # point-01, ...
    params: dict[str, Any]
    status: str  # ok, interrupted, failed, skipped
    argv: list[str] = field(default_factory=list)
    pid: int | None = None
    run_id: str | None = None
    run_dir: str | None = None
    error: str | None = None
    stderr_tail: str | None = None
    startup_s: float | None = None
    exit_code: int | None = None
    goodput_rps: float | None = None
    throughput_rps: float | None = None
    attainment: float | None = None
    slo_passed: bool | None = None
    ttft_p99_s: float | None = None
    tpot_p99_s: float | None = None
    client_valid: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SweepResult:
    sweep_id: str
    folder: Path
    spec: SweepSpec
    points: list[PointResult]
    interrupted: bool = False

    def ranked(self) -> list[PointResult]:
        """By goodput, best first; points without a result last, in grid order."""
        order = {"ok": 0, "interrupted": 1, "failed": 2, "skipped": 3}
        return sorted(self.points, key=lambda p: (order.get(p.status, 9),
                                                  -(p.goodput_rps or 0.0)))

    def as_dict(self) -> dict[str, Any]:
        scen = dict(self.spec.scenario)
        return {"sweep_id": self.sweep_id, "file": str(self.spec.path),
                "command": self.spec.command, "health": self.spec.health,
                "grid": self.spec.grid, "scenario": scen, "interrupted": self.interrupted,
                "points": [p.as_dict() for p in self.ranked()]}

    def write(self) -> Path:
        path = self.folder / "sweep.json"
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")
        return path


def _metrics(p: PointResult, summary: dict[str, Any], health: dict[str, Any]) -> None:
    overall = summary.get("overall") or {}
    slo = overall.get("slo") or {}
    lat = overall.get("latency") or {}
    p.goodput_rps = overall.get("goodput_rps")
    p.throughput_rps = overall.get("throughput_rps")
    p.attainment = slo.get("attainment")
    p.slo_passed = slo.get("passed")
    p.ttft_p99_s = (lat.get("ttft") or {}).get("p99")
    p.tpot_p99_s = (lat.get("tpot") or {}).get("p99")
    p.client_valid = health.get("valid")


def params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={format_value(v)}" for k, v in params.items())


def scenario_workload(spec: SweepSpec) -> tuple[pa.Table, str, dict[str, Any]]:
    """The scenario's Workload (the same at every point) as (table, source, options); a bad
    scenario (rate, lengths, profile, SLO) fails here, before any server starts."""
    from slobench.cli.options import build_workload
    from slobench.slo.spec import parse_slo

    sc = spec.scenario
    try:
        slos = parse_slo(sc["slo"])
        table, source, options = build_workload(
            None, closed_loop=False, requests=None, duration_s=sc["duration_s"],
            rate=sc["rate"], process=sc["process"], cv=float(sc["cv"]),
            input_tokens=sc["input_tokens"], output_tokens=sc["output_tokens"], apps=sc["apps"],
            reasoning_fraction=0.0, seed=sc["seed"], profile=sc["profile"],
            sessions=sc["sessions"])
        slos.check_classes(set(table["app"].to_pylist()))
    except UserError as exc:
        raise UserError(f"{spec.path}: [scenario]: {exc}", exit_code=exc.exit_code) from None
    return table, source, options


def run_sweep(spec: SweepSpec, *, out: Path = Path("runs"), sweep_id: str | None = None,
              api_key: str | None = None,
              on_point: Callable[[PointResult], None] | None = None,
              on_start: Callable[[PointResult], None] | None = None) -> SweepResult:
    """Every grid point in turn: start, wait for health, benchmark, stop. A point whose server
    fails is recorded as failed (with its stderr tail) and the sweep goes on; Ctrl-C stops the
    running server and ends the sweep (the rest marked skipped). ``sweep.json`` is written
    after every point."""
    from slobench.benchmark import BenchmarkConfig, TargetConfig, run_benchmark
    from slobench.client.pacing import LoadPlan
    from slobench.client.runner import Timeouts

    sc = spec.scenario
    table, source, options = scenario_workload(spec)
    sweep_id = sweep_id or time.strftime("sweep-%Y%m%d-%H%M%S")
    folder = Path(out) / sweep_id
    if folder.exists():
        raise UserError(f"--out: {folder} already exists; choose another --out")
    folder.mkdir(parents=True)
    points = spec.points()
    results = [PointResult(point=f"point-{i:02d}", params=params, status="skipped")
               for i, params in enumerate(points, 1)]
    result = SweepResult(sweep_id=sweep_id, folder=folder, spec=spec, points=results)
    result.write()
    for p in results:
        if result.interrupted:
            break
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        p.argv = spec.argv(p.params, port)
        server = SweepServer(p.argv, base_url=base, health=spec.health, log_dir=folder,
                             name=p.point, startup_timeout_s=spec.startup_timeout_s,
                             grace_s=spec.stop_timeout_s)
        if on_start:
            on_start(p)
        try:
            with sigterm_as_interrupt():
                try:
                    server.start()
                    p.pid = server.pid
                    p.startup_s = server.wait_healthy()
                    sweep_info = {"params": p.params, "command": p.argv,
                                  "sweep_id": sweep_id, "point": p.point, "file": str(spec.path)}
                    cfg = BenchmarkConfig(
                        target=TargetConfig(url=base, engine=sc["engine"], model=sc["model"],
                                            api_key=api_key),
                        plan=LoadPlan(mode="open", duration_s=sc["duration_s"],
                                      warmup_s=sc["warmup_s"]),
                        timeouts=Timeouts(), slo=sc["slo"], out=folder, run_id=p.point,
                        workload_source=source,
                        workload_options={**options, "sweep": sweep_info})
                    p.run_id = p.point
                    try:
                        analysis = run_benchmark(table, cfg)
                    finally:
                        _reinstall_sigterm()
                    analysis.run.update_manifest(sweep=sweep_info)
                    p.run_dir = str(analysis.run.path)
                    _metrics(p, analysis.summary, analysis.health)
                    p.status = "ok"
                    if analysis.manifest.get("status") == "interrupted":
                        p.status = "interrupted"
                        result.interrupted = True
                except ServerFailed as exc:
                    p.status, p.error = "failed", str(exc)
                except UserError as exc:  # e.g. the target did not answer /v1/models
                    p.status, p.error = "failed", str(exc).replace("\n", " ")
                except KeyboardInterrupt:
                    p.status, p.error = "interrupted", "interrupted"
                    result.interrupted = True
                except Exception as exc:  # one point's failure does not end the sweep
                    p.status, p.error = "failed", f"{type(exc).__name__}: {exc}"
                finally:
                    p.exit_code = server.stop()
        except KeyboardInterrupt:  # a second Ctrl-C while stopping: stop once more, then go
            server.stop()
            p.status, result.interrupted = "interrupted", True
        if p.status != "ok":
            p.stderr_tail = server.stderr_tail() or None
        result.write()
        if on_point:
            on_point(p)
    return result


def process_gone(pid: int) -> bool:
    """True when no process ``pid`` exists (zombies of others count as existing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False

