"""The Python API for notebooks: runs, summaries and per-request records as pandas DataFrames.

    import slobench.api as sb

    sb.runs(engine="vllm", since="7d")          # the catalog, one row per run
    sb.summary("runs/20261121-101500-ab12cd")   # one row per SLO class plus "all"
    sb.records("20261121-101500-ab12cd")        # one row per request, with TTFT/TPOT/E2E

A run is named by its directory or by its id in the catalog. pandas is optional
(``pip install 'slobench[notebook]'``); the ``*_table`` functions return Arrow tables without
it, and ``slobench export`` writes them as CSV, JSON or Parquet. See docs/api.md.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa

from slobench.errors import UserError
from slobench.store.catalog import (
    Catalog,
    ScanResult,
    describe_run,
    parse_since,
    read_manifest,
    read_summary,
)
from slobench.store.catalog import runs as runs_schema

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["classes", "records", "records_table", "run_path", "runs", "scan", "summary",
           "summary_table"]

# Run metadata carried on every summary row, so rows of several runs stay apart.
RUN_COLUMNS = ("run", "run_id", "group_id", "kind", "status", "started_at", "engine",
               "engine_version", "model", "hardware", "tp", "scenario", "workload_fingerprint")
HIDDEN = ("summary_json", "server_json")


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise UserError("pandas is not installed: install it with pip install "
                        "'slobench[notebook]' (or pip install pandas)") from None
    return pandas


# -- naming runs -------------------------------------------------------------------------------


def run_label(row: dict[str, Any]) -> str:
    """How a run is shown and named: ``run_id``, or ``group/run_id`` inside a search folder."""
    return f"{row['group_id']}/{row['run_id']}" if row.get("group_id") else str(row["run_id"])


def run_path(run: str | Path, catalog: str | None = None) -> Path:
    """The directory of a run: ``run`` itself when it is one, else the catalog's run with that id
    (``run_id``, ``group/run_id`` or a uid prefix)."""
    path = Path(run)
    if path.is_dir():
        if not (path / "manifest.json").exists():
            raise UserError(f"{path}: not a slobench run (no manifest.json inside)")
        return path
    cat = Catalog.open(catalog, create=False)
    found = cat.find(str(run))
    if not found:
        raise UserError(f"{run}: no such run directory, and catalog {cat.shown} has no run with "
                        "that id; give a path like runs/<run_id> (or `slobench runs --scan DIR` "
                        "first)")
    if len(found) > 1:
        names = ", ".join(f"{run_label(r)} ({r['uid'][:8]})" for r in found[:6])
        raise UserError(f"{run}: {len(found)} runs have that id ({names}); give group/run_id, "
                        "the uid or the directory")
    where = Path(found[0]["path"] or "")
    if not where.is_dir():
        raise UserError(f"{run}: the catalog places it at {where}, which is gone; give its "
                        "directory, or re-index with `slobench runs --scan DIR`")
    return where


# -- the catalog -------------------------------------------------------------------------------


def _since(value: str | dt.datetime | None) -> dt.datetime | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value
    return parse_since(str(value), "since")


def list_runs(catalog: str | None = None, *, root: Path | None = None,
              **filters: Any) -> list[dict[str, Any]]:
    """The catalog's runs (dicts, newest first), filtered like ``slobench runs``: engine, model,
    hardware, scenario, workload (fingerprint prefix), status, kind, since, limit."""
    unknown = set(filters) - {"engine", "model", "hardware", "scenario", "workload", "status",
                              "kind", "since", "limit"}
    if unknown:
        raise UserError(f"runs(): unknown filter(s) {', '.join(sorted(unknown))}; use engine, "
                        "model, hardware, scenario, workload, status, kind, since, limit")
    filters["since"] = _since(filters.get("since"))
    rows = Catalog.open(catalog, root=root, create=False).list_runs(**filters)
    out = []
    for row in rows:
        for key in HIDDEN:
            row.pop(key, None)
        out.append({"run": run_label(row), **_utc(row)})
    return out


def _utc(row: dict[str, Any]) -> dict[str, Any]:
    """The catalog's naive UTC times made explicit (timezone-aware)."""
    return {k: v.replace(tzinfo=dt.timezone.utc) if isinstance(v, dt.datetime)
            and v.tzinfo is None else v for k, v in row.items()}


