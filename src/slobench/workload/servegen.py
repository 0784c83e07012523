"""Read a ServeGen client pool directory natively and safely, with a binary cache.

A ServeGen pool (alibaba/ServeGen, Apache-2.0; arXiv 2505.09999) is a directory with one pair of
files per client N:

- ``chunk-N-trace.csv``: no header, one row per 600 s window:
  ``window_start_s, rate_req_per_s, iat_cv, pattern, shape, scale`` (pattern Gamma, Weibull, or
  empty for an idle window);
- ``chunk-N-dataset.json``: ``{"<block_start_s>": {"<field>": "<distribution>"}}`` with one block
  per 6 hours; each distribution is a string such as ``"{224: 0.0003, 225: 0.0008}"``.

The distribution strings are **never evaluated**: a strict regular expression checks that a string
is a brace-enclosed list of ``number: number`` pairs and nothing else, then the numbers are parsed
in C by numpy. Anything else is a :class:`UserError` naming the file and line.

The parsed pool is cached as ``.slobench-cache.npz`` in the pool directory, or, when that directory
is read-only, under ``$XDG_CACHE_HOME/slobench/servegen/`` (``~/.cache`` by default). The cache is
keyed by the names, sizes and modification times of the source files and the parser version, so
any change to the source invalidates it. It is a plain ``.npz`` (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from slobench.errors import UserError
from slobench.workload.pool import (
    BLOCK_S,
    PATTERN_NAMES,
    WINDOW_S,
    ClientPool,
    LengthTable,
    SparseDist,
    mix_rows,
)

PARSER_VERSION = 1
CACHE_NAME = ".slobench-cache.npz"
MISSING_POLICIES = ("drop", "borrow")

_TO_SPACES = str.maketrans("{}:,", "    ")
_FORBIDDEN = re.compile(r"[^0-9eE+\-.\s{}:,]")
_EMPTY_ITEM = re.compile(r"[{,]\s*,")  # ",," or "{," : an empty pair
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRACE_RE = re.compile(r"^chunk-(\d+)-trace\.csv$")
_TRACE_COLUMNS = ["window_start_s", "rate", "iat_cv", "pattern", "shape", "scale"]

LANGUAGE_FIELDS = ("input_tokens", "output_tokens")
MULTIMODAL_FIELDS = ("text_tokens", "image_tokens", "image_count", "output_tokens")


def _bad_distribution(text: str, source: str) -> UserError:
    shown = text if len(text) <= 60 else text[:57] + "..."
    return UserError(
        f"{source}: distribution {shown!r} is not a list of number: probability pairs in "
        "braces (only numbers are accepted, nothing is evaluated); fix the data file"
    )


def parse_distribution(text: object, *, source: str = "distribution") -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """``"{224: 0.0003, 225: 0.0008}"`` → (values, probabilities) as float64 arrays.

    Only numbers, braces, colons, commas and spaces are accepted; the string is never evaluated.
    Probabilities must be finite and >= 0 with a positive sum (an empty ``{}`` gives empty arrays).
    """
    if not isinstance(text, str):
        raise UserError(
            f"{source}: a distribution must be a string like \"{{224: 0.5, 225: 0.5}}\", "
            f"got {type(text).__name__}; fix the data file"
        )
    # Cheap but strict: numbers, braces, colons, commas and spaces only; one pair of braces;
    # as many numbers as two per colon and a comma between pairs. Nothing is ever evaluated:
    # the numbers are parsed by numpy, and anything else is refused.
    body = text.strip()
    n_pairs = body.count(":")
    if (_FORBIDDEN.search(body) or _EMPTY_ITEM.search(body)
            or not body.startswith("{") or not body.endswith("}")
            or body.count("{") != 1 or body.count("}") != 1
            or body.count(",") not in (n_pairs, max(n_pairs - 1, 0))):
        raise _bad_distribution(text, source)
    if not n_pairs:
        if body[1:-1].strip(" ,"):
            raise _bad_distribution(text, source)
        return np.zeros(0), np.zeros(0)
    try:
        nums = np.array(body[1:-1].translate(_TO_SPACES).split(), dtype=np.float64)
    except ValueError:
        raise _bad_distribution(text, source) from None
    if len(nums) != 2 * n_pairs:
        raise _bad_distribution(text, source)
    values, probs = nums[0::2].copy(), nums[1::2].copy()
    if not (np.all(np.isfinite(values)) and np.all(np.isfinite(probs))):
        raise UserError(f"{source}: distribution has a non-finite number; fix the data file")
    if np.any(probs < 0):
        raise UserError(f"{source}: distribution has a negative probability; fix the data file")
    if len(probs) and probs.sum() <= 0:
        raise UserError(f"{source}: distribution's probabilities sum to 0; fix the data file")
    return values, probs


# ---------------------------------------------------------------------------------------------
# Trace CSV


@dataclass(frozen=True)
class Trace:
    window_start: np.ndarray
    rate: np.ndarray
    cv: np.ndarray
    pattern: np.ndarray  # int8 codes, see pool.PATTERN_NAMES
    shape: np.ndarray
    scale: np.ndarray


def _trace_line_error(path: Path) -> str | None:
    """The first bad line of a trace CSV, found the slow way (only on the error path)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.rstrip("\r\n").split(",")
            if len(parts) != 6:
                return (f"{path}:{lineno}: expected 6 comma-separated columns "
                        f"({', '.join(_TRACE_COLUMNS)}), got {len(parts)}")
            for i in (0, 1, 2, 4, 5):
                try:
                    float(parts[i])
                except ValueError:
                    return (f"{path}:{lineno}: column {_TRACE_COLUMNS[i]} = {parts[i][:30]!r} "
                            "is not a number")
            if parts[3].strip() not in PATTERN_NAMES:
                return (f"{path}:{lineno}: pattern {parts[3][:30]!r} is not Gamma, Weibull or "
                        "empty")
    return None


