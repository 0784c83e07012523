"""Read a ServeGen client pool directory natively and safely, with a binary cache.

A ServeGen pool (alibaba/ServeGen, Apache-2.0; arXiv 2505.09999) is a directory with one pair of
files per client N:

- ``chunk-N-trace.csv``: no header, one row per 600 s window:
  ``window_start_s, rate_req_per_s, iat_cv, pattern, shape, scale`` (pattern Gamma, Weibull, or
  empty for an idle window);
- ``chunk-N-dataset.json``: ``{"<block_start_s>": {"<field>": "<distribution>"}}`` with one block
  per 6 hours; each distribution is a string such as ``"{224: 0.0003, 225: 0.0008}"``.

The distribution strings are **never evaluated**. They must follow a strict grammar: braces around
``number: number`` pairs separated by commas (one trailing comma allowed), numbers being decimal
literals (digits, sign, point, exponent) and nothing else; anything else is a :class:`UserError`
naming the file and line. All the strings of one file are parsed in one pass: a byte translation
turns them into two-column CSV text that Arrow's CSV reader parses in C (it refuses a wrong column
count, an empty item and anything that is not a number); a file with unusual spacing or an error
goes through the exact per-string parser :func:`parse_distribution` instead, which accepts the
same grammar and gives the same numbers.

The parsed pool is cached as ``.slobench-cache.npz`` in the pool directory, or, when that directory
is read-only, under ``$XDG_CACHE_HOME/slobench/servegen/`` (``~/.cache`` by default). The cache is
keyed by the names, sizes and modification times of the source files and the parser version, so
any change to the source invalidates it. It is a plain, uncompressed ``.npz`` (no pickle; readable
with ``numpy.load``) whose arrays start on 64-byte boundaries, and it is memory-mapped read-only:
loading it costs milliseconds, and only the pages a computation reads take memory. After a full
parse that wrote the cache, the pool is served from the mapped cache as well, so the parse's
arrays are freed.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import mmap
import os
import re
import stat
import struct
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
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

PARSER_VERSION = 3
CACHE_NAME = ".slobench-cache.npz"
MISSING_POLICIES = ("drop", "borrow")

_FORBIDDEN = re.compile(r"[^0-9eE+\-.\s:,]")  # inside the braces
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRACE_RE = re.compile(r"^chunk-(\d+)-trace\.csv$")
_TRACE_COLUMNS = ["window_start_s", "rate", "iat_cv", "pattern", "shape", "scale"]

# The one-pass parser: the bytes it handles, and the translation into CSV rows "value,prob"
# ("{" dropped, "}" and "," end a row, ":" separates the columns).
_FAST_BYTES = b"0123456789eE+-. :,"
_TO_CSV = bytes.maketrans(b"},:", b"\n\n,")
_CSV_PARSE = pacsv.ParseOptions(delimiter=",", quote_char=False, double_quote=False,
                                escape_char=False, newlines_in_values=False,
                                ignore_empty_lines=False)
_CSV_CONVERT = pacsv.ConvertOptions(column_types={"value": pa.float64(), "prob": pa.float64()},
                                    null_values=[], strings_can_be_null=False,
                                    quoted_strings_can_be_null=False)

# Arrow's default allocator (mimalloc) keeps about three times what a CSV read needs; the system
# allocator gives it back.
_POOL = pa.system_memory_pool()

LANGUAGE_FIELDS = ("input_tokens", "output_tokens")
MULTIMODAL_FIELDS = ("text_tokens", "image_tokens", "image_count", "output_tokens")


def _bad_distribution(text: str, source: str) -> UserError:
    shown = text if len(text) <= 60 else text[:57] + "..."
    return UserError(
        f"{source}: distribution {shown!r} is not a list of number: probability pairs in "
        "braces (only numbers are accepted, nothing is evaluated); fix the data file"
    )


def _check_numbers(values: np.ndarray, probs: np.ndarray, source: str) -> None:
    if not (np.all(np.isfinite(values)) and np.all(np.isfinite(probs))):
        raise UserError(f"{source}: distribution has a non-finite number; fix the data file")
    if np.any(probs < 0):
        raise UserError(f"{source}: distribution has a negative probability; fix the data file")
    if len(probs) and probs.sum() <= 0:
        raise UserError(f"{source}: distribution's probabilities sum to 0; fix the data file")


def parse_distribution(text: object, *, source: str = "distribution") -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """``"{224: 0.0003, 225: 0.0008}"`` → (values, probabilities) as float64 arrays.

    The grammar is strict: braces around ``number: number`` items separated by commas, one
    trailing comma allowed, whitespace between tokens; a number has only digits, sign, point and
    exponent. The string is never evaluated. Probabilities must be finite and >= 0 with a
    positive sum (an empty ``{}`` gives empty arrays).
    """
    if not isinstance(text, str):
        raise UserError(
            f"{source}: a distribution must be a string like \"{{224: 0.5, 225: 0.5}}\", "
            f"got {type(text).__name__}; fix the data file"
        )
    body = text.strip()
    if (len(body) < 2 or body[0] != "{" or body[-1] != "}"
            or _FORBIDDEN.search(body, 1, len(body) - 1)):
        raise _bad_distribution(text, source)
    # Tokens: numbers and the separators ":" and ","; items must be exactly "n : n" in order.
    toks = body[1:-1].replace(":", " : ").replace(",", " , ").split()
    if not toks:
        return np.zeros(0), np.zeros(0)
    if len(toks) >= 4 and toks[-1] == ",":
        toks.pop()  # one trailing comma after the last item
    n = (len(toks) + 1) // 4
    if (len(toks) + 1) % 4 or toks[1::4].count(":") != n or toks[3::4].count(",") != n - 1:
        raise _bad_distribution(text, source)
    try:
        values = np.array(toks[0::4], dtype=np.float64)
        probs = np.array(toks[2::4], dtype=np.float64)
    except ValueError:  # a separator or a malformed number where a number belongs
        raise _bad_distribution(text, source) from None
    _check_numbers(values, probs, source)
    return values, probs


def _parse_many(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(pairs per text, values, probabilities) of many distribution strings in one pass, or
    ``None`` when one of them needs :func:`parse_distribution` (unusual spacing or an error).

    What this accepts, :func:`parse_distribution` accepts too, with the same numbers (both parse
    decimal literals with correct rounding); the number checks are left to the caller."""
    counts = [t.count(":") for t in texts]
    body = [t for t, c in zip(texts, counts, strict=True) if c]
    if len(body) < len(texts) and any(
            t != "{}" for t, c in zip(texts, counts, strict=True) if not c):
        return None
    # Each text opens with "{" and closes with "}", and there are as many braces as texts: no
    # text has another brace, so texts cannot run into each other.
    if not all(t[0] == "{" and t[-1] == "}" for t in body):
        return None
    try:
        raw = "".join(body).encode("ascii")
    except UnicodeEncodeError:
        return None
    n_body = len(body)
    del body
    # Without the number characters, spaces, ":" and ",", what is left must be the braces of
    # the texts, "{}" each, and nothing else.
    if raw.translate(None, _FAST_BYTES) != b"{}" * n_body:
        return None
    total = sum(counts)
    if total == 0:
        return np.zeros(len(texts), dtype=np.int64), np.zeros(0), np.zeros(0)
    csv = raw.translate(_TO_CSV, b"{")
    del raw
    # One row per item; an empty item (",," or "{,") is an empty row, which Arrow refuses, and
    # so is a row with no ":" or two, or a column that is not a number (spaces around a
    # number are allowed, inside one they are not).
    try:
        table = pacsv.read_csv(
            pa.py_buffer(csv),
            read_options=pacsv.ReadOptions(column_names=["value", "prob"], use_threads=False,
                                           block_size=len(csv) + 1),
            parse_options=_CSV_PARSE, convert_options=_CSV_CONVERT, memory_pool=_POOL)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != total:
        return None
    return (np.array(counts, dtype=np.int64), table.column(0).to_numpy(),
            table.column(1).to_numpy())


