"""The run catalog: one database row per run (live, simulated, capacity trial, sweep point) with
what it ran against and its key results, so runs can be listed, filtered and compared.

SQLite by default (``catalog.sqlite`` in the runs folder), any SQLAlchemy URL for a team
(PostgreSQL). Registration is an upsert keyed by the run's identity (host, group folder, run id,
start time), so registering a run again updates it. A run is registered when it starts (status
running) and again when it ends; registering must never fail a run (``register_safely``).
Credentials in URLs never reach the catalog. See docs/catalog.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import math
import os
import random
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateIndex, CreateTable

from slobench import __version__
from slobench.client.backends.presets import AUTO, PRESETS
from slobench.client.probe import clean_url
from slobench.errors import UserError
from slobench.store.rundir import MANIFEST, SUMMARY, redact

T = TypeVar("T")
ENV = "SLOBENCH_CATALOG"
DEFAULT_NAME = "catalog.sqlite"
OFF = ("off", "none", "no", "false", "0")
SCHEMA_VERSION = 1
SQLITE_BUSY_S = 15.0  # how long a writer waits for another process's write to finish
PG_CONNECT_TIMEOUT_S = 5

# Folders that hold the runs of one search or study: their runs belong to the folder above.
GROUP_FOLDER = re.compile(r"^(capacity|sweep|study)-")
KINDS = ("live", "simulated", "capacity-trial", "sweep-point")

LATENCY = ("ttft", "tpot", "e2e")
QUANTILES = ("p50", "p99")

metadata = MetaData()

schema_version = Table(
    "schema_version", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1: one row
    Column("version", Integer, nullable=False),
    Column("tool_version", String(40)),
    Column("updated_at", DateTime),
)


def _metric_columns() -> list[Column]:
    cols: list[Column] = [
        Column("requests", Integer), Column("ok", Integer), Column("errors", Integer),
        Column("attainment", Float), Column("slo_passed", Boolean),
        Column("goodput_rps", Float), Column("requests_per_s", Float),
        Column("input_tokens_per_s", Float), Column("output_tokens_per_s", Float),
    ]
    cols += [Column(f"{m}_{q}", Float) for m in LATENCY for q in QUANTILES]
    return cols


runs = Table(
    "runs", metadata,
    Column("uid", String(24), primary_key=True),
    Column("run_id", String(255), nullable=False),
    Column("group_id", String(255)),
    Column("path", Text),
    Column("host", String(255)),
    Column("pid", Integer),
    Column("kind", String(32)),
    Column("simulated", Boolean),
    Column("status", String(32)),
    Column("started_at", DateTime),
    Column("ended_at", DateTime),
    Column("registered_at", DateTime),
    Column("updated_at", DateTime),
    Column("tool_version", String(40)),
    Column("engine", String(64)),
    Column("engine_version", String(64)),
    Column("engine_source", String(32)),
    Column("model", String(255)),
    Column("hardware", String(255)),
    Column("tp", Integer),
    Column("replicas", Integer),
    Column("target_url", Text),
    Column("api", String(32)),
    Column("scenario", String(255)),
    Column("workload_source", Text),
    Column("workload_fingerprint", String(64)),
    Column("workload_requests", Integer),
    Column("slo_spec", Text),
    Column("duration_s", Float),
    *_metric_columns(),
    Column("client_healthy", Boolean),
    Column("summary_json", Text),
    Column("server_json", Text),
)
for _col in ("run_id", "engine", "model", "hardware", "workload_fingerprint", "scenario",
             "started_at", "status"):
    Index(f"ix_runs_{_col}", runs.c[_col])

run_classes = Table(
    "run_classes", metadata,
    Column("uid", String(24), ForeignKey("runs.uid", ondelete="CASCADE"), primary_key=True),
    Column("app", String(255), primary_key=True),
    Column("run_id", String(255), nullable=False),
    Column("slo_spec", Text),
    Column("target", Float),
    *_metric_columns(),
)

# Columns that come from the summary: kept as they are when a run is registered without one.
METRICS = (*(c.name for c in _metric_columns()), "duration_s", "client_healthy", "summary_json",
           "slo_spec")


class CatalogError(UserError):
    """The catalog cannot be opened, read or written (the message says which and why)."""


# -- URLs --------------------------------------------------------------------------------------


def runs_root(run_path: Path, manifest: dict[str, Any] | None = None) -> Path:
    """The runs folder a run belongs to: its parent, or the parent's parent when the parent is
    the folder of a capacity search, a sweep or a study."""
    run_path = Path(run_path)
    parent = run_path.parent
    if GROUP_FOLDER.match(parent.name) or _sweep_info(manifest or {}):
        return parent.parent
    return parent


def resolve_url(catalog: str | None = None, root: Path | None = None) -> str | None:
    """The catalog URL to use: ``catalog`` (a URL, a file path, or off), else $SLOBENCH_CATALOG,
    else ``<root>/catalog.sqlite`` (root: the runs folder, default ``runs``). None: disabled."""
    value = catalog if catalog not in (None, "") else os.environ.get(ENV, "").strip() or None
    if value is None:
        return sqlite_url(Path(root or "runs") / DEFAULT_NAME)
    value = str(value).strip()
    if value.lower() in OFF:
        return None
    if "://" not in value:
        return sqlite_url(Path(value).expanduser())
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        raise UserError(f"--catalog / ${ENV}: '{shown_url(value)}' is not a database URL; give "
                        "a file path, sqlite:///path/catalog.sqlite or "
                        "postgresql://user@host/db") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def sqlite_url(path: Path) -> str:
    return "sqlite:///" + str(Path(path).absolute())


def shown_url(url: str) -> str:
    """A URL fit to print: the file of a SQLite URL, any other URL without its password."""
    if "://" not in url:
        return url
    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        return clean_url(url)
    if u.get_backend_name() == "sqlite":
        return u.database or ":memory:"
    return u.set(query={}).render_as_string(hide_password=True)


# -- engines -----------------------------------------------------------------------------------

_ENGINES: dict[str, Engine] = {}


def _sqlite_engine(url: str) -> Engine:
    u = make_url(url)
    if u.database and u.database != ":memory:":
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(u, poolclass=NullPool, connect_args={"timeout": SQLITE_BUSY_S})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Transactions are ours (BEGIN IMMEDIATE below), not the driver's: concurrent writers
        # queue on the busy timeout instead of failing to upgrade a read lock.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_S * 1000)}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("slobench_write", True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def get_engine(url: str) -> Engine:
    engine = _ENGINES.get(url)
    if engine is None:
        backend = make_url(url).get_backend_name()
        try:
            if backend == "sqlite":
                engine = _sqlite_engine(url)
            elif backend == "postgresql":
                engine = create_engine(url, pool_pre_ping=True,
                                       connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S})
            else:
                engine = create_engine(url, pool_pre_ping=True)
        except (ImportError, ArgumentError) as exc:
            raise CatalogError(f"catalog {shown_url(url)}: no database driver for {backend} "
                               f"({exc}); for PostgreSQL install slobench[postgres]") from None
        _ENGINES[url] = engine
    return engine


def dispose_all() -> None:
    """Close every pooled connection (tests stopping a database server call this first)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


