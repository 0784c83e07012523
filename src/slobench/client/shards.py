"""Sharding the load generator over worker processes, so the client is never the bottleneck.

A run with ``--workers N`` splits the Workload into N shards (:func:`partition`), starts one
process per shard, and each process drives its shard with its own event loop, backend, prompt
synthesizer and :class:`~slobench.client.runner.Runner`, writing its own journal. The parent waits
until every worker has its first payloads built and its connection pool open, then gives all of
them one start instant on the monotonic clock (``perf_counter_ns`` is CLOCK_MONOTONIC on Linux,
shared by every process on the machine), so all records share one time base.

Partitioning: the unit is a session (all turns of a ``session_id``; a row without one is a unit of
its own), because a session's turns carry its history and must go out from one worker. Units are
ordered by their first arrival and dealt round-robin, so every worker gets every N-th session start:
an even share of the arrival stream at every moment of the run, at any rate. Hashing by
``client_id`` was rejected: production pools are skewed (one client may carry half the traffic),
so client shards would be uneven, and nothing in the client needs a client's requests together.

Closed loop and ramp: the users are dealt round-robin the same way (their start times), so the
shards' users sum to the plan's. ``max_requests`` and ``max_concurrency`` are split into shares
that sum to the plan's: the concurrency cap becomes one cap per worker.

The worker entry point (:func:`run_shard`) is a plain function of a picklable
:class:`ShardSpec` (the shard's rows as Arrow IPC bytes, the backend, the synthesizer, the plan
share, the journal path) and a :class:`WorkerChannel`; the process transport
(:class:`PipeChannel`, :class:`ProcessShard`) sits behind those two small interfaces so other
transports (Ray actors) can reuse the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_any
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from slobench.client.backends.base import Backend
from slobench.client.journal import Journal
from slobench.client.pacing import LoadPlan
from slobench.client.runner import Progress, Runner, RunOutcome, Timeouts, new_event_loop
from slobench.clock import NS_PER_S, RunClock
from slobench.errors import UserError
from slobench.prompts.images import ImagePrompter
from slobench.prompts.synth import PromptSynthesizer, SynthStats
from slobench.schema import string_codes

START_MARGIN_S = 0.1  # the start instant is this far after the last worker said it is ready
SETUP_TIMEOUT_S = 300.0  # workers not ready by then: give up (big tokenizers load slowly)
STOP_GRACE_S = 15.0  # a worker asked to stop gets this long before SIGTERM, then 5 s to SIGKILL
POLL_S = 0.25  # the parent's supervision tick when nothing arrives


# -- how many workers ----------------------------------------------------------------------------


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def is_loopback(url: str | None) -> bool:
    """Whether ``url`` names a server on this machine (a loopback address)."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url or "").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_workers(*, local_target: bool) -> int:
    """The default of ``--workers``: one per usable core, less one core left to the target
    when it runs on this machine (the built-in target, or a loopback URL): a server starved of
    CPU runs late, and a worker preempted by it sends late."""
    cores = usable_cores()
    return max(1, cores - 1) if local_target else cores


def unit_count(workload: pa.Table) -> int:
    """How many partition units (sessions and lone requests) a Workload has."""
    return int(np.unique(_units(workload)).size) if workload.num_rows else 0


def effective_workers(plan: LoadPlan, requested: int, units: int) -> int:
    """Workers that can each get a non-empty share: never more than the units to deal, the
    closed-loop users, the concurrency cap or the request limit."""
    if requested < 1:
        raise UserError(f"--workers: {requested}; give at least 1")
    caps = [requested, max(units, 1)]
    if plan.max_concurrency:
        caps.append(plan.max_concurrency)
    if plan.max_requests:
        caps.append(plan.max_requests)
    if plan.mode == "closed":
        caps.append(plan.users)
    elif plan.mode == "ramp":
        caps.append(plan.ramp_max)
    return max(1, min(caps))


# -- partitioning (pure) -------------------------------------------------------------------------


def _units(workload: pa.Table) -> np.ndarray:
    """Partition unit of each row: rows of one non-empty session_id share one; other rows are
    units of their own."""
    n = workload.num_rows
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    sid = workload["session_id"]
    if isinstance(sid, pa.ChunkedArray):
        sid = sid.combine_chunks()
    codes, _ = string_codes(sid)
    empty = pc.equal(sid, "").to_numpy(zero_copy_only=False)
    units = codes.copy()
    lone = np.flatnonzero(empty)
    units[lone] = codes.max() + 1 + np.arange(lone.size)
    return units