def runs(catalog: str | None = None, **filters: Any) -> pd.DataFrame:
    """The catalog as a DataFrame, one row per run, newest first (columns: docs/catalog.md).
    ``catalog``: a URL or file (default $SLOBENCH_CATALOG, else runs/catalog.sqlite)."""
    pd = _pandas()
    columns = ["run", *(c.name for c in runs_schema.columns if c.name not in HIDDEN)]
    return pd.DataFrame(list_runs(catalog, **filters), columns=columns)


def scan(directory: str | Path, catalog: str | None = None) -> ScanResult:
    """Index every run directory under ``directory`` (into ``directory``/catalog.sqlite unless
    ``catalog`` or $SLOBENCH_CATALOG names another); killed runs are summarized from their
    journal. Idempotent."""
    directory = Path(directory)
    return Catalog.open(catalog, root=directory).scan(directory, summarize=recompute)


def recompute(path: Path) -> dict[str, Any]:
    """A run's summary document recomputed from its records, as ``slobench report`` does."""
    from slobench.benchmark import analyze

    a = analyze(path)
    return {"summary": a.summary, "client_health": a.health}


# -- summaries ---------------------------------------------------------------------------------


def _doc(path: Path) -> dict[str, Any]:
    """The run's summary document: summary.json, or recomputed from its records (a killed
    run has none)."""
    return read_summary(path) or recompute(path)


def _flat_block(block: dict[str, Any]) -> dict[str, Any]:
    slo = block.get("slo") or {}
    thr = block.get("throughput") or {}
    errors = block.get("errors") or {}
    out: dict[str, Any] = {
        "requests": block.get("requests"), "ok": block.get("ok"),
        "errors": int(sum(errors.values())),
        "attainment": slo.get("attainment"), "target": slo.get("target"),
        "passed": slo.get("passed"), "goodput_rps": block.get("goodput_rps"),
        "requests_per_s": thr.get("requests_per_s"),
        "input_tokens_per_s": thr.get("input_tokens_per_s"),
        "output_tokens_per_s": thr.get("output_tokens_per_s"),
    }
    for metric, stats in (block.get("latency") or {}).items():
        for key, value in (stats or {}).items():
            out[f"{metric}_{key}" if key != "count" else f"{metric}_count"] = value
    out["slo_spec"] = slo.get("spec")
    out["error_statuses"] = orjson.dumps(errors).decode() if errors else None
    return out


