"""Built-in workload profiles: small client pools shipped inside the package.

Each profile is a :class:`~slobench.workload.pool.ClientPool` derived from the public ServeGen
production statistics (alibaba/ServeGen, Apache License 2.0; "ServeGen: Workload Characterization
and Generation of Large Language Model Serving in Production", arXiv 2505.09999), reduced so that
it ships in the wheel (see ``profiles/README.md`` and ``docs/profiles.md``):

- one representative day of 600 s windows (the day whose mean rate is the median of the days);
- the clients with the most requests covering ``cover`` of the day's traffic are kept as they
  are; all the others are merged into one client ``<pool>/other`` whose rate is their summed rate
  and whose inter-arrival CV is their rate-weighted mean CV, so the aggregate rate and the
  rate-weighted CV are unchanged; its lengths are their request-weighted mixture;
- length distributions are quantized: token counts exact up to 128, above that on a geometric
  grid of ``rel`` relative width (each bin at its probability-weighted mean); ratios on a 0.01
  grid; probabilities renormalized; fields the generator does not use (audio, video) dropped.

Profiles are ``.npz`` files read with ``allow_pickle=False``: numbers only, nothing executed.
``fidelity(profile, source)`` compares a profile with the source span it came from; the build
script (``scripts/build_profiles.py``) and the tests use it with the tolerances in ``TOLERANCES``.
"""

from __future__ import annotations

import itertools
import json
import math
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa

from slobench.errors import UserError
from slobench.workload.pool import (
    BLOCK_S,
    PATTERN_GAMMA,
    ClientPool,
    LengthTable,
    SparseDist,
    mix_rows,
)

PROFILE_DIR = Path(__file__).with_name("profiles")
FORMAT_VERSION = 1
DAY_S = 86400.0

# What each built-in profile is made from (pool directory relative to the ServeGen data root).
SPECS: dict[str, dict[str, object]] = {
    "language": {"source": "language/m-large", "cover": 0.90, "max_clients": 40,
                 "about": "general chat/completion traffic of a large language model"},
    "language-small": {"source": "language/m-small", "cover": 0.95, "max_clients": 20,
                       "about": "high-volume traffic of a small language model"},
    "reasoning": {"source": "reason/deepseek-r1", "cover": 0.90, "max_clients": 30,
                  "about": "DeepSeek-R1 reasoning traffic (reasoning_tokens, bimodal outputs)"},
    "multimodal": {"source": "multimodal/mm-image", "cover": 0.95, "max_clients": 20,
                   "about": "image+text requests (image_tokens per image)"},
}
FIELDS = {
    "language": ("input_tokens", "output_tokens"),
    "reason": ("input_tokens", "output_tokens", "reason_ratio"),
    "multimodal": ("text_tokens", "image_tokens", "image_count", "output_tokens"),
}
RATIO_FIELDS = ("reason_ratio",)
COUNT_FIELDS = ("image_count",)
EXACT_BELOW = 128
REL_BIN = 0.02
RATIO_STEP = 0.01

# Profile vs its source span (all clients, same day): what the tests and the build script check.
TOLERANCES = {
    "mean_rate_rel": 0.001,  # time-averaged aggregate rate
    "window_rate_rel": 0.001,  # every 600 s window's aggregate rate
    "cv_rel": 0.001,  # rate-weighted mean inter-arrival CV
    "length_mean_rel": 0.02,  # mean of each length field (aggregate mix)
    "length_pct_rel": 0.03,  # p50, p90, p99 of each token field
    "ratio_pct_abs": 0.01,  # p50, p90, p99 of reason_ratio (absolute)
    "ks": 0.04,  # sup |CDF difference| of each field's aggregate mix (values moved in their bin)
    "ks_binned": 1e-4,  # the same at the bins' edges: no mass moved across a bin
}


# ---------------------------------------------------------------------------------------------
# Loading


def profile_names() -> list[str]:
    """The names of the built-in profiles, sorted."""
    if not PROFILE_DIR.is_dir():
        return []
    return sorted(p.name.removesuffix(".npz") for p in PROFILE_DIR.glob("*.npz"))