def partition(workload: pa.Table, n: int) -> list[np.ndarray]:
    """Row indices (ascending) of each of ``n`` shards: sessions whole, units ordered by their
    first arrival (then first row) and dealt round-robin."""
    if n < 1:
        raise ValueError("n must be >= 1")
    rows = workload.num_rows
    if rows == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(n)]
    units = _units(workload)
    _, units = np.unique(units, return_inverse=True)  # dense 0..U-1
    count = int(units.max()) + 1
    arrival = workload["arrival_s"].to_numpy()
    first = np.full(count, np.inf)
    np.minimum.at(first, units, arrival)
    first_row = np.full(count, rows, dtype=np.int64)
    np.minimum.at(first_row, units, np.arange(rows))
    order = np.lexsort((first_row, first))
    shard_of_unit = np.empty(count, dtype=np.int64)
    shard_of_unit[order] = np.arange(count) % n
    shard_of_row = shard_of_unit[units]
    return [np.flatnonzero(shard_of_row == k) for k in range(n)]


def split_count(total: int, n: int) -> list[int]:
    """``total`` in ``n`` shares that differ by at most one and sum to ``total``."""
    return [total // n + (1 if k < total % n else 0) for k in range(n)]


@dataclass(frozen=True)
class ShardPlan:
    plan: LoadPlan  # the shard's LoadPlan: its share of max_requests and max_concurrency
    user_starts: list[float] | None  # closed loop / ramp: when each of its users starts


def shard_plans(plan: LoadPlan, n: int) -> list[ShardPlan]:
    """The plan of each of ``n`` shards: users dealt round-robin by start time (all at 0 for a
    closed loop, the ramp's steps for a ramp), limits split into shares that sum to the plan's."""
    conc = split_count(plan.max_concurrency, n) if plan.max_concurrency else [None] * n
    reqs = split_count(plan.max_requests, n) if plan.max_requests else [None] * n
    starts: list[list[float] | None]
    if plan.mode == "open":
        starts = [None] * n
    else:
        every = plan.ramp_start_times() if plan.mode == "ramp" else [0.0] * plan.users
        starts = [every[k::n] for k in range(n)]
    out = []
    for k in range(n):
        users = len(starts[k]) if starts[k] is not None else plan.users  # type: ignore[arg-type]
        out.append(ShardPlan(replace(plan, users=max(users, 1), max_concurrency=conc[k],
                                     max_requests=reqs[k]), starts[k]))
    return out


def table_to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def table_from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


# -- the worker ----------------------------------------------------------------------------------


@dataclass
class ShardSpec:
    """Everything one worker needs; picklable (it crosses a process boundary)."""

    index: int
    workload: bytes  # the shard's Workload rows, Arrow IPC stream
    rows: int
    backend: Backend
    synthesizer: PromptSynthesizer  # its nonce is the run id: prompts equal a 1-worker run's
    plan: LoadPlan
    user_starts: list[float] | None
    timeouts: Timeouts
    journal_path: str
    vision_encoder: str
    nonce: str
    want_rows: bool = False  # send finished rows with progress (a live display wants them)

    def progress_total(self) -> int | None:
        total = self.rows if self.plan.mode == "open" else None
        limit = self.plan.max_requests
        if limit is not None:
            total = limit if total is None else min(total, limit)
        return total


@dataclass
class ShardResult:
    index: int
    outcome: RunOutcome
    prompt_stats: dict[str, int]
    images_dropped: int
    journaled: int


class WorkerChannel(Protocol):
    """A worker's line to its parent. The process transport is :class:`PipeChannel`."""

    def attach(self, loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None]) -> None:
        """From now on a stop request (or the parent going away) calls ``on_stop`` on ``loop``."""

    def detach(self) -> None: ...

    async def wait_start(self) -> int | None:
        """Say "ready"; return the start instant (perf_counter_ns), or None to stop."""

    def send(self, message: tuple[Any, ...]) -> None:
        """("progress", dict) / ("done", ShardResult) / ("error", text, is_user_error)."""

    def close(self) -> None: ...