# ---------------------------------------------------------------------------------------------
# Trace CSV


_TRACE_MATRICES = ("rate", "cv", "pattern", "shape", "scale")


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


def _trace_table(source: pa.Buffer | Path) -> pa.Table:
    return pacsv.read_csv(
        source,
        read_options=pacsv.ReadOptions(column_names=_TRACE_COLUMNS, use_threads=False),
        convert_options=pacsv.ConvertOptions(
            column_types={
                "window_start_s": pa.float64(),
                "rate": pa.float64(),
                "iat_cv": pa.float64(),
                "pattern": pa.dictionary(pa.int32(), pa.string()),
                "shape": pa.float64(),
                "scale": pa.float64(),
            },
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
        memory_pool=_POOL,
    )


def _pattern_codes(column: pa.ChunkedArray) -> np.ndarray:
    """int8 pattern codes (-1 for an unknown name) of a dictionary-encoded column, without a
    Python object per row."""
    parts = [np.zeros(0, dtype=np.int8)]
    for chunk in column.chunks:
        lut = np.array([PATTERN_NAMES.get(s, -1) for s in chunk.dictionary.to_pylist()] or [-1],
                       dtype=np.int8)
        parts.append(lut[chunk.indices.to_numpy(zero_copy_only=False)])
    return np.concatenate(parts)


def _trace_problems(num: dict[str, np.ndarray], codes: np.ndarray, line: np.ndarray
                    ) -> list[tuple[np.ndarray, str]]:
    """(mask of bad rows, message) for each check of a trace's rows, in the order reported."""
    active = num["rate"] > 0
    checks = [(codes < 0, "pattern is not Gamma, Weibull or empty")]
    checks += [(~np.isfinite(v) | (v < 0), f"{k} must be a finite number >= 0")
               for k, v in num.items()]
    checks += [
        (num["window_start_s"] != WINDOW_S * line,
         f"window starts must be 0, 600, 1200, ... (one row per {WINDOW_S:g} s window, "
         "in order)"),
        (active & (codes == 0), "a window with a rate > 0 needs a pattern (Gamma or Weibull)"),
        (active & ((num["shape"] <= 0) | (num["scale"] <= 0)),
         "a window with a rate > 0 needs shape > 0 and scale > 0"),
    ]
    return checks


def _trace_numbers(table: pa.Table) -> dict[str, np.ndarray]:
    return {k: table.column(k).to_numpy() for k in ("window_start_s", "rate", "iat_cv",
                                                    "shape", "scale")}


def read_trace(path: Path) -> Trace:
    """Parse one ``chunk-N-trace.csv`` (vectorized; UserError with file:line on bad data)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise UserError(f"{path}:1: the trace file is empty; it needs one row per 600 s window")
    try:
        table = _trace_table(path)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        where = _trace_line_error(path)
        raise UserError(
            (where or f"{path}: not a valid trace CSV ({str(exc).splitlines()[0]})")
            + "; fix the file (rows: window_start_s,rate,iat_cv,pattern,shape,scale)"
        ) from None
    for name in _TRACE_COLUMNS:
        col = table.column(name)
        if col.null_count:
            bad = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise UserError(f"{path}:{bad + 1}: column {name} is empty; fix the row")
    num = _trace_numbers(table)
    codes = _pattern_codes(table.column("pattern"))
    for mask, what in _trace_problems(num, codes, np.arange(len(codes))):
        if np.any(mask):
            i = int(np.flatnonzero(mask)[0])
            raise UserError(f"{path}:{i + 1}: {what}; fix the row")
    active = num["rate"] > 0
    codes[~active] = 0
    return Trace(num["window_start_s"], num["rate"], np.where(active, num["iat_cv"], 0.0), codes,
                 np.where(active, num["shape"], 0.0), np.where(active, num["scale"], 0.0))


def _trace_matrices(traces: list[Trace]) -> Trace:
    n_windows = max(len(t.rate) for t in traces)

    def mat(attr: str, dtype: type) -> np.ndarray:
        m = np.zeros((len(traces), n_windows), dtype=dtype)
        for i, t in enumerate(traces):
            v = getattr(t, attr)
            m[i, : len(v)] = v
        return m

    return Trace(WINDOW_S * np.arange(n_windows), mat("rate", np.float64),
                 mat("cv", np.float64), mat("pattern", np.int8), mat("shape", np.float64),
                 mat("scale", np.float64))


_TRACE_GROUP_BYTES = 1 << 18  # see read_traces


def _trace_group(raws: list[bytes]) -> dict[str, np.ndarray] | None:
    """The rows of several trace files parsed in one call → per-file-row columns (with
    ``rows``, the row count of each file), or None when a file needs :func:`read_trace`."""
    rows = np.array([r.count(b"\n") for r in raws], dtype=np.int64)
    try:
        table = _trace_table(pa.py_buffer(b"".join(raws)))
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None
    if table.num_rows != rows.sum() or any(table.column(c).null_count for c in _TRACE_COLUMNS):
        return None
    num = _trace_numbers(table)
    codes = _pattern_codes(table.column("pattern"))
    starts = np.concatenate([[0], np.cumsum(rows)[:-1]])
    line = np.arange(int(rows.sum())) - np.repeat(starts, rows)
    if any(np.any(mask) for mask, _ in _trace_problems(num, codes, line)):
        return None
    active = num["rate"] > 0
    codes[~active] = 0
    return {"rows": rows, "line": line, "rate": num["rate"].copy(),
            "cv": np.where(active, num["iat_cv"], 0.0), "pattern": codes,
            "shape": np.where(active, num["shape"], 0.0),
            "scale": np.where(active, num["scale"], 0.0)}


def read_traces(paths: Sequence[Path]) -> Trace:
    """All the trace CSVs of a pool as (client, window) matrices (shorter traces end idle).

    Files are parsed in groups of about 256 KiB, one Arrow call per group (few calls, and a
    small transient: Arrow's CSV reader needs several times its input); on any problem each
    file is read on its own with :func:`read_trace`, which says which file and line is wrong."""
    n_clients = len(paths)
    mats: dict[str, np.ndarray] = {}
    n_windows = 0
    first = 0
    while first < n_clients:
        raws: list[bytes] = []
        size = 0
        while first + len(raws) < n_clients and (not raws or size < _TRACE_GROUP_BYTES):
            raw = Path(paths[first + len(raws)]).read_bytes()
            if not raw:
                return _trace_matrices([read_trace(q) for q in paths])
            raws.append(raw if raw.endswith(b"\n") else raw + b"\n")
            size += len(raw)
        group = _trace_group(raws)
        del raws
        if group is None:
            return _trace_matrices([read_trace(q) for q in paths])  # it names file and line
        rows = group.pop("rows")
        line = group.pop("line")
        if int(rows.max()) > n_windows:  # (a longer trace than all before: widen)
            n_windows = int(rows.max())
            for k, v in group.items():
                wider = np.zeros((n_clients, n_windows), dtype=v.dtype)
                if k in mats:
                    wider[:, :mats[k].shape[1]] = mats[k]
                mats[k] = wider
        client = first + np.repeat(np.arange(len(rows)), rows)
        for k, v in group.items():
            mats[k][client, line] = v
        first += len(rows)
    return Trace(WINDOW_S * np.arange(n_windows), mats["rate"], mats["cv"], mats["pattern"],
                 mats["shape"], mats["scale"])


# ---------------------------------------------------------------------------------------------
# Dataset JSON


def _line_of(raw: str, needle: str) -> int | None:
    pos = raw.find(needle)
    return None if pos < 0 else raw.count("\n", 0, pos) + 1


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The indices ``starts[i] .. starts[i] + sizes[i] - 1`` for all i, concatenated."""
    ends = np.cumsum(sizes)
    return np.repeat(starts - (ends - sizes), sizes) + np.arange(int(ends[-1]) if len(ends)
                                                                 else 0)


def _load_json(path: Path, raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason}); fix the file") from None
    try:  # the standard decoder names the line (and takes what orjson refuses: huge integers)
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); fix the file") from None