def summary_rows(path: Path) -> list[dict[str, Any]]:
    """One dict per SLO class plus one for the whole run (class ``all``), each with the run's
    metadata (RUN_COLUMNS) first."""
    manifest = read_manifest(path)
    doc = _doc(path)
    meta_row, _ = describe_run(Path(path).absolute(), manifest, None)
    meta = _utc({k: meta_row.get(k) for k in RUN_COLUMNS if k != "run"})
    meta = {"run": run_label(meta_row), **meta}
    summary = doc.get("summary") or {}
    health = doc.get("client_health") or {}
    rows = []
    for app, block in sorted((summary.get("classes") or {}).items()):
        rows.append({**meta, "class": app, **_flat_block(block)})
    overall = {**meta, "class": "all", **_flat_block(summary.get("overall") or {})}
    overall["slo_spec"] = summary.get("slo_spec")
    overall["duration_s"] = summary.get("duration_s")
    overall["client_healthy"] = health.get("valid") if health else None
    rows.append(overall)
    return rows


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    """An Arrow table of dict rows whose keys may differ (the union of columns, in order)."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])


def summary_table(runs_: list[str | Path] | str | Path, catalog: str | None = None, *,
                  what: str = "all") -> pa.Table:
    """Summary rows of one or more runs: ``what`` = all (classes and overall), classes (one row
    per class) or summary (the overall row only)."""
    if isinstance(runs_, str | Path):
        runs_ = [runs_]
    rows = []
    for run in runs_:
        for row in summary_rows(run_path(run, catalog)):
            if what == "all" or (what == "summary") == (row["class"] == "all"):
                rows.append(row)
    return _table(rows)


def summary(run: str | Path, catalog: str | None = None) -> pd.DataFrame:
    """One row per SLO class of the run plus a last row ``class == "all"`` for the whole run:
    requests, errors, attainment against the target, goodput, throughput, and every latency
    percentile (``ttft_p50`` ... ``e2e_p99``, seconds)."""
    _pandas()
    return summary_table([run], catalog).to_pandas()


def classes(runs_: list[str | Path] | str | Path, catalog: str | None = None) -> pd.DataFrame:
    """The per-class rows of several runs, for comparing one class across runs."""
    _pandas()
    return summary_table(runs_, catalog, what="classes").to_pandas()


# -- records -----------------------------------------------------------------------------------


def records_table(runs_: list[str | Path] | str | Path, catalog: str | None = None) -> pa.Table:
    """Records of one or more runs (finished: records.parquet; killed: the journal), with a
    ``run`` column first and derived columns: ``ttft_s``, ``tpot_s``, ``e2e_s``, ``ttfa_s``,
    ``itl_max_s``, ``send_lag_s`` (NaN where undefined), ``slo_met`` (the request met its
    class's SLO) and ``in_window`` (counted by the summary)."""
    from slobench.slo.metrics import check_slos, derive
    from slobench.slo.spec import parse_slo
    from slobench.store.rundir import RunDir

    if isinstance(runs_, str | Path):
        runs_ = [runs_]
    tables = []
    for run in runs_:
        path = run_path(run, catalog)
        rd = RunDir.open(path)
        manifest = read_manifest(path)
        table, _, _ = rd.load_records()
        d = derive(table)
        slo_text = ((manifest.get("config") or {}).get("slo"))
        doc = read_summary(path) or {}
        slo_text = (doc.get("summary") or {}).get("slo_spec") or slo_text
        met = check_slos(d, table, parse_slo(slo_text, source=f"{path}/manifest.json")).met
        window = manifest.get("window") or (doc.get("summary") or {}).get("window")
        sched = d.scheduled
        if window:
            in_window = (sched >= window[0]) & (sched < window[1])
        else:
            in_window = np.ones(d.n, dtype=bool)
        row, _ = describe_run(Path(path).absolute(), manifest, None)
        derived = {"ttft_s": d.ttft, "tpot_s": d.tpot, "e2e_s": d.e2e, "ttfa_s": d.ttfa,
                   "itl_max_s": d.itl_max, "send_lag_s": d.send_lag}
        for name, values in derived.items():
            table = table.append_column(name, pa.array(values, pa.float64()))
        table = table.append_column("slo_met", pa.array(met, pa.bool_()))
        table = table.append_column("in_window", pa.array(in_window, pa.bool_()))
        table = table.add_column(0, "run", pa.array([run_label(row)] * table.num_rows,
                                                    pa.string()))
        tables.append(table)
    if not tables:
        raise UserError("give at least one run")
    return pa.concat_tables(tables, promote_options="permissive")


def records(run: str | Path | list[str | Path], catalog: str | None = None) -> pd.DataFrame:
    """One row per request (the Records table, docs/records.md) plus derived columns
    (``ttft_s``, ``tpot_s``, ``e2e_s``, ``ttfa_s``, ``itl_max_s``, ``send_lag_s``, ``slo_met``,
    ``in_window``)."""
    _pandas()
    return records_table(run, catalog).to_pandas()


# -- writing -----------------------------------------------------------------------------------

FORMATS = ("csv", "json", "parquet")


def format_of(output: Path | None, fmt: str | None) -> str:
    if fmt:
        fmt = fmt.strip().lower()
        if fmt not in FORMATS:
            raise UserError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
        return fmt
    suffix = output.suffix.lower().lstrip(".") if output else ""
    return {"pq": "parquet", "jsonl": "json"}.get(suffix, suffix) if suffix in (
        *FORMATS, "pq") else "csv"


def _flatten_lists(table: pa.Table) -> pa.Table:
    """CSV has no lists: list columns become JSON text."""
    for i, field in enumerate(table.schema):
        if pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
            text = [None if v is None else orjson.dumps(v).decode()
                    for v in table.column(i).to_pylist()]
            table = table.set_column(i, field.name, pa.array(text, pa.string()))
    return table


def write_table_as(table: pa.Table, fmt: str, output: Path | None) -> bytes | None:
    """``table`` as CSV, JSON (an array of objects; NaN as null) or Parquet, into ``output``;
    without one, returns the bytes (not for Parquet)."""
    if fmt == "parquet":
        if output is None:
            raise UserError("--format parquet: give --output FILE (Parquet is binary)")
        import pyarrow.parquet as pq

        try:
            pq.write_table(table, output)
        except OSError as exc:
            raise UserError(f"--output: cannot write {output} ({exc})") from None
        return None
    if fmt == "csv":
        import io

        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(_flatten_lists(table), buf)
        data = buf.getvalue()
    else:
        data = orjson.dumps(table.to_pylist(), option=orjson.OPT_SERIALIZE_NUMPY
                            | orjson.OPT_NAIVE_UTC) + b"\n"
    if output is None:
        return data
    try:
        Path(output).write_bytes(data)
    except OSError as exc:
        raise UserError(f"--output: cannot write {output} ({exc.strerror})") from None
    return None