class StartGate:
    """The start and stop handling every transport's channel shares: ``wait_start`` says
    "ready" and waits for the start instant; a stop request resolves it with None and calls the
    Runner's ``on_stop``. Subclasses deliver those two events (``_resolve_start``, ``_stop_now``)
    on the loop, and implement ``send``."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_stop: Callable[[], None] | None = None
        self._start: asyncio.Future[int | None] | None = None
        self._stopped = False

    def send(self, message: tuple[Any, ...]) -> None:
        raise NotImplementedError

    async def wait_start(self) -> int | None:
        self._start = asyncio.get_running_loop().create_future()
        if self._stopped:
            return None
        self.send(("ready",))
        return await self._start

    def _resolve_start(self, value: int | None) -> None:
        if self._start is not None and not self._start.done():
            self._start.set_result(value)

    def _stop_now(self) -> None:
        self._stopped = True
        self._resolve_start(None)
        if self._on_stop is not None:
            self._on_stop()


class PipeChannel(StartGate):
    """:class:`WorkerChannel` over a ``multiprocessing`` pipe. Sends go through one thread, so
    pickling and a full pipe never block the event loop, and messages never interleave."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self._conn = conn
        self._out: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="slobench-shard-send",
                                        daemon=True)
        self._sender.start()

    def _send_loop(self) -> None:
        while (msg := self._out.get()) is not None:
            try:
                self._conn.send(msg)
            except (OSError, EOFError, ValueError):  # the parent is gone
                return

    def send(self, message: tuple[Any, ...]) -> None:
        self._out.put(message)

    def attach(self, loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None]) -> None:
        self._loop, self._on_stop = loop, on_stop
        loop.add_reader(self._conn.fileno(), self._readable)

    def detach(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(self._conn.fileno())
            self._loop = None

    def _readable(self) -> None:
        try:
            while self._conn.poll():
                self._handle(self._conn.recv())
        except (EOFError, OSError):  # the parent died: stop sending, keep the journal
            self.detach()
            self._handle(("stop",))

    def _handle(self, msg: tuple[Any, ...]) -> None:
        if msg[0] == "start":
            self._resolve_start(int(msg[1]))
        elif msg[0] == "stop":
            self._stop_now()

    def close(self) -> None:
        self._out.put(None)
        self._sender.join(timeout=30)


class _Reporter:
    """The worker Runner's on_progress: counters, new CPU samples and (if wanted) rows."""

    def __init__(self, channel: WorkerChannel, want_rows: bool) -> None:
        self.channel = channel
        self.want_rows = want_rows
        self.runner: Runner | None = None
        self._samples_sent = 0

    def __call__(self, p: Progress) -> None:
        rows = p.take_finished()
        samples: list[float] = []
        if self.runner is not None:
            samples = self.runner.cpu_samples[self._samples_sent:]
            self._samples_sent += len(samples)
        self.channel.send(("progress", {
            "scheduled": p.scheduled, "done": p.done, "in_flight": p.in_flight,
            "errors": p.errors, "sent": self.runner.sent if self.runner else 0,
            "cpu": samples, "rows": rows if self.want_rows else []}))


def run_shard(spec: ShardSpec, channel: WorkerChannel, journal: Journal | None = None
              ) -> ShardResult:
    """Drive one shard to the end (or until stopped); its records go to its own journal
    (``spec.journal_path``, or ``journal``: a transport whose worker may not share the run
    directory's filesystem streams them to its parent instead)."""
    workload = table_from_ipc(spec.workload)
    journal = journal if journal is not None else Journal(Path(spec.journal_path))
    loop = new_event_loop()
    try:
        reporter = _Reporter(channel, spec.want_rows)
        runner = Runner(workload, spec.backend, spec.plan, journal=journal, clock=RunClock(),
                        timeouts=spec.timeouts, synthesizer=spec.synthesizer,
                        images=ImagePrompter(spec.vision_encoder, nonce=spec.nonce),
                        on_progress=reporter, worker=spec.index, user_starts=spec.user_starts)
        reporter.runner = runner
        channel.attach(loop, runner.interrupt)
        try:
            outcome = loop.run_until_complete(runner.run(start_gate=channel.wait_start))
        finally:
            channel.detach()
    finally:
        journal.close()
        loop.close()
    return ShardResult(spec.index, outcome, spec.synthesizer.stats.as_dict(),
                       runner.images_dropped, journal.count)


def _process_main(spec: ShardSpec, conn: Connection) -> None:
    """Entry point of a worker process."""
    channel = PipeChannel(conn)
    code = 0
    try:
        channel.send(("done", run_shard(spec, channel)))
    except KeyboardInterrupt:  # Ctrl-C while still starting (the Runner handles it after)
        channel.send(("error", "interrupted while starting", True))
        code = 130
    except UserError as exc:
        channel.send(("error", str(exc), True))
        code = 2
    except BaseException:  # reported to the parent, which decides
        channel.send(("error", traceback.format_exc(), False))
        code = 1
    finally:
        channel.close()
    sys.exit(code)


# -- the parent ----------------------------------------------------------------------------------


def shard_context() -> Any:
    """forkserver where there is one (the parent has threads, so not fork; the server imports
    slobench once and forks ready workers), else spawn."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["slobench.client.shards"])
        return ctx
    return mp.get_context("spawn")


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class ProcessShard:
    """Parent side of one worker process."""

    def __init__(self, spec: ShardSpec, ctx: Any) -> None:
        self.index = spec.index
        self._parent, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_process_main, args=(spec, child),
                                   name=f"slobench-worker-{spec.index}", daemon=True)
        self._child = child
        self.open = True

    def start(self) -> None:
        self.process.start()
        self._child.close()  # only the worker holds that end: its death shows as EOF here

    def waitables(self) -> list[Any]:
        return ([self._parent] if self.open else []) + [self.process.sentinel]

    def messages(self) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        if not self.open:
            return out
        try:
            while self._parent.poll():
                out.append(self._parent.recv())
        except (EOFError, OSError):
            self.open = False
        return out

    def send(self, message: tuple[Any, ...]) -> None:
        if self.open:
            with contextlib.suppress(OSError, ValueError):
                self._parent.send(message)

    def exited(self) -> bool:
        return self.process.exitcode is not None

    def exit_note(self) -> str:
        return describe_exit(self.process.exitcode)

    def signal(self, sig: int) -> None:
        if not self.exited() and self.process.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)

    def close(self, timeout_s: float = 5.0) -> None:
        self.process.join(timeout_s)
        if not self.exited():
            self.signal(signal.SIGKILL)
            self.process.join(5)
        with contextlib.suppress(OSError):
            self._parent.close()


@dataclass
class _WorkerState:
    ready: bool = False
    counters: dict[str, Any] = field(default_factory=dict)
    cpu: list[float] = field(default_factory=list)
    result: ShardResult | None = None
    failure: str | None = None
    error_text: str | None = None
    user_error: bool = False
    died_at_s: float | None = None


class ShardedRunner:
    """Parent of a sharded run. Looks like a :class:`Runner` to the CLI (``progress``,
    ``images_dropped``), but :meth:`run` is synchronous and returns the combined outcome.
    Other transports (``client.ray_shards``) override :meth:`_launch`, :meth:`_wait` and
    :meth:`_send_start`."""

    transport = "processes"

    def __init__(self, specs: Sequence[ShardSpec], *, clock: RunClock,
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        self.specs = list(specs)
        self.clock = clock
        self.on_progress = on_progress
        totals = [s.progress_total() for s in self.specs]
        self.progress = Progress(total=None if None in totals else sum(totals))  # type: ignore[arg-type]
        self.images_dropped = 0
        self.state = {s.index: _WorkerState() for s in self.specs}
        self._interrupts = 0
        self._started = False
        self._stop_at: float | None = None  # monotonic time the stop was requested
        self._escalated = 0
        self.pids: dict[int, int] = {}  # worker -> process id, once started

    @classmethod
    def create(cls, workload: pa.Table, n: int, *, backend: Backend, plan: LoadPlan,
               journal_paths: Sequence[Path], clock: RunClock, timeouts: Timeouts,
               synthesizer: PromptSynthesizer, vision_encoder: str, nonce: str,
               on_progress: Callable[[Progress], None] | None = None) -> ShardedRunner:
        parts = partition(workload, n)
        plans = shard_plans(plan, n)
        specs = [ShardSpec(index=k, workload=table_to_ipc(workload.take(pa.array(parts[k]))),
                           rows=int(parts[k].size), backend=backend, synthesizer=synthesizer,
                           plan=plans[k].plan, user_starts=plans[k].user_starts,
                           timeouts=timeouts, journal_path=str(journal_paths[k]),
                           vision_encoder=vision_encoder, nonce=nonce,
                           want_rows=on_progress is not None)
                 for k in range(n)]
        return cls(specs, clock=clock, on_progress=on_progress)

    # -- signals -------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._interrupts += 1
        if self._interrupts >= 2:  # a third Ctrl-C raises as usual
            signal.signal(signal.SIGINT, signal.default_int_handler)

    @contextlib.contextmanager
    def _signals(self) -> Any:
        saved: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                saved[sig] = signal.signal(sig, self._on_signal)
        try:
            yield
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    # -- running -------------------------------------------------------------------------------

    def run(self) -> RunOutcome:
        shards: list[Any] = []
        with self._signals():
            try:
                self._launch(shards)
                self._supervise(shards)
            except BaseException:
                for shard in shards:
                    shard.send(("stop",))
                raise
            finally:
                for shard in shards:
                    shard.close()
        return self._combine()

    def _launch(self, shards: list[Any]) -> None:
        """Start one worker per spec, appending each to ``shards`` as it starts."""
        ctx = shard_context()
        for spec in self.specs:
            shard = ProcessShard(spec, ctx)
            shard.start()
            shards.append(shard)
            self.pids[shard.index] = shard.process.pid

    def _wait(self, live: list[Any]) -> None:
        """Block until a live worker has something to say or exits, at most one tick."""
        wait_any([w for s in live for w in s.waitables()], timeout=POLL_S)

    def _send_start(self, shards: list[Any]) -> None:
        """Give every worker the start instant (one monotonic clock on one machine)."""
        start_ns = time.perf_counter_ns() + int(START_MARGIN_S * NS_PER_S)
        self.clock.start_at(start_ns)
        for shard in shards:
            shard.send(("start", start_ns))

    def _stop_all(self, shards: list[ProcessShard]) -> None:
        if self._stop_at is None:
            self._stop_at = time.monotonic()
            for shard in shards:
                shard.send(("stop",))

    def _supervise(self, shards: list[ProcessShard]) -> None:
        setup_deadline = time.monotonic() + SETUP_TIMEOUT_S
        handled_interrupts = 0
        last_report = 0.0
        while True:
            live = [s for s in shards if not self.state[s.index].result and not s.exited()]
            if not live:
                for shard in shards:  # whatever arrived between the last wait and the exit
                    self._receive(shard, shard.messages())
                    self._reap(shard, shards)
                break
            self._wait(live)
            fresh = False
            for shard in shards:
                fresh |= self._receive(shard, shard.messages())
                self._reap(shard, shards)
            if not self._started:
                self._maybe_start(shards, setup_deadline)
            if self._interrupts > handled_interrupts:
                handled_interrupts = self._interrupts
                self._stop_all(shards)
                if self._interrupts >= 2:  # leave now: each worker flushes its journal and exits
                    for shard in shards:
                        shard.signal(signal.SIGINT)
            self._escalate(shards)
            now = time.monotonic()
            if self.on_progress and fresh and now - last_report >= 0.2:
                last_report = now
                self.on_progress(self._aggregate())
        if self.on_progress:
            self.on_progress(self._aggregate())

    def _maybe_start(self, shards: list[ProcessShard], setup_deadline: float) -> None:
        failed = [k for k, st in self.state.items() if st.failure]
        if failed and not self._interrupts:
            self._stop_all(shards)
            st = self.state[failed[0]]
            if st.user_error or st.error_text is None:
                raise UserError(f"client worker {failed[0]}: {st.failure}")
            raise RuntimeError(f"client worker {failed[0]} failed while starting:\n"
                               f"{st.error_text}")
        if self._stop_at is not None:
            return
        if all(st.ready for st in self.state.values()):
            self._send_start(shards)
            self._started = True
        elif time.monotonic() > setup_deadline:
            self._stop_all(shards)
            waiting = [k for k, st in self.state.items() if not st.ready]
            raise UserError(f"--workers: client worker(s) {waiting} were not ready after "
                            f"{SETUP_TIMEOUT_S:.0f} s; try fewer workers")

    def _escalate(self, shards: list[ProcessShard]) -> None:
        """Workers that do not stop when asked: SIGTERM, then SIGKILL."""
        if self._stop_at is None:
            return
        late = time.monotonic() - self._stop_at
        if self._escalated == 0 and late > STOP_GRACE_S:
            self._escalated = 1
            for shard in shards:
                shard.signal(signal.SIGTERM)
        elif self._escalated == 1 and late > STOP_GRACE_S + 5:
            self._escalated = 2
            for shard in shards:
                shard.signal(signal.SIGKILL)

    def _receive(self, shard: ProcessShard, messages: list[tuple[Any, ...]]) -> bool:
        st = self.state[shard.index]
        fresh = False
        for msg in messages:
            kind = msg[0]
            if kind == "ready":
                st.ready = True
            elif kind == "progress":
                update = msg[1]
                st.cpu.extend(update.pop("cpu"))
                self.progress.finished.extend(update.pop("rows"))
                st.counters = update
                fresh = True
            elif kind == "done":
                st.result = msg[1]
                fresh = True
            elif kind == "error":
                text, st.user_error = str(msg[1]), bool(msg[2])
                st.error_text = text
                lines = [ln for ln in text.strip().splitlines() if ln.strip()]
                st.failure = (text if st.user_error or not lines
                              else f"failed: {lines[-1].strip()}")
        return fresh

    def _reap(self, shard: ProcessShard, shards: list[ProcessShard]) -> None:
        """A worker that exited without a result failed: note why and when, stop the others
        (the planned load is no longer being applied)."""
        st = self.state[shard.index]
        if st.result is not None or not shard.exited() or st.died_at_s is not None:
            return
        if st.failure is None:
            st.failure = (f"died ({shard.exit_note()})"
                          if self._started or not self._interrupts else "stopped while starting")
        st.died_at_s = self.clock.now() if self._started else 0.0
        if self._started and not self._interrupts:
            self._stop_all(shards)

    # -- results -------------------------------------------------------------------------------

    def _aggregate(self) -> Progress:
        p = self.progress
        counters = [st.counters for st in self.state.values() if st.counters]
        for name in ("scheduled", "done", "in_flight", "errors"):
            setattr(p, name, sum(int(c.get(name, 0)) for c in counters))
        return p

    @property
    def failures(self) -> dict[str, str]:
        """Worker (as a string key) -> what happened to it, for workers that did not finish."""
        return {str(k): self._failure_note(k) for k, st in self.state.items()
                if st.result is None}

    def _failure_note(self, k: int) -> str:
        st = self.state[k]
        what = st.failure or "did not report"
        when = (f" at {st.died_at_s:.1f} s" if st.died_at_s and self._started else "")
        return (f"{what}{when}; its records up to then are kept, the run was stopped there")

    def cpu_samples_by_worker(self) -> dict[str, list[float]]:
        out = {}
        for k, st in self.state.items():
            out[str(k)] = (list(st.result.outcome.cpu_samples) if st.result is not None
                           else list(st.cpu))
        return out

    def merge_prompt_stats(self, stats: SynthStats) -> None:
        """Add the workers' prompt statistics into the parent's synthesizer stats."""
        for st in self.state.values():
            if st.result is None:
                continue
            for name, value in st.result.prompt_stats.items():
                if name == "max_abs_error":
                    stats.max_abs_error = max(stats.max_abs_error, value)
                else:
                    setattr(stats, name, getattr(stats, name) + value)

    def describe(self) -> dict[str, Any]:
        """The manifest's ``workers`` section."""
        shards = []
        for spec in self.specs:
            st = self.state[spec.index]
            res = st.result
            shards.append({
                "worker": spec.index, "rows": spec.rows,
                "users": len(spec.user_starts) if spec.user_starts is not None else None,
                "max_concurrency": spec.plan.max_concurrency,
                "max_requests": spec.plan.max_requests,
                "requests_sent": res.outcome.sent if res else st.counters.get("sent", 0),
                "journaled": res.journaled if res else None,
                "status": ("failed" if res is None else
                           "interrupted" if res.outcome.interrupted else "complete"),
            })
        return {"count": len(self.specs), "transport": self.transport, "shards": shards,
                "failed": self.failures}

    def _combine(self) -> RunOutcome:
        results = [st.result for st in self.state.values() if st.result is not None]
        outs = [r.outcome for r in results]
        self.images_dropped = sum(r.images_dropped for r in results)
        died = [st.died_at_s for st in self.state.values()
                if st.result is None and st.died_at_s is not None]
        now = self.clock.now() if self._started else 0.0
        schedule_end = max((o.schedule_end_s for o in outs), default=now)
        if died and self._started:  # the load was incomplete from the first death on
            schedule_end = min(schedule_end, *died)
        sent = sum(o.sent for o in outs) + sum(
            int(st.counters.get("sent", 0)) for st in self.state.values() if st.result is None)
        return RunOutcome(
            interrupted=bool(self._interrupts or died or any(o.interrupted for o in outs)),
            schedule_end_s=schedule_end,
            end_s=max((o.end_s for o in outs), default=now),
            sent=sent,
            cpu_samples=[],  # per worker: cpu_samples_by_worker()
            spin_s=sum(o.spin_s for o in outs),
            polls=sum(o.polls for o in outs),
            poll_cost_s=float(np.mean([o.poll_cost_s for o in outs])) if outs else 0.0,
        )
