"""Run directories: ``runs/<run_id>/`` with manifest.json, workload.parquet, the record journal,
records.parquet and summary.json. Secrets never reach these files (see ``redact``)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import re
import secrets as _secrets
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from slobench import __version__
from slobench.client.backends.openai import strip_credentials
from slobench.client.journal import read_journal
from slobench.errors import UserError
from slobench.schema import RECORDS_SCHEMA, conform_records, read_parquet, write_table

MANIFEST = "manifest.json"
WORKLOAD = "workload.parquet"
RECORDS = "records.parquet"
JOURNAL = "records.journal.jsonl"
WORKER_JOURNAL = "records.journal.w{}.jsonl"  # one per client worker of a sharded run
_WORKER_JOURNAL = re.compile(r"^records\.journal\.w(\d+)\.jsonl$")
SUMMARY = "summary.json"

# Keys whose values are secrets. Only whole secret-like names: "kv_capacity_tokens" or
# "max_num_batched_tokens" are data, "api_token" or "Authorization" are not.
_SECRET_KEYS = re.compile(
    r"(?:^|[_-])(?:api[_-]?key|authorization|password|passwd|secret|cookie|credentials?"
    r"|(?:access|auth|bearer|refresh|hf|api|session|id)[_-]?token)$|^token$", re.I)


def redact(value: Any, secrets: tuple[str, ...] = ()) -> Any:
    """A copy with secret-looking keys masked, known secret strings removed, URL passwords cut."""
    secrets = tuple(s for s in secrets if s)
    if isinstance(value, dict):
        return {k: ("***" if _SECRET_KEYS.search(str(k)) and v not in (None, "", False)
                    else redact(v, secrets)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    if isinstance(value, str):
        for s in secrets:
            value = value.replace(s, "***")
        return strip_credentials(value) if "://" in value else value
    return value


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in ("aiohttp", "uvloop", "orjson", "pyarrow", "numpy", "scipy", "pydantic", "rich"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def host_info() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def table_fingerprint(table: pa.Table) -> str:
    """Content hash of a table (schema and values), independent of Parquet encoding details."""
    h = hashlib.sha256(str(table.schema).encode())
    for batch in table.to_batches(max_chunksize=65536):
        for col in batch.columns:
            for buf in col.buffers():
                if buf is not None:
                    h.update(memoryview(buf))
    return h.hexdigest()[:16]


def recorded_window(manifest: dict[str, Any], records: pa.Table) -> tuple[float, float]:
    """A run's measurement window: the manifest's, or for a run killed before it was written,
    from the end of the warm-up to the last scheduled request the records hold."""
    window = manifest.get("window")
    if window is None:
        plan = (manifest.get("config") or {}).get("plan") or {}
        sched = records["scheduled_s"].to_numpy()
        last = float(sched.max()) + 1e-9 if sched.size else 1e-9
        window = [min(plan.get("warmup_s", 0.0), last), last]
    return float(window[0]), float(window[1])


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # -- creating ----------------------------------------------------------------------------

    @classmethod
    def create(cls, out: Path, run_id: str | None = None) -> RunDir:
        """A new run directory under ``out`` (which is created); errors name the path and fix."""
        out = Path(out)
        if run_id is None:
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            run_id = f"{stamp}-{_secrets.token_hex(3)}"
        path = out / run_id
        try:
            path.mkdir(parents=True, exist_ok=False)
            probe = path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except FileExistsError:
            raise UserError(f"--out: run directory {path} already exists; "
                            "choose another --run-id or --out") from None
        except OSError as exc:
            raise UserError(f"--out: cannot write run directory {path} ({exc.strerror}); "
                            "choose a writable --out directory") from None
        return cls(path)

    @classmethod
    def open(cls, path: Path) -> RunDir:
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"{path}: no such run directory; give a path like runs/<run_id>")
        if not (path / MANIFEST).exists() and not cls(path).journal_paths():
            raise UserError(f"{path}: not a slobench run (no {MANIFEST} or {JOURNAL} inside)")
        return cls(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def journal_path(self) -> Path:
        return self.path / JOURNAL

    def worker_journal_path(self, worker: int) -> Path:
        """The journal of client worker ``worker`` of a sharded run (--workers N)."""
        return self.path / WORKER_JOURNAL.format(worker)

    def journal_paths(self) -> list[Path]:
        """Every record journal of the run: the main one (one-process run) and the workers'
        (sharded run), workers in index order; only those that exist."""
        workers = sorted((int(m.group(1)), p) for p in self.path.glob("records.journal.w*.jsonl")
                         if (m := _WORKER_JOURNAL.match(p.name)))
        main = [self.journal_path] if self.journal_path.exists() else []
        return main + [p for _, p in workers]

    def read_journals(self) -> tuple[pa.Table, int]:
        """All journals merged into one Records table (a sharded run's ordered by scheduled
        time) and the number of torn lines skipped in all of them."""
        tables, torn = [], 0
        for path in self.journal_paths():
            table, bad = read_journal(path)
            tables.append(table)
            torn += bad
        if not tables:
            return RECORDS_SCHEMA.empty_table(), 0
        if len(tables) == 1:
            return tables[0], torn
        merged = pa.concat_tables(tables)
        return merged.take(pc.sort_indices(merged, [("scheduled_s", "ascending")])), torn

    # -- files -------------------------------------------------------------------------------

    def write_json(self, name: str, data: Any) -> None:
        tmp = self.path / (name + ".tmp")
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
                                     | orjson.OPT_NON_STR_KEYS))
        tmp.replace(self.path / name)

    def read_json(self, name: str) -> dict[str, Any]:
        p = self.path / name
        try:
            data = orjson.loads(p.read_bytes())
        except FileNotFoundError:
            return {}
        except orjson.JSONDecodeError as exc:
            raise UserError(f"{p}: not valid JSON ({exc}); the run directory is damaged") from None
        return data if isinstance(data, dict) else {}

    def start_manifest(self, *, config: dict[str, Any], target: dict[str, Any],
                       workload: pa.Table, workload_source: str,
                       secrets: tuple[str, ...] = ()) -> dict[str, Any]:
        manifest = {
            "run_id": self.run_id,
            "status": "running",
            "tool": {"name": "slobench", "version": __version__},
            "versions": library_versions(),
            "host": host_info(),
            "pid": os.getpid(),  # so a run killed before the catalog saw it still reads as killed
            "started_at": _now_iso(),
            "ended_at": None,
            "target": redact(target, secrets),
            "config": redact(config, secrets),
            "workload": {"source": redact(workload_source, secrets),
                         "requests": workload.num_rows,
                         "fingerprint": table_fingerprint(workload)},
        }
        self.write_json(MANIFEST, manifest)
        return manifest

    def manifest(self) -> dict[str, Any]:
        return self.read_json(MANIFEST)

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        manifest = self.manifest()
        manifest.update(fields)
        manifest.setdefault("ended_at", None)
        if fields.get("status") in ("complete", "interrupted"):
            manifest["ended_at"] = _now_iso()
        self.write_json(MANIFEST, manifest)
        return manifest

    def write_workload(self, table: pa.Table) -> None:
        write_table(table, self.path / WORKLOAD)

    def finalize_records(self) -> tuple[pa.Table, int]:
        """Journal(s) -> records.parquet. Returns the table and the number of torn journal
        lines."""
        table, torn = self.read_journals()
        write_table(table, self.path / RECORDS)
        return table, torn

    def load_records(self) -> tuple[pa.Table, str, int]:
        """records.parquet when the run finished; otherwise whatever the journal holds."""
        parquet = self.path / RECORDS
        if parquet.exists():
            return conform_records(read_parquet(parquet, "Records"), str(parquet)), RECORDS, 0
        paths = self.journal_paths()
        if paths:
            table, torn = self.read_journals()
            source = JOURNAL if paths == [self.journal_path] else ", ".join(p.name for p in paths)
            return table, source, torn
        if (self.path / MANIFEST).exists():  # killed after it started, before its client did:
            return RECORDS_SCHEMA.empty_table(), f"no journal ({MANIFEST} only)", 0  # nothing sent
        raise UserError(f"{self.path}: the run has no records yet ({RECORDS} and {JOURNAL} are "
                        "both missing)")
