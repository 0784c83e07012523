"""Running the client's shards as Ray actors on a cluster (``slobench run --ray ADDRESS``).

The same shards as ``--workers N`` on one machine (:mod:`slobench.client.shards`): one actor per
shard (one CPU each, spread over the nodes), each running :func:`~slobench.client.shards.run_shard`
with a :class:`RayChannel`. Two things differ from local processes:

* Records are streamed: a worker's node may not share the run directory's filesystem, so its
  journal (:class:`StreamingJournal`) queues the flushed lines as messages, the driver pulls each
  actor's messages every tick and appends the lines to that worker's journal in the run
  directory. The run directory stays crash-safe as with processes (a dead driver or actor loses
  at most the last tick of records).
* The start is synchronized on wall clocks: monotonic clocks of different machines share no
  origin, so the driver measures each actor's wall-clock offset with round-trip pings (midpoint
  estimate, the fastest of a few), sends each actor the start as a wall-clock instant in the
  actor's own clock, and the actor converts it to its ``perf_counter_ns`` base. The estimate is
  good to half the round trip; offsets and round trips go to the manifest.

Ray is an optional extra: imported only here, and only when ``--ray`` is used.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slobench.client.journal import Journal
from slobench.client.runner import sigint_ignored
from slobench.client.shards import (
    SETUP_TIMEOUT_S,
    ShardedRunner,
    ShardSpec,
    StartGate,
    run_shard,
)
from slobench.clock import NS_PER_S
from slobench.errors import UserError

START_MARGIN_S = 0.5  # remote calls take a few ms each; the start goes out this far ahead
TICK_S = 0.1  # the driver pulls every actor's messages this often
PULL_WAIT_S = 1.0  # a tick waits this long at most for the pulls: a stuck node delays the
# others' records by this much, never the driver's reaction to Ctrl-C or a dead actor
CLOSE_PULL_S = 10.0  # at the end, the last pull of a live actor is waited for this long
PINGS = 7  # round trips per actor for the clock-offset estimate (the fastest one counts)
OFFSET_WARN_MS = 5.0  # clock offset or half round trip above this: the manifest warns
MAX_DEFAULT_WORKERS = 64  # the default --workers with --ray: the cluster's CPUs, at most this

Push = Callable[[tuple[Any, ...]], None]


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'slobench[ray]' (here and on every node "
                        "of the cluster)") from None
    return ray


# -- the cluster ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayCluster:
    address: str
    cpus: int
    nodes: int

    def default_workers(self) -> int:
        return max(1, min(self.cpus, MAX_DEFAULT_WORKERS))

    def check_workers(self, n: int) -> None:
        if n > self.cpus:
            raise UserError(f"--workers {n}: the Ray cluster at {self.address} has {self.cpus} "
                            f"CPUs and each worker takes one; give --workers {self.cpus} or "
                            "fewer, or add nodes")


def check_reachable(address: str) -> None:
    """Fail fast on a HOST:PORT nobody listens on (Ray itself retries for minutes)."""
    hostport = address.removeprefix("ray://")
    if hostport == "auto" or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=3.0):
            pass
    except (OSError, ValueError) as exc:
        raise UserError(f"--ray {address}: nothing answers there ({exc}); start a cluster with "
                        "`ray start --head` and give its address, e.g. 127.0.0.1:6379") from None


def connect(address: str) -> RayCluster:
    """Join the cluster at ``address`` as its driver; an address nobody answers fails fast."""
    check_reachable(address)
    ray = _ray()
    if ray.is_initialized():  # an earlier run in this process may have joined another cluster
        ray.shutdown()
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level="warning")
    except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError...
        raise UserError(f"--ray {address}: cannot connect ({str(exc).splitlines()[0]}); start "
                        "a cluster with `ray start --head` and give its address, e.g. "
                        "127.0.0.1:6379") from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return RayCluster(address, int(ray.cluster_resources().get("CPU", 0)), len(nodes))


def disconnect() -> None:
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        with sigint_ignored():
            ray.shutdown()


# -- the worker side -----------------------------------------------------------------------------


class StreamingJournal(Journal):
    """A :class:`Journal` that hands its flushed lines to the channel instead of a file."""

    def __init__(self, push: Push, flush_interval_s: float = 0.25) -> None:
        # no file: nothing of Journal.__init__ applies
        self.path = Path("<streamed to the driver>")
        self.flush_interval_s = flush_interval_s
        self._pending: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self.count = 0
        self._push = push

    def flush(self) -> None:
        if self._pending:
            self._push(("records", b"\n".join(self._pending) + b"\n"))
            self._pending.clear()

    def close(self) -> None:
        self.flush()


class RayChannel(StartGate):
    """:class:`~slobench.client.shards.WorkerChannel` of an actor: sends go to the actor's
    outbox (pulled by the driver); start and stop arrive as actor calls on other threads."""

    def __init__(self, push: Push) -> None:
        super().__init__()
        self._push = push

    def attach(self, loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None]) -> None:
        self._loop, self._on_stop = loop, on_stop

    def detach(self) -> None:
        self._loop = None

    def send(self, message: tuple[Any, ...]) -> None:
        self._push(message)

    def start_at_wall(self, wall_ns: int) -> None:
        """The start instant in this machine's wall clock, turned into its monotonic clock."""
        start_ns = time.perf_counter_ns() + (wall_ns - time.time_ns())
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._resolve_start, start_ns)

    def request_stop(self) -> None:
        self._stopped = True
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._stop_now)

    def close(self) -> None:
        pass