def _path(name: str) -> Path:
    names = profile_names()
    if not isinstance(name, str) or name not in names:
        raise UserError(f"--profile {name!r} is not a built-in profile; use one of "
                        f"{', '.join(names) or '(none installed)'}")
    return PROFILE_DIR / f"{name}.npz"


def profile_info(name: str) -> dict[str, object]:
    """The metadata stored with a profile: source, reductions, fidelity figures."""
    with np.load(_path(name), allow_pickle=False) as z:
        return json.loads(str(z["meta"]))


@lru_cache(maxsize=8)
def load_profile(name: str) -> ClientPool:
    """The built-in profile ``name`` as a :class:`ClientPool` (no data directory needed)."""
    return _load_npz(_path(name), f"profile {name}", name,
                     "reinstall slobench")


def load_pool_file(path: str | Path) -> ClientPool:
    """A pool saved in our own format (``save_profile``; e.g. by ``slobench fit``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such pool file; give a .npz pool (slobench fit -o) or a "
                        "ServeGen pool directory")
    return _load_npz(path, f"pool {path}", path.name.removesuffix(".npz"),
                     "write it again with slobench fit")


def _load_npz(path: Path, label: str, name: str, fix: str) -> ClientPool:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT_VERSION:
                raise UserError(f"{label}: format {meta.get('format')} is not "
                                f"{FORMAT_VERSION}; {fix}")
            fields = {}
            for f in meta["fields"]:
                offsets = z[f"field.{f}.offsets"].astype(np.int64)
                probs = z[f"field.{f}.probs"].astype(np.float64)
                values = z[f"field.{f}.values"].astype(np.float64)
                fields[f] = SparseDist(offsets, values, _cum(probs, offsets))
            f64 = {k: z[k].astype(np.float64) for k in ("rates", "cvs", "shape", "scale",
                                                         "window_start", "window_dur")}
            report: dict[str, object] = {"source": label, "derived_from": meta.get("source")}
            if path.parent == PROFILE_DIR:
                report["profile"] = name
            for k in ("fit", "sessions"):  # a fitted pool's facts travel with it
                if k in meta:
                    report[k] = meta[k]
            return ClientPool(
                name=meta.get("name") or name, kind=meta["kind"],
                client_ids=z["client_ids"].astype(str),
                window_start=f64["window_start"], window_dur=f64["window_dur"],
                rates=f64["rates"], cvs=f64["cvs"], pattern=z["pattern"].astype(np.int8),
                shape=f64["shape"], scale=f64["scale"],
                lengths=LengthTable(fields, int(meta["n_rows"]), int(meta["n_blocks"]),
                                    float(meta.get("block_s", BLOCK_S))),
                len_row=z["len_row"].astype(np.int64), block=z["block"].astype(np.int64),
                borrowed=tuple(meta.get("borrowed", ())),
                report=report,
            )
    except (OSError, ValueError, KeyError, json.JSONDecodeError, EOFError,
            zipfile.BadZipFile) as exc:
        raise UserError(f"{label}: {path} is damaged or not a pool file ({exc}); {fix}"
                        ) from None


def _cum(probs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return SparseDist.from_rows(
        [(np.zeros(b - a), probs[a:b]) for a, b in itertools.pairwise(offsets)]
    ).cum


# ---------------------------------------------------------------------------------------------
# Building (used by scripts/build_profiles.py; needs the ServeGen data)


def representative_day(pool: ClientPool) -> int:
    """The day (0-based) whose mean aggregate rate is the median of the full days' means."""
    per_day = round(DAY_S / float(np.median(pool.window_dur)))
    days = pool.n_windows // per_day
    if days <= 1:
        return 0
    means = pool.aggregate_rate()[: days * per_day].reshape(days, per_day).mean(axis=1)
    return int(np.argmin(np.abs(means - np.median(means))))