def read_trace(path: Path) -> Trace:
    """Parse one ``chunk-N-trace.csv`` (vectorized; UserError with file:line on bad data)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise UserError(f"{path}:1: the trace file is empty; it needs one row per 600 s window")
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=_TRACE_COLUMNS),
            convert_options=pacsv.ConvertOptions(
                column_types={
                    "window_start_s": pa.float64(),
                    "rate": pa.float64(),
                    "iat_cv": pa.float64(),
                    "pattern": pa.string(),
                    "shape": pa.float64(),
                    "scale": pa.float64(),
                },
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        where = _trace_line_error(path)
        raise UserError(
            (where or f"{path}: not a valid trace CSV ({str(exc).splitlines()[0]})")
            + "; fix the file (rows: window_start_s,rate,iat_cv,pattern,shape,scale)"
        ) from None
    cols = {name: table.column(name) for name in _TRACE_COLUMNS}
    for name in _TRACE_COLUMNS:
        if cols[name].null_count:
            bad = int(np.flatnonzero(cols[name].is_null().to_numpy(zero_copy_only=False))[0])
            raise UserError(f"{path}:{bad + 1}: column {name} is empty; fix the row")
    num = {k: cols[k].to_numpy() for k in ("window_start_s", "rate", "iat_cv", "shape", "scale")}
    names = np.asarray(cols["pattern"].to_pylist(), dtype=object)
    codes = np.full(len(names), -1, dtype=np.int8)
    for label, code in PATTERN_NAMES.items():
        codes[names == label] = code
    n = len(codes)

    def fail(mask: np.ndarray, what: str) -> None:
        if np.any(mask):
            i = int(np.flatnonzero(mask)[0])
            raise UserError(f"{path}:{i + 1}: {what}; fix the row")

    fail(codes < 0, "pattern is not Gamma, Weibull or empty")
    for k, v in num.items():
        fail(~np.isfinite(v) | (v < 0), f"{k} must be a finite number >= 0")
    fail(num["window_start_s"] != WINDOW_S * np.arange(n),
         f"window starts must be 0, 600, 1200, ... (one row per {WINDOW_S:g} s window, in order)")
    active = num["rate"] > 0
    fail(active & (codes == 0), "a window with a rate > 0 needs a pattern (Gamma or Weibull)")
    fail(active & ((num["shape"] <= 0) | (num["scale"] <= 0)),
         "a window with a rate > 0 needs shape > 0 and scale > 0")
    codes[~active] = 0
    return Trace(num["window_start_s"], num["rate"], np.where(active, num["iat_cv"], 0.0), codes,
                 np.where(active, num["shape"], 0.0), np.where(active, num["scale"], 0.0))


# ---------------------------------------------------------------------------------------------
# Dataset JSON


def _line_of(raw: str, needle: str) -> int | None:
    pos = raw.find(needle)
    return None if pos < 0 else raw.count("\n", 0, pos) + 1


def read_dataset(path: Path) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Parse one ``chunk-N-dataset.json`` → {field: {block index: (values, probabilities)}}."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason}); fix the file") from None
    if not raw.strip():
        raise UserError(f"{path}:1: the dataset file is empty; it needs a JSON object of blocks")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); fix the file") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: expected a JSON object {{\"<block_start_s>\": {{...}}}}, "
                        f"got {type(data).__name__}; fix the file")
    out: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for key, block in data.items():
        try:
            start = float(key)
        except ValueError:
            start = -1.0
        line = _line_of(raw, json.dumps(key)) if start < 0 or start % BLOCK_S != 0 or not \
            isinstance(block, dict) else None
        where = f"{path}:{line}" if line else f"{path}"
        if start < 0 or start % BLOCK_S != 0:
            raise UserError(f"{where}: block key {key!r} is not a block start (a multiple of "
                            f"{BLOCK_S:g} s); fix the file")
        if not isinstance(block, dict):
            raise UserError(f"{where}: block {key!r} must be an object of field: distribution; "
                            "fix the file")
        b = int(start // BLOCK_S)
        for name, text in block.items():
            if not _FIELD_RE.match(name):
                where = f"{path}:{_line_of(raw, json.dumps(name))}"
                raise UserError(f"{where}: field name {name[:40]!r} is not an identifier; "
                                "fix the file")
            try:
                out.setdefault(name, {})[b] = parse_distribution(text)
            except UserError as exc:
                needle = json.dumps(text)[:80] if isinstance(text, str) else f'"{name}"'
                fline = _line_of(raw, needle) or _line_of(raw, json.dumps(key))
                source = f"{path}:{fline}" if fline else str(path)
                msg = str(exc).removeprefix("distribution: ")
                raise UserError(f"{source} (block {key}, field {name}): {msg}") from None
    return out


# ---------------------------------------------------------------------------------------------
# The pool directory


@dataclass(frozen=True)
class ServeGenData:
    """A parsed pool directory, before the missing-dataset policy is applied."""

    name: str
    kind: str
    client_ids: np.ndarray  # str
    has_dataset: np.ndarray  # bool
    trace: Trace  # matrices (n_clients, n_windows)
    n_blocks: int
    fields: dict[str, SparseDist]  # rows = client * n_blocks + block


def _fingerprint(files: list[Path]) -> str:
    h = hashlib.sha256(f"slobench-servegen-v{PARSER_VERSION}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _cache_paths(pool_dir: Path, cache_dir: Path | None) -> list[Path]:
    if cache_dir is not None:
        digest = hashlib.sha256(str(pool_dir.resolve()).encode()).hexdigest()[:16]
        return [Path(cache_dir) / f"{pool_dir.name}-{digest}.npz"]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slobench"
    digest = hashlib.sha256(str(pool_dir.resolve()).encode()).hexdigest()[:16]
    user_cache = base / "servegen" / f"{pool_dir.name}-{digest}.npz"
    # Beside the source only where its mode bits allow writing: root may write anywhere, but a
    # read-only data directory (a shared copy) is not ours to fill.
    if os.stat(pool_dir).st_mode & stat.S_IWUSR:
        return [pool_dir / CACHE_NAME, user_cache]
    return [user_cache]


def _kind(fields: set[str], source: Path) -> str:
    if "reason_ratio" in fields:
        return "reason"
    if "text_tokens" in fields or "image_tokens" in fields:
        return "multimodal"
    if {"input_tokens", "output_tokens"} <= fields:
        return "language"
    raise UserError(f"{source}: the dataset files have fields {sorted(fields)}; expected "
                    "input_tokens and output_tokens (language), reason_ratio (reason) or "
                    "text_tokens/image_tokens (multimodal)")


def _parse_dir(pool_dir: Path, traces: list[tuple[int, Path]]) -> ServeGenData:
    parsed = [read_trace(p) for _, p in traces]
    n_windows = max(len(t.rate) for t in parsed)
    n_clients = len(parsed)

    def mat(attr: str, dtype: type) -> np.ndarray:
        m = np.zeros((n_clients, n_windows), dtype=dtype)
        for i, t in enumerate(parsed):
            v = getattr(t, attr)
            m[i, : len(v)] = v
        return m

    trace = Trace(WINDOW_S * np.arange(n_windows), mat("rate", np.float64),
                  mat("cv", np.float64), mat("pattern", np.int8), mat("shape", np.float64),
                  mat("scale", np.float64))
    n_blocks = max(1, int(np.ceil(n_windows * WINDOW_S / BLOCK_S)))
    datasets: list[dict | None] = []
    for n, _ in traces:
        p = pool_dir / f"chunk-{n}-dataset.json"
        datasets.append(read_dataset(p) if p.exists() else None)
    names: set[str] = set()
    for d in datasets:
        if d is not None:
            names |= set(d)
    if not names:
        raise UserError(f"{pool_dir}: no chunk-N-dataset.json file; a pool needs the length "
                        "distributions of at least one client")
    kind = _kind(names, pool_dir)
    empty = (np.zeros(0), np.zeros(0))
    fields: dict[str, SparseDist] = {}
    for name in sorted(names):
        rows = []
        for d in datasets:
            col = {} if d is None else d.get(name, {})
            rows.extend(col.get(b, empty) for b in range(n_blocks))
        fields[name] = SparseDist.from_rows(rows)
    return ServeGenData(
        name=pool_dir.name,
        kind=kind,
        client_ids=np.array([f"{pool_dir.name}/{n}" for n, _ in traces]),
        has_dataset=np.array([d is not None for d in datasets]),
        trace=trace,
        n_blocks=n_blocks,
        fields=fields,
    )


def _save(data: ServeGenData, path: Path, fingerprint: str) -> None:
    arrays: dict[str, np.ndarray] = {
        "meta": np.array(json.dumps({"fingerprint": fingerprint, "name": data.name,
                                     "kind": data.kind, "n_blocks": data.n_blocks,
                                     "fields": sorted(data.fields)})),
        "client_ids": data.client_ids.astype(str),
        "has_dataset": data.has_dataset,
    }
    for attr in ("window_start", "rate", "cv", "pattern", "shape", "scale"):
        arrays[f"trace.{attr}"] = getattr(data.trace, attr)
    for name, d in data.fields.items():
        arrays[f"field.{name}.offsets"] = d.offsets
        arrays[f"field.{name}.values"] = d.values
        arrays[f"field.{name}.cum"] = d.cum
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _load(path: Path, fingerprint: str) -> ServeGenData | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("fingerprint") != fingerprint:
                return None
            trace = Trace(*(z[f"trace.{a}"] for a in ("window_start", "rate", "cv", "pattern",
                                                      "shape", "scale")))
            fields = {
                name: SparseDist(z[f"field.{name}.offsets"], z[f"field.{name}.values"],
                                 z[f"field.{name}.cum"])
                for name in meta["fields"]
            }
            return ServeGenData(meta["name"], meta["kind"], z["client_ids"], z["has_dataset"],
                                trace, int(meta["n_blocks"]), fields)
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None  # a missing, stale or damaged cache is simply rebuilt


def read_servegen(path: str | Path, *, cache: bool = True,
                  cache_dir: str | Path | None = None) -> tuple[ServeGenData, dict[str, object]]:
    """Parse a ServeGen pool directory (or load its cache) → (data, load report)."""
    t0 = time.perf_counter()
    pool_dir = Path(path)
    if not pool_dir.is_dir():
        raise UserError(f"{pool_dir}: no such directory; give a ServeGen pool directory "
                        "(one with chunk-N-trace.csv files)")
    traces = sorted(
        ((int(m[1]), p) for p in pool_dir.iterdir() if (m := _TRACE_RE.match(p.name))),
        key=lambda x: x[0],
    )
    if not traces:
        raise UserError(f"{pool_dir}: no chunk-N-trace.csv file; give a ServeGen pool directory")
    sources = [p for _, p in traces] + sorted(pool_dir.glob("chunk-*-dataset.json"))
    fingerprint = _fingerprint(sources)
    report: dict[str, object] = {"source": str(pool_dir), "cache": "off", "cache_path": None}
    data = None
    candidates = _cache_paths(pool_dir, None if cache_dir is None else Path(cache_dir))
    if cache:
        for c in candidates:
            if c.exists() and (data := _load(c, fingerprint)) is not None:
                report.update(cache="hit", cache_path=str(c))
                break
    if data is None:
        data = _parse_dir(pool_dir, traces)
        if cache:
            report["cache"] = "unwritable"
            for c in candidates:
                try:
                    _save(data, c, fingerprint)
                except OSError:
                    continue
                report.update(cache="written", cache_path=str(c))
                break
    report.update(
        name=data.name,
        kind=data.kind,
        clients=len(data.client_ids),
        windows=int(data.trace.rate.shape[1]),
        missing_dataset=[str(c) for c in data.client_ids[~data.has_dataset]],
        load_s=time.perf_counter() - t0,
    )
    return data, report


def pool_from_data(data: ServeGenData, *, missing: str = "borrow",
                   report: dict[str, object] | None = None) -> ClientPool:
    """A :class:`ClientPool` from parsed data; clients without a dataset file are dropped or
    borrow the pool's aggregate length distributions (request-weighted mix, per 6-hour block)."""
    if missing not in MISSING_POLICIES:
        raise UserError(f"missing={missing!r} is unknown; use one of {', '.join(MISSING_POLICIES)}")
    report = dict(report or {})
    tr, nb = data.trace, data.n_blocks
    n_clients, n_windows = tr.rate.shape
    block = np.minimum((tr.window_start // BLOCK_S).astype(np.int64), nb - 1)
    has = np.asarray(data.has_dataset, dtype=bool)
    keep = np.arange(n_clients) if missing == "borrow" else np.flatnonzero(has)
    fields = dict(data.fields)
    len_row = np.arange(n_clients, dtype=np.int64)
    n_rows = n_clients
    borrowed: tuple[str, ...] = ()
    if missing == "borrow" and not has.all():
        # One extra row: the request-weighted mix of all clients with data, per block.
        req_block = np.zeros((n_clients, nb))
        np.add.at(req_block.T, block, (tr.rate * WINDOW_S).T)
        sel = np.flatnonzero(has)
        for name, d in data.fields.items():
            extra = SparseDist.from_rows(
                [mix_rows(d, sel * nb + b, req_block[sel, b] + 1e-12) for b in range(nb)]
            )
            fields[name] = SparseDist(
                np.concatenate([d.offsets, d.offsets[-1] + extra.offsets[1:]]),
                np.concatenate([d.values, extra.values]),
                np.concatenate([d.cum, extra.cum]),
            )
        len_row[~has] = n_clients
        n_rows = n_clients + 1
        borrowed = tuple(str(c) for c in data.client_ids[~has])
    if len(keep) == 0:
        raise UserError(f"pool {data.name}: no client has a dataset file; use missing='borrow' "
                        "only when some client has one")
    report.update(missing_policy=missing,
                  dropped=[str(c) for c in data.client_ids[~has]] if missing == "drop" else [],
                  borrowed=list(borrowed))
    return ClientPool(
        name=data.name,
        kind=data.kind,
        client_ids=data.client_ids[keep],
        window_start=tr.window_start.astype(np.float64),
        window_dur=np.full(n_windows, WINDOW_S),
        rates=tr.rate[keep],
        cvs=tr.cv[keep],
        pattern=tr.pattern[keep],
        shape=tr.shape[keep],
        scale=tr.scale[keep],
        lengths=LengthTable(fields, n_rows, nb),
        len_row=len_row[keep],
        block=block,
        borrowed=borrowed,
        report=report,
    )


def load_pool(path: str | Path, *, missing: str = "borrow", cache: bool = True,
              cache_dir: str | Path | None = None) -> ClientPool:
    """Load a ServeGen pool directory as a :class:`ClientPool` (cached; see the module doc).

    ``pool.report`` says where it came from, whether the cache was used, and which clients had a
    trace but no dataset file (``missing_dataset``) and what was done with them.
    """
    data, report = read_servegen(path, cache=cache, cache_dir=cache_dir)
    return pool_from_data(data, missing=missing, report=report)