class ShardActor:
    """One shard on a Ray worker. Threaded (``max_concurrency``): :meth:`run` blocks one thread
    for the whole run while the driver's pull, start and stop calls run on others."""

    def __init__(self, spec: ShardSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._outbox: list[tuple[Any, ...]] = []
        self.channel = RayChannel(self._put)

    def _put(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self._outbox.append(message)

    def where(self) -> dict[str, Any]:
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(),
                "host": socket.gethostname(), "ip": ray.util.get_node_ip_address()}

    def ping(self) -> int:
        return time.time_ns()

    def run(self) -> None:
        """Run the shard; the result (or the error) goes out as the last message."""
        try:
            result = run_shard(self.spec, self.channel, journal=StreamingJournal(self._put))
            self._put(("done", result))
        except UserError as exc:
            self._put(("error", str(exc), True))
        except BaseException:  # reported to the driver, which decides
            self._put(("error", traceback.format_exc(), False))

    def pull(self) -> list[tuple[Any, ...]]:
        with self._lock:
            out, self._outbox = self._outbox, []
        return out

    def start(self, wall_ns: int) -> None:
        self.channel.start_at_wall(wall_ns)

    def stop(self) -> None:
        self.channel.request_stop()


# -- the driver side -----------------------------------------------------------------------------


class RayShard:
    """Driver side of one actor: the interface :class:`ShardedRunner` supervises."""

    def __init__(self, spec: ShardSpec, actor: Any) -> None:
        self.index = spec.index
        self.actor = actor
        self.open = True
        self.run_ref: Any = None
        self.node: dict[str, Any] = {}
        self.offset_ns = 0  # actor's wall clock minus the driver's
        self.rtt_ns = 0
        self._journal = open(spec.journal_path, "ab")  # noqa: SIM115 - held open for the run
        self._pull: Any = None
        self._pull_after_exit = False
        self._leaving = False  # a second Ctrl-C: last pull, then kill
        self._finished = False
        self._exit = "still running"

    def sync_clock(self, timeout_s: float, interrupted: Callable[[], bool]) -> bool:
        """Where the actor runs and its wall-clock offset: the fastest of a few round trips,
        the actor's clock read at the midpoint. False: Ctrl-C came before the actor was placed
        (a busy cluster may keep it waiting for minutes)."""
        ray = _ray()
        where = self.actor.where.remote()  # answered once the actor is placed
        deadline = time.monotonic() + timeout_s
        while not ray.wait([where], timeout=0.25)[0]:
            if interrupted():
                return False
            if time.monotonic() > deadline:
                raise ray.exceptions.GetTimeoutError(f"not placed in {timeout_s:.0f} s")
        self.node = ray.get(where)
        best: tuple[int, int] | None = None
        for _ in range(PINGS):
            t0 = time.time_ns()
            remote = ray.get(self.actor.ping.remote(), timeout=timeout_s)
            t1 = time.time_ns()
            if best is None or t1 - t0 < best[0]:
                best = (t1 - t0, remote - (t0 + t1) // 2)
        assert best is not None
        self.rtt_ns, self.offset_ns = best
        return True

    def start(self) -> None:
        self.run_ref = self.actor.run.remote()

    def request_pull(self) -> None:
        """Ask for the actor's messages (the driver asks every actor at once, then collects).
        Whether ``run`` had returned is checked first: then this pull gets its last message."""
        if not self.open or self._pull is not None:
            return
        ray = _ray()
        self._pull_after_exit = bool(self.run_ref is not None
                                     and ray.wait([self.run_ref], timeout=0)[0])
        self._pull = self.actor.pull.remote()

    def messages(self, wait_s: float = 0.0) -> list[tuple[Any, ...]]:
        """The actor's messages, once its pull has arrived (waited for ``wait_s`` at most: a
        slow node's come a later tick; the records go to the journal here)."""
        ray = _ray()
        self.request_pull()
        if self._pull is None:
            return []
        if not ray.wait([self._pull], timeout=wait_s)[0]:
            if self._leaving:  # its last pull did not come within the tick's wait
                self._kill("killed by a second Ctrl-C")
            return []
        try:
            batch = ray.get(self._pull)
        except ray.exceptions.RayError as exc:
            self._pull = None
            self._dead(exc)
            return []
        self._pull = None
        out = []
        for msg in batch:
            if msg[0] == "records":
                self._journal.write(msg[1])
            else:
                out.append(msg)
        self._journal.flush()
        if self._pull_after_exit:
            self.open = False
            self._finished = True
            try:
                ray.get(self.run_ref)
                self._exit = "returned"
            except ray.exceptions.RayError as exc:
                self._dead(exc)
        elif self._leaving:
            self._kill("killed by a second Ctrl-C")
        return out

    def _kill(self, note: str) -> None:
        """Kill the actor now (what it queued but was not pulled is lost)."""
        _ray().kill(self.actor, no_restart=True)
        self.open = False
        self._finished = True
        self._exit = note

    def _dead(self, exc: BaseException) -> None:
        self.open = False
        self._finished = True
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        self._exit = f"Ray actor lost: {type(exc).__name__}" + (f": {lines[0]}" if lines else "")

    def send(self, message: tuple[Any, ...]) -> None:
        if self.open and message[0] == "stop":
            self.actor.stop.remote()

    def exited(self) -> bool:
        return self._finished

    def exit_note(self) -> str:
        return self._exit

    def signal(self, sig: int) -> None:
        """SIGINT (a second Ctrl-C): leave now, as a worker process does: what the actor has
        queued comes with the next tick's pull (if it comes within ``PULL_WAIT_S``), then it is
        killed. Anything harder: kill it."""
        if self._finished:
            return
        if sig == signal.SIGINT:
            self._leaving = True
            self.request_pull()
        else:
            _ray().kill(self.actor, no_restart=True)

    def close(self, timeout_s: float = 5.0) -> None:
        ray = _ray()
        if not self._finished and self.run_ref is not None:
            ray.wait([self.run_ref], timeout=timeout_s)
        for _ in range(2):  # what is still queued there is records: keep them (a pull asked
            if not self.open or self.run_ref is None:  # for before the run ended may not be
                break  # the last); an actor that never ran has none
            self.request_pull()
            self.messages(CLOSE_PULL_S)
        ray.kill(self.actor, no_restart=True)
        self._journal.close()


class RayShardedRunner(ShardedRunner):
    """A sharded run whose workers are Ray actors on the connected cluster."""

    transport = "ray"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.warnings: list[str] = []
        self._shards: list[RayShard] = []

    def _launch(self, shards: list[Any]) -> None:
        ray = _ray()
        actor_class = ray.remote(num_cpus=1, max_concurrency=4, max_restarts=0,
                                 scheduling_strategy="SPREAD")(ShardActor)
        for spec in self.specs:
            shard = RayShard(spec, actor_class.remote(spec))
            shards.append(shard)
            self._shards.append(shard)
        for shard in shards:
            try:
                placed = shard.sync_clock(SETUP_TIMEOUT_S, lambda: self._interrupts > 0)
            except ray.exceptions.GetTimeoutError:
                raise UserError(f"--ray: client worker {shard.index} was not placed on the "
                                f"cluster within {SETUP_TIMEOUT_S:.0f} s (each takes one CPU); "
                                "try fewer --workers") from None
            if not placed:  # Ctrl-C while waiting for the cluster: start no more
                break
            shard.start()
        for shard in shards:
            if shard.run_ref is None:
                shard._kill("stopped while starting")
        for shard in shards:
            offset_ms, half_rtt_ms = shard.offset_ns / 1e6, shard.rtt_ns / 2e6
            if abs(offset_ms) > OFFSET_WARN_MS:
                self.warnings.append(
                    f"worker {shard.index} on {shard.node.get('host')}: its wall clock is "
                    f"{offset_ms:+.1f} ms off the driver's (start corrected by the ping "
                    "estimate); synchronize the clocks (NTP/chrony)")
            if half_rtt_ms > OFFSET_WARN_MS:
                self.warnings.append(
                    f"worker {shard.index} on {shard.node.get('host')}: round trip "
                    f"{2 * half_rtt_ms:.1f} ms; its start and record times are aligned with "
                    f"the others to +-{half_rtt_ms:.1f} ms only")

    def _wait(self, live: list[Any]) -> None:
        ray = _ray()
        refs = [s.run_ref for s in live if s.run_ref is not None]
        if refs:
            ray.wait(refs, num_returns=1, timeout=TICK_S)
        else:
            time.sleep(TICK_S)
        for shard in self._shards:  # every actor at once; messages() collects
            shard.request_pull()
        pulls = [s._pull for s in self._shards if s._pull is not None]
        if pulls:
            ray.wait(pulls, num_returns=len(pulls), timeout=PULL_WAIT_S)

    def _send_start(self, shards: list[Any]) -> None:
        wall_start = time.time_ns() + int(START_MARGIN_S * NS_PER_S)
        self.clock.start_at(time.perf_counter_ns() + (wall_start - time.time_ns()))
        for shard in shards:  # the same instant, in each actor's own wall clock
            shard.actor.start.remote(wall_start + shard.offset_ns)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        by_index = {s.index: s for s in self._shards}
        for entry in out["shards"]:
            shard = by_index.get(entry["worker"])
            if shard is not None:
                entry.update(node=shard.node, clock_offset_ms=shard.offset_ns / 1e6,
                             rtt_ms=shard.rtt_ns / 1e6)
        out["warnings"] = list(self.warnings)
        return out