# -- values ------------------------------------------------------------------------------------


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)


def parse_time(value: Any) -> dt.datetime | None:
    """An ISO time from a manifest as a naive UTC datetime (the catalog's convention)."""
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return t


def parse_since(text: str, option: str = "--since") -> dt.datetime:
    """``--since``: a date or time (2026-05-01, 2026-05-01T10:00, local time unless it has an
    offset) or an age (90min, 12h, 7d). Returns naive UTC."""
    s = text.strip()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(d|day|days|w|week|weeks)", s)
    if m:
        days = float(m.group(1)) * (7 if m.group(2).startswith("w") else 1)
        return _utcnow() - dt.timedelta(days=days)
    if re.fullmatch(r"[0-9]*\.?[0-9]+\s*(us|µs|ms|s|min|h)?", s):
        from slobench.units import parse_duration

        return _utcnow() - dt.timedelta(seconds=parse_duration(s, option) or 0.0)
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        raise UserError(f"{option}: '{text}' is neither a date (2026-05-01, 2026-05-01T10:00) "
                        "nor an age (90min, 12h, 7d)") from None
    if t.tzinfo is None:
        t = t.astimezone()  # local time
    return t.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(value: Any) -> int | None:
    f = _num(value)
    return int(f) if f is not None else None


def _text(value: Any, limit: int = 255) -> str | None:
    if value is None or value == "":
        return None
    s = str(value)
    if "://" in s:
        s = _URL.sub(lambda m: clean_url(m.group(0)), s)
    return s[:limit]