def _bin_key(values: np.ndarray, kind: str) -> np.ndarray:
    """The quantization bin of each value (see the module doc)."""
    if kind == "ratio":
        return np.rint(values / RATIO_STEP).astype(np.int64)
    if kind == "count":
        return np.rint(values).astype(np.int64)
    v = np.maximum(values, 0.0)
    return np.where(v <= EXACT_BELOW, np.rint(v),
                    EXACT_BELOW + 1 + np.floor(np.log(np.maximum(v, 1) / EXACT_BELOW)
                                               / math.log1p(REL_BIN))).astype(np.int64)


def quantize(values: np.ndarray, probs: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """One distribution on its essential support: see the module doc; probabilities sum to 1."""
    values, probs = np.asarray(values, np.float64), np.asarray(probs, np.float64)
    keep = probs > 0
    values, probs = values[keep], probs[keep]
    if len(values) == 0:
        return values, probs
    key = _bin_key(values, kind)
    uk, inv = np.unique(key, return_inverse=True)
    p = np.bincount(inv, weights=probs, minlength=len(uk))
    mean = np.bincount(inv, weights=probs * values, minlength=len(uk)) / p
    rep = np.round(mean, 4) if kind == "ratio" else np.rint(mean)
    return rep, p / p.sum()


def build_profile(source: ClientPool, name: str, *, cover: float = 0.9,
                  max_clients: int = 40) -> tuple[ClientPool, dict[str, object]]:
    """Reduce ``source`` (already cut to the span to keep) → (profile pool, reduction facts)."""
    kind = source.kind
    vol = source.requests().sum(axis=1)
    order = np.argsort(-vol, kind="stable")
    share = np.cumsum(vol[order]) / vol.sum()
    k = min(int(np.searchsorted(share, cover)) + 1, max_clients, source.n_clients)
    top = np.sort(order[:k])
    rest = np.sort(order[k:])
    rest = rest[vol[rest] > 0]
    blocks = np.unique(source.block)
    new_block = np.searchsorted(blocks, source.block)
    nb_src, nb = source.lengths.n_blocks, len(blocks)
    src_rows = np.unique(source.len_row[top])
    new_len_row = np.searchsorted(src_rows, source.len_row[top])
    n_rows = len(src_rows) + (1 if len(rest) else 0)
    fields: dict[str, SparseDist] = {}
    for f in FIELDS[kind]:
        d = source.lengths.fields[f]
        qkind = _qkind(f)
        rows = []
        for r in src_rows:
            for b in blocks:
                rows.append(quantize(*d.row(int(r * nb_src + b)), qkind))
        if len(rest):
            req = source.requests()
            for j, b in enumerate(blocks):
                w = np.flatnonzero(new_block == j)
                rr = source.lengths.row_index(source.len_row[rest], np.full(len(rest), b))
                rows.append(quantize(*mix_rows(d, rr, req[rest][:, w].sum(axis=1) + 1e-12),
                                     qkind))
        fields[f] = SparseDist.from_rows(rows)
    mats = {a: np.asarray(getattr(source, a))[top] for a in ("rates", "cvs", "pattern", "shape",
                                                              "scale")}
    ids = [str(c) for c in source.client_ids[top]]
    len_row = new_len_row
    if len(rest):
        r = source.rates[rest].sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            cv = np.where(r > 0, (source.rates[rest] * source.cvs[rest]).sum(axis=0) / r, 0.0)
            shp = np.where(r > 0, 1.0 / np.maximum(cv, 1e-3) ** 2, 0.0)
            scl = np.where(r > 0, 1.0 / (np.maximum(r, 1e-300) * np.maximum(shp, 1e-300)), 0.0)
        mats["rates"] = np.vstack([mats["rates"], r])
        mats["cvs"] = np.vstack([mats["cvs"], cv])
        mats["pattern"] = np.vstack([mats["pattern"],
                                     np.where(r > 0, PATTERN_GAMMA, 0).astype(np.int8)])
        mats["shape"] = np.vstack([mats["shape"], shp])
        mats["scale"] = np.vstack([mats["scale"], scl])
        prefix = str(source.client_ids[0]).rsplit("/", 1)[0]
        ids.append(f"{prefix}/other")
        len_row = np.concatenate([new_len_row, [len(src_rows)]])
    start = source.window_start - source.window_start[0]
    profile = ClientPool(
        name=name, kind=kind, client_ids=np.array(ids), window_start=start,
        window_dur=source.window_dur, rates=mats["rates"], cvs=mats["cvs"],
        pattern=mats["pattern"], shape=mats["shape"], scale=mats["scale"],
        lengths=LengthTable(fields, n_rows, nb), len_row=len_row, block=new_block,
        borrowed=tuple(c for c in source.borrowed if c in set(ids)),
    )
    facts = {
        "clients_source": int(source.n_clients),
        "clients_kept": int(k),
        "clients_merged_into_other": len(rest),
        "kept_share_of_requests": float(vol[top].sum() / vol.sum()),
        "windows": int(source.n_windows),
        "source_span_s": [float(source.window_start[0]), float(source.end_s)],
    }
    return profile, facts


def save_profile(profile: ClientPool, path: str | Path, meta: dict[str, object], *,
                 extra: dict[str, np.ndarray] | None = None) -> int:
    """Write ``profile`` as a compressed ``.npz`` (numbers and strings only); returns its size.
    ``extra``: more arrays to store beside it (the loader ignores them)."""
    arrays: dict[str, np.ndarray] = {
        "client_ids": np.asarray(profile.client_ids, dtype=str),
        "window_start": profile.window_start.astype(np.float64),
        "window_dur": profile.window_dur.astype(np.float64),
        "rates": profile.rates.astype(np.float32),
        "cvs": profile.cvs.astype(np.float32),
        "pattern": profile.pattern.astype(np.int8),
        "shape": profile.shape.astype(np.float32),
        "scale": profile.scale.astype(np.float32),
        "len_row": profile.len_row.astype(np.int32),
        "block": profile.block.astype(np.int16 if profile.lengths.n_blocks < 1 << 15
                                      else np.int32),
    }
    for f, d in profile.lengths.fields.items():
        arrays[f"field.{f}.offsets"] = d.offsets.astype(np.int32)
        arrays[f"field.{f}.values"] = d.values.astype(np.float32)
        arrays[f"field.{f}.probs"] = d.probs().astype(np.float32)
    full = {"format": FORMAT_VERSION, "name": profile.name, "kind": profile.kind,
            "fields": sorted(profile.lengths.fields), "n_rows": profile.lengths.n_rows,
            "n_blocks": profile.lengths.n_blocks, "borrowed": list(profile.borrowed), **meta}
    arrays.update(extra or {})
    arrays["meta"] = np.array(json.dumps(full, sort_keys=True))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path.stat().st_size


# ---------------------------------------------------------------------------------------------
# Fidelity


def _cdf_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    grid = np.union1d(a[0], b[0])

    def cdf(v: np.ndarray, p: np.ndarray) -> np.ndarray:
        o = np.argsort(v)
        c = np.cumsum(p[o])
        i = np.searchsorted(v[o], grid, side="right") - 1
        return np.where(i >= 0, c[np.maximum(i, 0)], 0.0)

    return float(np.max(np.abs(cdf(*a) - cdf(*b)))) if len(grid) else 0.0


def _rel(x: float, ref: float) -> float:
    return abs(x - ref) / abs(ref) if ref else abs(x - ref)


def _weighted_cv(p: ClientPool) -> float:
    req = p.requests()
    return float((req * p.cvs).sum() / req.sum())


def fidelity(profile: ClientPool, source: ClientPool) -> dict[str, object]:
    """Profile vs its source span: errors per figure and whether each is within ``TOLERANCES``.

    ``source`` must be the same span (same windows) with all its clients.
    """
    src_agg, prof_agg = source.aggregate_rate(), profile.aggregate_rate()
    active = src_agg > 0
    figures: dict[str, object] = {
        "mean_rate": [profile.mean_rate(), source.mean_rate()],
        "mean_rate_rel": _rel(profile.mean_rate(), source.mean_rate()),
        "window_rate_rel": float(np.max(np.abs(prof_agg[active] - src_agg[active])
                                        / src_agg[active])) if active.any() else 0.0,
        "cv": [_weighted_cv(profile), _weighted_cv(source)],
        "cv_rel": _rel(_weighted_cv(profile), _weighted_cv(source)),
        "lengths": {},
    }
    ok = all(figures[k] <= TOLERANCES[k] for k in ("mean_rate_rel", "window_rate_rel", "cv_rel"))
    ps, ss = profile.summary(), source.summary()
    for f in profile.lengths.fields:
        a, b = ps["lengths"][f], ss["lengths"][f]
        entry: dict[str, object] = {"profile": a, "source": b}
        entry["mean_rel"] = _rel(a["mean"], b["mean"])
        ok &= entry["mean_rel"] <= TOLERANCES["length_mean_rel"]
        for q in ("p50", "p90", "p99"):
            if f in RATIO_FIELDS:
                entry[f"{q}_abs"] = abs(a[q] - b[q])
                ok &= entry[f"{q}_abs"] <= TOLERANCES["ratio_pct_abs"]
            elif f in COUNT_FIELDS:
                entry[f"{q}_abs"] = abs(a[q] - b[q])
                ok &= entry[f"{q}_abs"] == 0
            else:
                entry[f"{q}_rel"] = _rel(a[q], b[q])
                ok &= entry[f"{q}_rel"] <= TOLERANCES["length_pct_rel"]
        pm, sm = profile.length_mix(f), source.length_mix(f)
        # The grid moves values within their bin (what ``ks`` sees); ``ks_binned`` compares the
        # CDFs at the bins' edges, where only merging or truncation could make a difference.
        entry["ks"] = _cdf_distance(pm, sm)
        entry["ks_binned"] = _binned_ks(pm, sm, _qkind(f))
        ok &= entry["ks"] <= TOLERANCES["ks"] and entry["ks_binned"] <= TOLERANCES["ks_binned"]
        figures["lengths"][f] = entry  # type: ignore[index]
    figures["ok"] = bool(ok)
    return figures


def _binned_ks(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
               kind: str) -> float:
    """sup |CDF difference| at the quantization bins' edges."""
    ka, kb = _bin_key(a[0], kind), _bin_key(b[0], kind)
    keys = np.union1d(ka, kb)
    ma = np.bincount(np.searchsorted(keys, ka), weights=a[1], minlength=len(keys))
    mb = np.bincount(np.searchsorted(keys, kb), weights=b[1], minlength=len(keys))
    return float(np.max(np.abs(np.cumsum(ma) - np.cumsum(mb)))) if len(keys) else 0.0


def _qkind(f: str) -> str:
    return "ratio" if f in RATIO_FIELDS else "count" if f in COUNT_FIELDS else "tokens"


# ---------------------------------------------------------------------------------------------
# Workloads from a profile (for ``run --profile`` and ``simulate --profile``)


def profile_workload(name: str, *, rate: str | float | None, duration_s: float | None,
                     requests: int | None, seed: int = 0, mode: str = "renewal") -> pa.Table:
    """A Workload table from a built-in profile: over ``duration_s``, or the first ``requests``
    requests (the duration is then estimated from the rate and extended if needed)."""
    from slobench.workload.generate import generate_workload, resolve_rate

    pool = load_profile(name)
    if duration_s is not None:
        table = generate_workload(pool, duration_s, rate=rate, mode=mode, seed=seed)
        return table.slice(0, requests) if requests is not None else table
    if requests is None:
        raise UserError("give a duration or a number of requests for the profile workload")
    probe = 3600.0
    mean = float(resolve_rate(pool, rate, probe).integral(probe)) / probe
    if not mean > 0:
        raise UserError(f"--rate {rate!r} gives no traffic with profile {name}")
    dur = requests / mean * 1.2 + 60.0
    for _ in range(6):
        table = generate_workload(pool, dur, rate=rate, mode=mode, seed=seed)
        if table.num_rows >= requests:
            return table.slice(0, requests)
        dur *= 2
    return table