@dataclass(frozen=True)
class _FileField:
    """One field of one dataset file: per block, whether the file has it and its number of
    pairs; the pairs of all blocks, in block order."""

    present: np.ndarray  # bool, n_blocks
    sizes: np.ndarray  # int64, n_blocks
    values: np.ndarray
    probs: np.ndarray


def _read_dataset_file(path: Path, n_blocks: int | None = None) -> dict[str, _FileField]:
    """Parse one ``chunk-N-dataset.json`` → {field: its distributions, blocks ``0..n_blocks-1``}
    (``n_blocks`` None: as many as the file has). Blocks at or past ``n_blocks`` are checked
    but not kept."""
    path = Path(path)
    raw = path.read_bytes()
    if not raw.strip():
        raise UserError(f"{path}:1: the dataset file is empty; it needs a JSON object of blocks")
    data = _load_json(path, raw)

    def located(needle: str) -> str:
        line = _line_of(raw.decode("utf-8", errors="replace"), needle)
        return f"{path}:{line}" if line else f"{path}"

    if not isinstance(data, dict):
        raise UserError(f"{path}:1: expected a JSON object {{\"<block_start_s>\": {{...}}}}, "
                        f"got {type(data).__name__}; fix the file")
    texts: list[str] = []
    owner: list[tuple[str, int, str]] = []
    good_names: set[str] = set()
    for key, block in data.items():
        try:
            start = float(key)
        except ValueError:
            start = -1.0
        if start < 0 or start % BLOCK_S != 0:
            raise UserError(f"{located(json.dumps(key))}: block key {key!r} is not a block start "
                            f"(a multiple of {BLOCK_S:g} s); fix the file")
        if not isinstance(block, dict):
            raise UserError(f"{located(json.dumps(key))}: block {key!r} must be an object of "
                            "field: distribution; fix the file")
        b = int(start // BLOCK_S)
        for name, text in block.items():
            if name not in good_names:
                if not _FIELD_RE.match(name):
                    raise UserError(f"{located(json.dumps(name))}: field name {name[:40]!r} is "
                                    "not an identifier; fix the file")
                good_names.add(name)
            if not isinstance(text, str):
                _parse_located(path, raw, key, name, text)
            texts.append(text)
            owner.append((name, b, key))
    del data
    parsed = _parse_many(texts)
    if parsed is None:
        pairs = [_parse_located(path, raw, key, name, text)
                 for text, (name, _, key) in zip(texts, owner, strict=True)]
        counts = np.array([len(v) for v, _ in pairs], dtype=np.int64)
        values = np.concatenate([v for v, _ in pairs]) if pairs else np.zeros(0)
        probs = np.concatenate([p for _, p in pairs]) if pairs else np.zeros(0)
        del pairs
    else:
        counts, values, probs = parsed
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    if parsed is not None and (i := _first_refused(counts, offsets, values, probs)) is not None:
        name, _, key = owner[i]
        _parse_located(path, raw, key, name, texts[i])  # says what is wrong, file and line
        raise UserError(f"{path} (block {key}, field {name}): the distribution was refused; "
                        "fix the data file")
    del texts
    if n_blocks is None:
        n_blocks = max((b for _, b, _ in owner), default=-1) + 1
    slots: dict[str, list[int]] = {}
    for i, (name, b, _) in enumerate(owner):
        slot = slots.get(name)
        if slot is None:
            slot = slots[name] = [-1] * n_blocks
        if b < n_blocks:
            slot[b] = i  # a repeated block: the last one counts
    out: dict[str, _FileField] = {}
    for name, slot in slots.items():
        sel = np.array(slot, dtype=np.int64)
        present = sel >= 0
        sizes = np.where(present, counts[sel], 0)
        idx = _ranges(np.where(present, offsets[sel], 0), sizes)
        out[name] = _FileField(present, sizes, values[idx], probs[idx])
    return out


def _first_refused(counts: np.ndarray, offsets: np.ndarray, values: np.ndarray,
                   probs: np.ndarray) -> int | None:
    """The first string that fails the number checks of :func:`parse_distribution` (a
    non-finite number, a negative probability, probabilities summing to 0), or None."""
    first = []
    bad = ~np.isfinite(values) | ~np.isfinite(probs) | (probs < 0)
    if bad.any():
        first.append(int(np.searchsorted(offsets, np.flatnonzero(bad)[0], side="right")) - 1)
    nonempty = np.flatnonzero(counts > 0)
    if len(nonempty):
        zero = nonempty[~(np.add.reduceat(probs, offsets[nonempty]) > 0)]
        if len(zero):
            first.append(int(zero[0]))
    return min(first) if first else None


def _parse_located(path: Path, raw: bytes, key: str, name: str, text: object
                   ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`parse_distribution` with the file, line, block and field in its error."""
    try:
        return parse_distribution(text)
    except UserError as exc:
        doc = raw.decode("utf-8", errors="replace")
        needle = json.dumps(text)[:80] if isinstance(text, str) else f'"{name}"'
        fline = _line_of(doc, needle) or _line_of(doc, json.dumps(key))
        source = f"{path}:{fline}" if fline else str(path)
        msg = str(exc).removeprefix("distribution: ")
        raise UserError(f"{source} (block {key}, field {name}): {msg}") from None


def read_dataset(path: Path) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Parse one ``chunk-N-dataset.json`` → {field: {block index: (values, probabilities)}}."""
    out: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for name, f in _read_dataset_file(Path(path)).items():
        ends = np.cumsum(f.sizes)
        out[name] = {b: (f.values[ends[b] - f.sizes[b]:ends[b]],
                         f.probs[ends[b] - f.sizes[b]:ends[b]])
                     for b in np.flatnonzero(f.present).tolist()}
    return out


# ---------------------------------------------------------------------------------------------
# The pool directory


@dataclass(frozen=True)
class ServeGenData:
    """A parsed pool directory, before the missing-dataset policy is applied.

    ``fields`` rows are ``client * n_blocks + block``; when ``borrow_row`` is set, one more
    ``n_blocks`` rows at the end (as if client ``n_clients``) hold the request-weighted mix of
    the clients that have a dataset file, for those that have none."""

    name: str
    kind: str
    client_ids: np.ndarray  # str
    has_dataset: np.ndarray  # bool
    trace: Trace  # matrices (n_clients, n_windows)
    n_blocks: int
    fields: dict[str, SparseDist]
    borrow_row: bool = False


def _row_cumsum(probs: np.ndarray, offsets: np.ndarray, carry: float = 0.0
                ) -> tuple[np.ndarray, float]:
    """Per-row cumulative probabilities normalized to end at 1, for rows that continue a
    sequence whose running total so far is ``carry`` → (cum, running total after them).

    The running total is what makes a chunked computation give exactly the numbers of one
    computation over all rows (``pool._row_cumsum``)."""
    sizes = np.diff(offsets)
    if len(probs) == 0:
        return np.zeros(0, dtype=np.float64), carry
    total = np.cumsum(np.concatenate([[carry], probs]))
    new_carry = float(total[-1])
    cum = total[1:] - np.repeat(total[offsets[:-1]], sizes)
    del total
    row_tot = np.repeat(cum[np.maximum(offsets[1:] - 1, 0)], sizes)
    with np.errstate(invalid="ignore", divide="ignore"):
        cum = np.where(row_tot > 0, cum / row_tot, 0.0)
    cum[offsets[1:][sizes > 0] - 1] = 1.0
    return cum, new_carry


_PIECE = 1 << 16  # bytes per write; see _write_npz


class _Spool:
    """An append-only list of (value, cum) pairs, a (n, 2) float64 array: in memory (a list of
    chunks), or, while a cache is being built, in an unlinked temporary file beside it, so that
    a parse holds one file's arrays at a time, not the whole pool's."""

    def __init__(self, directory: Path | None) -> None:
        self.n = 0
        self.chunks: list[np.ndarray] = []
        # closed by close(), which the parse always calls (it owns the spool)
        self.file = (None if directory is None
                     else tempfile.TemporaryFile(dir=directory))  # noqa: SIM115

    def append(self, values: np.ndarray, cum: np.ndarray) -> None:
        pairs = np.empty((len(values), 2), dtype=np.float64)
        pairs[:, 0] = values
        pairs[:, 1] = cum
        self.n += len(pairs)
        if self.file is None:
            self.chunks.append(pairs)
        else:
            self.file.write(memoryview(pairs).cast("B"))

    def pieces(self, size: int = _PIECE) -> Iterator[bytes | memoryview]:
        """The bytes, in pieces of at most ``size`` (a multiple of 16)."""
        if self.file is None:
            for c in self.chunks:
                m = memoryview(c).cast("B")
                for i in range(0, len(m), size):
                    yield m[i:i + size]
            return
        self.file.flush()
        self.file.seek(0)
        while piece := self.file.read(size):
            yield piece
        self.file.seek(0, os.SEEK_END)

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, cum) as two contiguous arrays, filled piece by piece."""
        values = np.empty(self.n, dtype=np.float64)
        cum = np.empty(self.n, dtype=np.float64)
        pos = 0
        for piece in self.pieces(1 << 20):
            pairs = np.frombuffer(piece, dtype=np.float64).reshape(-1, 2)
            values[pos:pos + len(pairs)] = pairs[:, 0]
            cum[pos:pos + len(pairs)] = pairs[:, 1]
            pos += len(pairs)
        return values, cum

    def close(self) -> None:
        self.chunks = []
        if self.file is not None:
            self.file.close()


class _FieldChunks:
    """One length field of the pool as it is parsed, file by file."""

    def __init__(self, n_clients: int, n_blocks: int, spool_dir: Path | None) -> None:
        # (n_clients + 1, n_blocks) pairs per row; the last row is the borrow row
        self.sizes = np.zeros((n_clients + 1, n_blocks), dtype=np.int64)
        self.pairs = _Spool(spool_dir)
        self.carry = 0.0

    def add(self, client: int, f: _FileField) -> None:
        offsets = np.zeros(len(f.sizes) + 1, dtype=np.int64)
        np.cumsum(f.sizes, out=offsets[1:])
        cum, self.carry = _row_cumsum(f.probs, offsets, self.carry)
        self.sizes[client] = f.sizes
        self.pairs.append(f.values, cum)

    def offsets(self, rows: int) -> np.ndarray:
        out = np.zeros(rows * self.sizes.shape[1] + 1, dtype=np.int64)
        np.cumsum(self.sizes[:rows].ravel(), out=out[1:])
        return out

    def dist(self, rows: int) -> SparseDist:
        return SparseDist(self.offsets(rows), *self.pairs.columns())

    def close(self) -> None:
        self.pairs.close()


@dataclass
class _Parsed:
    """A freshly parsed pool, its length fields still in spools."""

    name: str
    kind: str
    client_ids: np.ndarray
    has_dataset: np.ndarray
    trace: Trace
    n_blocks: int
    fields: dict[str, _FieldChunks]
    borrow_row: bool

    @property
    def n_rows(self) -> int:
        return len(self.client_ids) + (1 if self.borrow_row else 0)

    def members(self) -> dict[str, np.ndarray | _Spool]:
        """The cache's arrays."""
        out: dict[str, np.ndarray | _Spool] = _common_members(self)
        for name, f in self.fields.items():
            out[f"field.{name}.offsets"] = f.offsets(self.n_rows)
            out[f"field.{name}.pairs"] = f.pairs
        return out

    def materialize(self) -> ServeGenData:
        """In memory (when there is no cache to map)."""
        fields = {}
        for name, f in self.fields.items():
            fields[name] = f.dist(self.n_rows)
            f.close()
        return ServeGenData(self.name, self.kind, self.client_ids, self.has_dataset, self.trace,
                            self.n_blocks, fields, self.borrow_row)

    def close(self) -> None:
        for f in self.fields.values():
            f.close()


def _common_members(d: ServeGenData | _Parsed) -> dict[str, np.ndarray | _Spool]:
    out: dict[str, np.ndarray | _Spool] = {
        "meta": np.array(json.dumps({"name": d.name, "kind": d.kind, "n_blocks": d.n_blocks,
                                     "fields": sorted(d.fields), "borrow_row": d.borrow_row})),
        "client_ids": np.asarray(d.client_ids).astype(str),
        "has_dataset": np.asarray(d.has_dataset, dtype=bool),
    }
    out["trace.window_start"] = d.trace.window_start
    for attr in _TRACE_MATRICES:
        out[f"trace.{attr}"] = getattr(d.trace, attr)
    return out


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


def _block_of_windows(trace: Trace, n_blocks: int) -> np.ndarray:
    return np.minimum((trace.window_start // BLOCK_S).astype(np.int64), n_blocks - 1)


def _requests_per_block(trace: Trace, n_blocks: int) -> np.ndarray:
    req_block = np.zeros((trace.rate.shape[0], n_blocks))
    np.add.at(req_block.T, _block_of_windows(trace, n_blocks), (trace.rate * WINDOW_S).T)
    return req_block


def _parse_dir(pool_dir: Path, traces: list[tuple[int, Path]],
               spool_dir: Path | None = None) -> _Parsed:
    """Parse the pool; the length fields go to spools (temporary files in ``spool_dir``, or
    memory when it is None)."""
    trace = read_traces([p for _, p in traces])
    n_clients, n_windows = trace.rate.shape
    n_blocks = max(1, int(np.ceil(n_windows * WINDOW_S / BLOCK_S)))
    has = np.zeros(n_clients, dtype=bool)
    fields: dict[str, _FieldChunks] = {}
    try:
        for i, (n, _) in enumerate(traces):
            p = pool_dir / f"chunk-{n}-dataset.json"
            if not p.exists():
                continue
            has[i] = True
            for name, f in _read_dataset_file(p, n_blocks).items():
                acc = fields.get(name)
                if acc is None:
                    acc = fields[name] = _FieldChunks(n_clients, n_blocks, spool_dir)
                acc.add(i, f)
        if not fields:
            raise UserError(f"{pool_dir}: no chunk-N-dataset.json file; a pool needs the "
                            "length distributions of at least one client")
        kind = _kind(set(fields), pool_dir)
        fields = dict(sorted(fields.items()))
        borrow_row = not has.all()
        if borrow_row:
            # One extra row: the request-weighted mix of all clients with data, per block.
            sel = np.flatnonzero(has)
            req_block = _requests_per_block(trace, n_blocks)
            for f in fields.values():
                d = f.dist(n_clients)
                extra = SparseDist.from_rows([
                    mix_rows(d, sel * n_blocks + b, req_block[sel, b] + 1e-12)
                    for b in range(n_blocks)])
                del d
                f.sizes[n_clients] = extra.row_sizes()
                f.pairs.append(extra.values, extra.cum)
    except BaseException:
        for f in fields.values():
            f.close()
        raise
    return _Parsed(
        name=pool_dir.name,
        kind=kind,
        client_ids=np.array([f"{pool_dir.name}/{n}" for n, _ in traces]),
        has_dataset=has,
        trace=trace,
        n_blocks=n_blocks,
        fields=fields,
        borrow_row=borrow_row,
    )


# ---------------------------------------------------------------------------------------------
# The cache: an uncompressed .npz, written in chunks, read by mapping it


_ALIGN = 64


def _write_npz(path: Path, members: dict[str, np.ndarray | _Spool]) -> None:
    """A plain .npz (stored, not compressed) whose array data start on 64-byte boundaries (the
    padding is an extra field of each zip entry).

    It is written in 64 KiB pieces: Linux page-caches a large write in large folios (up to
    megabytes), and a memory map faults a whole folio in at a time, so reading a few scattered
    rows of a mapped array would make megabytes resident; small writes keep that to 64 KiB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
    try:
        with open(tmp, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
            for name, m in members.items():
                if isinstance(m, _Spool):
                    dtype, shape, nbytes = np.dtype(np.float64), (m.n, 2), 16 * m.n
                    pieces: Iterator[bytes | memoryview] = m.pieces()
                else:
                    a = np.asarray(m, order="C")
                    dtype, shape, nbytes = a.dtype, a.shape, a.nbytes
                    flat = memoryview(a.reshape(-1)).cast("B")
                    pieces = (flat[i:i + _PIECE] for i in range(0, len(flat), _PIECE))
                header = io.BytesIO()
                np.lib.format.write_array_header_1_0(header, {
                    "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                    "shape": shape})
                zi = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                zi.compress_type = zipfile.ZIP_STORED
                zi.file_size = len(header.getvalue()) + nbytes
                data_at = fh.tell() + 30 + len(zi.filename.encode()) + 4
                pad = -data_at % _ALIGN
                zi.extra = struct.pack("<HH", 0xD935, pad) + b"\0" * pad
                with zf.open(zi, "w") as w:
                    w.write(header.getvalue())
                    for piece in pieces:
                        w.write(piece)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _map_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an .npz written by :func:`_write_npz`, as read-only views of one
    read-only memory map; None when the file is not laid out that way."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return None
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    out: dict[str, np.ndarray] = {}
    for zi in infos:
        if zi.compress_type != zipfile.ZIP_STORED or not zi.filename.endswith(".npy"):
            return None
        at = zi.header_offset
        local = mm[at:at + 30]
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            return None
        n_name, n_extra = struct.unpack("<HH", local[26:30])
        start = at + 30 + n_name + n_extra
        fp = io.BytesIO(mm[start:start + min(zi.file_size, 1 << 16)])
        version = np.lib.format.read_magic(fp)
        if version not in ((1, 0), (2, 0)):
            return None
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(fp)
        if fortran or dtype.hasobject:
            return None
        count = math.prod(shape)
        data_at = start + fp.tell()
        if data_at + count * dtype.itemsize > min(start + zi.file_size, size):
            return None
        out[zi.filename[:-4]] = np.frombuffer(mm, dtype=dtype, count=count,
                                              offset=data_at).reshape(shape)
    return out


def _save(data: ServeGenData | _Parsed, path: Path, fingerprint: str) -> None:
    if isinstance(data, _Parsed):
        members = data.members()
    else:
        members = _common_members(data)
        for name, d in data.fields.items():
            members[f"field.{name}.offsets"] = d.offsets
            members[f"field.{name}.pairs"] = np.column_stack([d.values, d.cum])
    members["fingerprint"] = np.array(fingerprint)
    _write_npz(path, members)


def _load(path: Path, fingerprint: str) -> ServeGenData | None:
    try:
        z = _map_npz(path)
        if z is None or str(z["fingerprint"]) != fingerprint:
            return None
        meta = json.loads(str(z["meta"]))
        trace = Trace(z["trace.window_start"], *(z[f"trace.{a}"] for a in _TRACE_MATRICES))
        fields = {}
        for name in meta["fields"]:
            pairs = z[f"field.{name}.pairs"]
            fields[name] = SparseDist(z[f"field.{name}.offsets"], pairs[:, 0], pairs[:, 1])
        return ServeGenData(meta["name"], meta["kind"], z["client_ids"], z["has_dataset"],
                            trace, int(meta["n_blocks"]), fields, bool(meta["borrow_row"]))
    except (OSError, ValueError, KeyError, struct.error, zipfile.BadZipFile,
            json.JSONDecodeError):
        return None  # a missing, stale or damaged cache is simply rebuilt


def read_servegen(path: str | Path, *, cache: bool = True,
                  cache_dir: str | Path | None = None) -> tuple[ServeGenData, dict[str, object]]:
    """Parse a ServeGen pool directory (or map its cache) → (data, load report)."""
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
        spool_dir = _spool_dir(candidates) if cache else None
        parsed = _parse_dir(pool_dir, traces, spool_dir)
        try:
            if cache:
                report["cache"] = "unwritable"
                for c in candidates:
                    try:
                        _save(parsed, c, fingerprint)
                    except OSError:
                        continue
                    # Serve from the cache just written: the parse's arrays are released.
                    data = _load(c, fingerprint)
                    report.update(cache="written", cache_path=str(c))
                    break
            if data is None:
                data = parsed.materialize()
        finally:
            parsed.close()
        del parsed
    report.update(
        name=data.name,
        kind=data.kind,
        clients=len(data.client_ids),
        windows=int(data.trace.rate.shape[1]),
        missing_dataset=[str(c) for c in data.client_ids[~np.asarray(data.has_dataset)]],
        load_s=time.perf_counter() - t0,
    )
    return data, report


def _spool_dir(candidates: list[Path]) -> Path | None:
    """Where the parse can keep its temporary files: beside the first cache it can write."""
    for c in candidates:
        try:
            c.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=c.parent):
                pass
        except OSError:
            continue
        return c.parent
    return None


def _client_rows(d: SparseDist, n_rows: int, n_blocks: int) -> SparseDist:
    """The first ``n_rows`` row blocks of ``d`` (views, no copy)."""
    end = n_rows * n_blocks
    if d.n_rows == end:
        return d
    stop = int(d.offsets[end])
    return SparseDist(d.offsets[:end + 1], d.values[:stop], d.cum[:stop])


def pool_from_data(data: ServeGenData, *, missing: str = "borrow",
                   report: dict[str, object] | None = None) -> ClientPool:
    """A :class:`ClientPool` from parsed data; clients without a dataset file are dropped or
    borrow the pool's aggregate length distributions (request-weighted mix, per 6-hour block)."""
    if missing not in MISSING_POLICIES:
        raise UserError(f"missing={missing!r} is unknown; use one of {', '.join(MISSING_POLICIES)}")
    report = dict(report or {})
    tr, nb = data.trace, data.n_blocks
    n_clients, n_windows = tr.rate.shape
    block = _block_of_windows(tr, nb)
    has = np.asarray(data.has_dataset, dtype=bool)
    keep = np.arange(n_clients) if missing == "borrow" else np.flatnonzero(has)
    fields = {name: _client_rows(d, n_clients, nb) for name, d in data.fields.items()}
    len_row = np.arange(n_clients, dtype=np.int64)
    n_rows = n_clients
    borrowed: tuple[str, ...] = ()
    if missing == "borrow" and not has.all():
        if data.borrow_row:
            fields = dict(data.fields)
        else:
            # One extra row: the request-weighted mix of all clients with data, per block.
            req_block = _requests_per_block(tr, nb)
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

    def rows(a: np.ndarray) -> np.ndarray:
        return a if len(keep) == n_clients else a[keep]  # all clients kept: no copy

    return ClientPool(
        name=data.name,
        kind=data.kind,
        client_ids=rows(data.client_ids),
        window_start=tr.window_start.astype(np.float64),
        window_dur=np.full(n_windows, WINDOW_S),
        rates=rows(tr.rate),
        cvs=rows(tr.cv),
        pattern=rows(tr.pattern),
        shape=rows(tr.shape),
        scale=rows(tr.scale),
        lengths=LengthTable(fields, n_rows, nb),
        len_row=len_row[keep],
        block=block,
        borrowed=borrowed,
        report=report,
    )


def load_pool(path: str | Path, *, missing: str = "borrow", cache: bool = True,
              cache_dir: str | Path | None = None) -> ClientPool:
    """Load a ServeGen pool directory as a :class:`ClientPool` (cached; see the module doc).

    A file (not a directory) is read as a pool in our own format (``profiles.load_pool_file``).
    ``pool.report`` says where it came from, whether the cache was used, and which clients had a
    trace but no dataset file (``missing_dataset``) and what was done with them.
    """
    if Path(path).is_file():  # our own pool format (slobench fit -o, a saved profile)
        from slobench.workload.profiles import load_pool_file

        return load_pool_file(path)
    data, report = read_servegen(path, cache=cache, cache_dir=cache_dir)
    return pool_from_data(data, missing=missing, report=report)