def block_metrics(block: dict[str, Any]) -> dict[str, Any]:
    """The catalog's metric columns from one summary block (overall or a class)."""
    slo = block.get("slo") or {}
    thr = block.get("throughput") or {}
    lat = block.get("latency") or {}
    errors = block.get("errors") or {}
    out: dict[str, Any] = {
        "requests": _int(block.get("requests")),
        "ok": _int(block.get("ok")),
        "errors": int(sum(v for v in errors.values() if isinstance(v, int | float))),
        "attainment": _num(slo.get("attainment")),
        "slo_passed": bool(slo["passed"]) if slo.get("passed") is not None else None,
        "goodput_rps": _num(block.get("goodput_rps")),
        "requests_per_s": _num(thr.get("requests_per_s")),
        "input_tokens_per_s": _num(thr.get("input_tokens_per_s")),
        "output_tokens_per_s": _num(thr.get("output_tokens_per_s")),
    }
    for m in LATENCY:
        for q in QUANTILES:
            out[f"{m}_{q}"] = _num((lat.get(m) or {}).get(q))
    return out


# -- describing a run --------------------------------------------------------------------------


def _sweep_info(manifest: dict[str, Any]) -> dict[str, Any] | None:
    sweep = manifest.get("sweep") or \
        ((manifest.get("config") or {}).get("workload_options") or {}).get("sweep")
    return sweep if isinstance(sweep, dict) else None


def _scenario(manifest: dict[str, Any], sweep: dict[str, Any] | None) -> str | None:
    """A name for what the run exercised: an explicit scenario name where the run has one, else
    a short name of its workload source (synthetic, profile:language, trace file, dataset)."""
    config = manifest.get("config") or {}
    for value in (manifest.get("scenario"), config.get("scenario"),
                  (config.get("workload_options") or {}).get("scenario")):
        if isinstance(value, dict):
            value = value.get("name")
        if isinstance(value, str) and value.strip():
            return value.strip()
    if sweep and sweep.get("file"):
        return f"sweep:{Path(str(sweep['file'])).stem}"
    source = str((manifest.get("workload") or {}).get("source") or "")
    if not source:
        return None
    if source in ("synthetic",) or source.startswith("profile:"):
        return source
    kind, sep, rest = source.partition(":")
    if sep and kind.isalpha() and len(kind) > 1 and "://" not in source:
        return f"{kind}:{Path(rest).name}"
    return f"file:{Path(source).name}"


def run_uid(host: str | None, group: str | None, run_id: str, started: Any) -> str:
    """The catalog key of a run: the same run (moved, copied or re-registered) keeps it."""
    key = orjson.dumps([host or "", group or "", run_id, str(started or "")])
    return hashlib.sha256(key).hexdigest()[:20]


