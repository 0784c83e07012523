"""A real local Ray cluster for tests: a head (``ray start --head`` on 127.0.0.1) and, for
multi-node tests, more nodes joined to it (``ray start --address=HEAD``): each its own raylet,
as on separate machines, only all on loopback.

Every ``ray start`` runs in a session of its own, and stopping kills the processes of that
session (the head's or the node's GCS, raylet, agents and actor workers) by their ids: never
``ray stop``, which kills every Ray process on the machine, other people's clusters included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# head address -> the session of each of its nodes' ``ray start`` (their processes are in it)
_SESSIONS: dict[str, list[int]] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_exe() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe if exe.exists() else Path(shutil.which("ray") or "ray"))


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(stat.parent.name))
    return out


def _kill_session(sid: int, timeout_s: float = 20.0) -> None:
    """SIGKILL every process of the session (``ray stop --force``, for this node only)."""
    deadline = time.monotonic() + timeout_s
    while pids := session_pids(sid):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise AssertionError(f"Ray processes {pids} outlived SIGKILL")
        time.sleep(0.1)


@contextlib.contextmanager
def _test_env() -> Iterator[dict[str, str]]:
    # A loopback test cluster: no token authentication on either side (Ray turns it on when a
    # token file exists in ~/.ray, which an earlier Ray session may have left).
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    try:
        yield dict(os.environ)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _ray_start(args: list[str]) -> Iterator[int]:
    """``ray start ARGS`` in a session of its own (yielded); on exit, its processes die."""
    with _test_env() as env:
        proc = subprocess.Popen([_ray_exe(), "start", "--disable-usage-stats", *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
            yield proc.pid
        finally:
            proc.kill()  # a no-op once `ray start` has returned; not so if it hung
            proc.wait()
            _kill_session(proc.pid)


@contextlib.contextmanager
def local_ray_head(temp: Path, cpus: int = 2) -> Iterator[str]:
    """Start a one-node Ray cluster; yield its address (HOST:PORT)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    with _ray_start(["--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                     f"--num-cpus={cpus}", "--include-dashboard=false",
                     f"--temp-dir={temp}"]) as sid:
        _SESSIONS[address] = [sid]
        try:
            yield address
        finally:
            _SESSIONS.pop(address, None)


@contextlib.contextmanager
def local_ray_node(address: str, cpus: int = 1, timeout_s: float = 60.0) -> Iterator[str]:
    """Join one more node (its own raylet) to the cluster at ``address``; yield its node id
    once the cluster lists it alive. Stop it before its head."""
    before = alive_nodes(address)
    with _ray_start([f"--address={address}", "--node-ip-address=127.0.0.1",
                     f"--num-cpus={cpus}"]) as sid:
        sessions = _SESSIONS.setdefault(address, [])
        sessions.append(sid)
        try:
            deadline = time.monotonic() + timeout_s
            while not (new := alive_nodes(address) - before):
                assert time.monotonic() < deadline, f"the node did not join {address}"
                time.sleep(0.2)
            (node_id,) = new
            yield node_id
        finally:
            sessions.remove(sid)


@dataclass(frozen=True)
class LocalCluster:
    address: str  # HOST:PORT of the head, what ``--ray`` takes
    node_ids: frozenset[str]  # every node of the cluster, the head included

    def processes(self) -> dict[int, str]:
        """pid -> command line (a Ray worker's is its title, e.g. ``ray::ShardActor.run``) of
        every live process of the cluster's nodes."""
        out = {}
        for sid in _SESSIONS.get(self.address, []):
            for pid in session_pids(sid):
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                    out[pid] = cmd.replace(b"\0", b" ").decode(errors="replace").strip()
        return out


@contextlib.contextmanager
def local_ray_cluster(temp: Path, nodes: int = 2, cpus: int = 1) -> Iterator[LocalCluster]:
    """A head and ``nodes - 1`` more nodes, each with its own raylet and ``cpus`` CPUs: a
    multi-node cluster on one machine (every node on 127.0.0.1)."""
    with local_ray_head(temp, cpus=cpus) as address, contextlib.ExitStack() as stack:
        ids = list(alive_nodes(address))
        for _ in range(nodes - 1):
            ids.append(stack.enter_context(local_ray_node(address, cpus=cpus)))
        yield LocalCluster(address, frozenset(ids))


def alive_nodes(address: str) -> set[str]:
    """Ids of the cluster's alive nodes, asked of its GCS (no driver joins the cluster)."""
    from ray._raylet import GcsClient

    nodes = GcsClient(address=address).get_all_node_info(timeout=30)
    return {node_id.hex() for node_id, info in nodes.items() if info.state == 0}  # 0: ALIVE