def describe_run(path: Path, manifest: dict[str, Any], doc: dict[str, Any] | None
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The catalog row of a run and its per-class rows, from its manifest and summary document
    (``{"summary": ..., "client_health": ...}``; None: not summarized yet)."""
    path = Path(path)
    config = manifest.get("config") or {}
    target = manifest.get("target") or {}
    ctarget = config.get("target") or {}
    server = manifest.get("server") or {}
    sweep = _sweep_info(manifest)
    run_id = str(manifest.get("run_id") or path.name)
    parent = path.parent.name
    group = (str(sweep.get("sweep_id")) if sweep and sweep.get("sweep_id") else
             parent if GROUP_FOLDER.match(parent) else None)
    simulated = target.get("kind") == "simulation"
    if sweep:
        kind = "sweep-point"
    elif group and group.startswith("capacity-") and run_id.startswith("trial-"):
        kind = "capacity-trial"
    else:
        kind = "simulated" if simulated else "live"
    tool_version = (manifest.get("tool") or {}).get("version")
    host = (manifest.get("host") or {}).get("hostname")
    builtin = config.get("builtin_engine") or None
    hardware = tp = replicas = None
    if simulated:
        described = config.get("engine") or {}
        dumped = target.get("engine") if isinstance(target.get("engine"), dict) else {}
        engine, version, source = "slobench-simulator", tool_version, "simulator"
        hardware = described.get("gpu") or dumped.get("gpu")
        tp = described.get("tp") or dumped.get("tp")
        replicas = target.get("replicas")
    elif builtin:
        engine, version, source = "slobench-emulator", tool_version, "builtin"
        hardware, tp = builtin.get("gpu"), builtin.get("tp")
    else:
        preset = target.get("engine") if isinstance(target.get("engine"), str) else None
        if server.get("engine"):
            engine, source = server["engine"], server.get("detected_from") or "server"
        elif preset and preset not in ("generic", AUTO):
            known = PRESETS.get(preset)
            engine, source = (known.engine if known else preset), "flag"
        else:
            engine, source = None, None
        version = server.get("engine_version")
    hardware = ctarget.get("hardware") or hardware
    workload = manifest.get("workload") or {}
    summary = (doc or {}).get("summary") or None
    health = (doc or {}).get("client_health") or {}
    uid = run_uid(host, group, run_id, manifest.get("started_at"))
    row: dict[str, Any] = {
        "uid": uid, "run_id": run_id[:255], "group_id": _text(group), "path": str(path),
        "host": _text(host), "kind": kind, "simulated": simulated,
        "status": _text(manifest.get("status") or "unknown", 32),
        "started_at": parse_time(manifest.get("started_at")),
        "ended_at": parse_time(manifest.get("ended_at")),
        "tool_version": _text(tool_version, 40),
        "engine": _text(engine, 64), "engine_version": _text(version, 64),
        "engine_source": _text(source, 32),
        "model": _text(target.get("model") or ctarget.get("model")),
        "hardware": _text(hardware), "tp": _int(tp), "replicas": _int(replicas),
        "target_url": _text(target.get("url"), 2000), "api": _text(target.get("api"), 32),
        "scenario": _text(_scenario(manifest, sweep)),
        "workload_source": _text(redact(workload.get("source")), 2000),
        "workload_fingerprint": _text(workload.get("fingerprint"), 64),
        "workload_requests": _int(workload.get("requests")),
        "slo_spec": _text((summary or {}).get("slo_spec") or config.get("slo"), 10_000),
        "server_json": orjson.dumps(_scrub(server)).decode() if server else None,
    }
    classes: list[dict[str, Any]] = []
    if summary is not None:
        row.update(block_metrics(summary.get("overall") or {}))
        row["duration_s"] = _num(summary.get("duration_s"))
        row["client_healthy"] = bool(health.get("valid", True)) if health else None
        row["summary_json"] = orjson.dumps(_scrub(doc), option=orjson.OPT_SERIALIZE_NUMPY
                                           ).decode()
        for app, block in sorted((summary.get("classes") or {}).items()):
            slo = block.get("slo") or {}
            classes.append({"uid": uid, "app": str(app)[:255], "run_id": row["run_id"],
                            "slo_spec": _text(slo.get("spec"), 10_000),
                            "target": _num(slo.get("target")), **block_metrics(block)})
    return row, classes


_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s\"'<>]+", re.I)


def _scrub(value: Any) -> Any:
    """``redact`` (secret keys masked, URL passwords cut), then URL query strings dropped."""

    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items()}
        if isinstance(v, list):
            return [strip(x) for x in v]
        if isinstance(v, str) and "://" in v:
            return _URL.sub(lambda m: clean_url(m.group(0)), v)
        return v

    return strip(redact(value))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads((Path(path) / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise CatalogError(f"{path}: no {MANIFEST}; not a slobench run directory") from None
    except orjson.JSONDecodeError as exc:
        raise CatalogError(f"{path}/{MANIFEST}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{path}/{MANIFEST}: not a JSON object")
    return data


def read_summary(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads((Path(path) / SUMMARY).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("summary"), dict) else None


# -- the catalog -------------------------------------------------------------------------------


@dataclass
class ScanResult:
    registered: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


class Catalog:
    """One catalog database. ``Catalog.open(url)``; methods raise CatalogError on database
    trouble and UserError on bad input."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = get_engine(url)

    @classmethod
    def open(cls, catalog: str | None = None, *, root: Path | None = None,
             create: bool = True) -> Catalog:
        """The catalog named by ``catalog`` / $SLOBENCH_CATALOG / ``<root>/catalog.sqlite``.
        With ``create=False`` a missing SQLite file is a UserError instead of a new database."""
        url = resolve_url(catalog, root)
        if url is None:
            raise UserError(f"the catalog is off (--catalog off or ${ENV}=off); give "
                            "--catalog URL")
        u = make_url(url)
        if not create and u.get_backend_name() == "sqlite" and u.database \
                and not Path(u.database).exists():
            raise UserError(f"no catalog at {u.database}: runs register there as they run; "
                            "index existing run directories with `slobench runs --scan DIR`, "
                            f"or name another catalog with --catalog or ${ENV}")
        cat = cls(url)
        cat.ensure_schema()
        return cat

    @property
    def shown(self) -> str:
        return shown_url(self.url)

    def _backoff(self) -> Callable[[OperationalError], bool]:
        """``busy(exc)``: True, after a randomized exponential wait, while ``exc`` is SQLite
        answering "locked" and SQLITE_BUSY_S has not passed since this was made."""
        deadline = time.monotonic() + SQLITE_BUSY_S
        delay = [0.01]
        sqlite = self.engine.dialect.name == "sqlite"

        def busy(exc: OperationalError) -> bool:
            if not (sqlite and _busy(exc) and time.monotonic() < deadline):
                return False
            time.sleep(delay[0] * (1 + random.random()))
            delay[0] = min(delay[0] * 2, 0.25)
            return True

        return busy

    def _run(self, work: Callable[[Connection], T], *, write: bool = True) -> T:
        """``work(conn)`` in one transaction. A writing one on SQLite takes the write lock up
        front (waiting for it), so concurrent registrations queue; the moments when SQLite
        answers "locked" without waiting (another process opening or closing the WAL) are
        retried, with backoff, for up to SQLITE_BUSY_S."""
        busy = self._backoff()
        while True:
            try:
                with self.engine.connect().execution_options(slobench_write=write) as conn, \
                        conn.begin():
                    return work(conn)
            except OperationalError as exc:
                if busy(exc):
                    continue
                raise self._error(exc) from None
            except SQLAlchemyError as exc:
                raise self._error(exc) from None

    @contextlib.contextmanager
    def _tx(self, write: bool = True) -> Iterator[Connection]:
        """A transaction as a context (for readers of the catalog's tables, e.g. the arena):
        opening and beginning it is retried like ``_run``; errors become CatalogError."""
        busy = self._backoff()
        while True:
            conn = None
            try:
                conn = self.engine.connect().execution_options(slobench_write=write)
                tx = conn.begin()
                break
            except OperationalError as exc:
                if conn is not None:
                    conn.close()
                if busy(exc):
                    continue
                raise self._error(exc) from None
            except SQLAlchemyError as exc:
                if conn is not None:
                    conn.close()
                raise self._error(exc) from None
        try:
            with conn, tx:
                yield conn
        except SQLAlchemyError as exc:
            raise self._error(exc) from None

    def reading(self) -> Any:
        """A read-only transaction over the catalog's tables, as a context manager yielding a
        SQLAlchemy Connection (for readers such as the arena)."""
        return self._tx(write=False)

    def _error(self, exc: SQLAlchemyError) -> CatalogError:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return CatalogError(f"catalog {self.shown}: {type(exc).__name__}: "
                            f"{reason[0] if reason else ''}"[:400])

    def ensure_schema(self) -> None:
        """Create the tables if missing (concurrent creators are serialized); refuse a catalog
        written by a newer slobench."""

        def create(conn: Connection) -> int:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(73411029)"))
            for table in metadata.sorted_tables:
                conn.execute(CreateTable(table, if_not_exists=True))
                for index in sorted(table.indexes, key=lambda i: str(i.name)):
                    conn.execute(CreateIndex(index, if_not_exists=True))
            version = self._version(conn)
            if version is None:
                conn.execute(insert(schema_version).values(
                    id=1, version=SCHEMA_VERSION, tool_version=__version__,
                    updated_at=_utcnow()))
                version = SCHEMA_VERSION
            return version

        version = self._run(self._version, write=False)
        if version is None:
            version = self._run(create)
        if version > SCHEMA_VERSION:
            raise CatalogError(f"catalog {self.shown} has schema version {version}, newer than "
                               f"this slobench understands ({SCHEMA_VERSION}); upgrade slobench")

    @staticmethod
    def _version(conn: Connection) -> int | None:
        if not sa_inspect(conn).has_table(schema_version.name):
            return None
        row = conn.execute(select(schema_version.c.version)).first()
        return int(row[0]) if row else None

    # -- writing ---------------------------------------------------------------------------

    def register_run(self, path: Path, *, doc: dict[str, Any] | None = None,
                     pid: int | None = None) -> dict[str, Any]:
        """Upsert the run in ``path`` (its manifest, and ``doc`` or its summary.json). ``pid``:
        the process running it (given by that process when the run starts). A run whose
        manifest still says running, whose recorded process on this host is gone, is
        registered as killed."""
        path = Path(path).absolute()
        manifest = read_manifest(path)
        if doc is None:
            doc = read_summary(path)
        row, classes = describe_run(path, manifest, doc)
        now = _utcnow()

        def upsert(conn: Connection) -> None:
            old = conn.execute(select(runs.c.pid, runs.c.host, runs.c.registered_at)
                               .where(runs.c.uid == row["uid"])).first()
            # the process that ran it: as registered at its start, else as its manifest says
            # (a run killed before it reached the catalog)
            ran = (old.pid, old.host) if old is not None and old.pid else (
                _int(manifest.get("pid")), row["host"])
            row["pid"] = pid if pid is not None else ran[0]
            if (row["status"] == "running" and pid is None and ran[0]
                    and ran[1] == row["host"] == socket.gethostname() and not _alive(ran[0])):
                row["status"] = "killed"
            row["registered_at"] = old.registered_at if old is not None and \
                old.registered_at else now
            row["updated_at"] = now
            _upsert(conn, row, keep_metrics=doc is None)
            if doc is not None:
                conn.execute(delete(run_classes).where(run_classes.c.uid == row["uid"]))
                if classes:
                    conn.execute(insert(run_classes), classes)

        self._run(upsert)
        return row

    def scan(self, directory: Path, *,
             summarize: Callable[[Path], dict[str, Any] | None] | None = None) -> ScanResult:
        """Register every run directory (one holding manifest.json) under ``directory``.
        ``summarize(path)`` gives the summary document of a run without summary.json (a
        killed one). Idempotent: scanning again updates the same rows."""
        directory = Path(directory)
        if not directory.is_dir():
            raise UserError(f"--scan: {directory} is not a directory; give a runs folder")
        result = ScanResult()
        for manifest in sorted(directory.rglob(MANIFEST)):
            path = manifest.parent
            try:
                doc = read_summary(path)
                if doc is None and summarize is not None:
                    with contextlib.suppress(UserError, OSError, ValueError):
                        doc = summarize(path)  # no records yet: registered without metrics
                self.register_run(path, doc=doc)
                result.registered.append(str(path))
            except (CatalogError, UserError, OSError, ValueError) as exc:
                result.failed.append((str(path), str(exc).replace("\n", " ")))
        return result

    # -- reading ---------------------------------------------------------------------------

    def list_runs(self, *, engine: str | None = None, model: str | None = None,
                  hardware: str | None = None, scenario: str | None = None,
                  workload: str | None = None, status: str | None = None,
                  kind: str | None = None, since: dt.datetime | None = None,
                  limit: int | None = None) -> list[dict[str, Any]]:
        """Runs, newest first. ``engine``, ``status`` and ``kind`` match exactly (any case);
        ``model``, ``hardware`` and ``scenario`` match a part of the value; ``workload`` is a
        prefix of the workload fingerprint; ``since`` a naive UTC time."""
        q = select(runs)
        if engine:
            q = q.where(func.lower(runs.c.engine) == engine.strip().lower())
        if status:
            q = q.where(func.lower(runs.c.status) == status.strip().lower())
        if kind:
            q = q.where(runs.c.kind == kind.strip().lower())
        for col, value in ((runs.c.model, model), (runs.c.hardware, hardware),
                           (runs.c.scenario, scenario)):
            if value:
                q = q.where(col.icontains(value.strip(), autoescape=True))
        if workload:
            q = q.where(runs.c.workload_fingerprint.startswith(workload.strip().lower(),
                                                               autoescape=True))
        if since is not None:
            q = q.where(runs.c.started_at >= since)
        q = q.order_by(runs.c.started_at.desc(), runs.c.run_id.desc())
        if limit is not None:
            if limit < 1:
                raise UserError("--limit: give a positive number of runs")
            q = q.limit(limit)
        return self._select(q)

    def _select(self, query: Any) -> list[dict[str, Any]]:
        return self._run(lambda conn: [_plain(r) for r in conn.execute(query)], write=False)

    def find(self, ref: str) -> list[dict[str, Any]]:
        """Runs matching ``ref``: a run id, group/run id, or a uid (or a prefix of 6+ chars)."""
        ref = ref.strip().rstrip("/")
        conds = [runs.c.run_id == ref, runs.c.uid == ref]
        if "/" in ref:
            group, _, rid = ref.rpartition("/")
            conds.append((runs.c.group_id == Path(group).name) & (runs.c.run_id == rid))
        if len(ref) >= 6 and re.fullmatch(r"[0-9a-f]+", ref):
            conds.append(runs.c.uid.startswith(ref))
        return self._select(select(runs).where(or_(*conds)).order_by(runs.c.started_at))

    def classes(self, uids: list[str]) -> list[dict[str, Any]]:
        if not uids:
            return []
        q = select(run_classes).where(run_classes.c.uid.in_(uids)).order_by(
            run_classes.c.run_id, run_classes.c.app)
        return self._select(q)


def _busy(exc: OperationalError) -> bool:
    text_ = str(exc.orig or exc).lower()
    return "locked" in text_ or "busy" in text_


def _plain(row: Any) -> dict[str, Any]:
    """A result row as a dict with plain str keys (SQLAlchemy's are a str subclass)."""
    return {str(k): v for k, v in row._mapping.items()}


def _upsert(conn: Connection, row: dict[str, Any], *, keep_metrics: bool) -> None:
    """Insert the run, or update it; without a summary the stored metrics are kept."""
    update = {k: v for k, v in row.items() if k != "uid" and not (keep_metrics and k in METRICS)}
    if keep_metrics:
        row = {k: v for k, v in row.items() if k not in METRICS or v is not None}
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        stmt = dialect_insert(runs).values(**row)
        stmt = stmt.on_conflict_do_update(index_elements=[runs.c.uid],
                                          set_={k: stmt.excluded[k] for k in update})
        conn.execute(stmt)
        return
    exists = conn.execute(select(runs.c.uid).where(runs.c.uid == row["uid"])).first()
    if exists:
        conn.execute(runs.update().where(runs.c.uid == row["uid"]).values(**update))
    else:
        conn.execute(insert(runs).values(**row))


# -- never failing a run -----------------------------------------------------------------------

_WARNED: set[str] = set()  # catalogs already warned about in this process: one line each


def register_safely(path: Path, *, catalog: str | None = None, doc: dict[str, Any] | None = None,
                    pid: int | None = None) -> bool:
    """Register a run, or print one warning line on stderr: never raises, so a catalog that
    cannot be written never fails or loses a run. Returns whether it was registered."""
    url = None
    try:
        manifest = read_manifest(path)
        url = resolve_url(catalog, runs_root(path, manifest))
        if url is None:
            return False
        Catalog.open(url).register_run(path, doc=doc, pid=pid)
        return True
    except Exception as exc:  # the run matters more than its index entry
        where = shown_url(url or catalog or os.environ.get(ENV) or "")
        if where in _WARNED:
            return False
        _WARNED.add(where)
        reason = " ".join(str(exc).split())[:300]
        if where and where not in reason:
            reason = f"catalog {where}: {reason}"
        sys.stderr.write(f"warning: run {Path(path).name} not registered in the catalog "
                         f"({reason}); the run itself is saved; `slobench runs --scan "
                         f"{Path(path).parent}` indexes it later\n")
        return False
