"""ServeGen pool reading (safe parsing, errors with file:line, cache) and ClientPool views."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from slobench.errors import UserError
from slobench.workload.pool import ClientPool
from slobench.workload.servegen import load_pool, parse_distribution, read_servegen

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "servegen"


def write_pool(
    root: Path,
    rates: list[list[float]],
    *,
    cv: float = 2.0,
    pattern: str = "Gamma",
    kind: str = "language",
    missing: tuple[int, ...] = (),
    support: int = 50,
) -> Path:
    """A pool with one client per row of ``rates`` (req/s per 600 s window)."""
    root.mkdir(parents=True, exist_ok=True)
    n_windows = len(rates[0])
    n_blocks = max(1, -(-n_windows * 600 // 21600))
    for c, row in enumerate(rates):
        lines = []
        for w, r in enumerate(row):
            if r > 0:
                shape = 1 / cv**2
                lines.append(f"{w * 600},{r},{cv},{pattern},{shape},{1 / (r * shape)}")
            else:
                lines.append(f"{w * 600},0,0,,0,0")
        (root / f"chunk-{c}-trace.csv").write_text("\n".join(lines) + "\n")
        if c in missing:
            continue
        blocks = {}
        for b in range(n_blocks):
            lo = 100 * (c + 1) + 10 * b
            vals = np.arange(lo, lo + support)
            p = np.linspace(1, 2, support)
            p /= p.sum()
            d = {"input_tokens": "{" + ", ".join(f"{v}: {q}" for v, q in zip(vals, p,
                                                                              strict=True)) + "}",
                 "output_tokens": "{" + ", ".join(f"{v // 2}: {q}" for v, q in zip(
                     vals, p, strict=True)) + "}"}
            if kind == "reason":
                d["reason_ratio"] = "{0.0: 0.0, 0.25: 0.5, 0.75: 0.5}"
            if kind == "multimodal":
                d = {"text_tokens": d["input_tokens"], "output_tokens": d["output_tokens"],
                     "image_count": "{0: 0.2, 1: 0.5, 3: 0.3}",
                     "image_tokens": "{100: 0.5, 1200: 0.5}", "audio_tokens": "{0: 1.0}"}
            blocks[str(b * 21600)] = d
        (root / f"chunk-{c}-dataset.json").write_text(json.dumps(blocks, indent=2))
    return root


def test_parse_distribution_numbers_only():
    v, p = parse_distribution("{224: 0.25, 225: 0.5, 1e3: 2.5e-1,}")
    assert v.tolist() == [224, 225, 1000] and p.tolist() == [0.25, 0.5, 0.25]
    v, p = parse_distribution("{}")
    assert len(v) == 0 and len(p) == 0
    v, _ = parse_distribution("{0.0: 0.0, 0.001996: 1.0}")
    assert v.tolist() == [0.0, 0.001996]
    for bad in ["{1: 0.5, 2: __import__('os').system('true')}", "[1, 2]", "{1: 2: 3}",
                "{1: -0.5}", "{1: 0.5} + {2: 0.5}", "{nan: 1}", "{1 2}"]:
        with pytest.raises(UserError):
            parse_distribution(bad)


def test_code_in_data_is_rejected_naming_the_file(tmp_path, monkeypatch):
    pool = write_pool(tmp_path / "p", [[1.0, 2.0]])
    f = pool / "chunk-0-dataset.json"
    data = json.loads(f.read_text())
    marker = tmp_path / "pwned"
    data["0"]["output_tokens"] = f"{{1: __import__('pathlib').Path('{marker}').touch()}}"
    f.write_text(json.dumps(data, indent=2))
    with pytest.raises(UserError) as exc:
        load_pool(pool, cache=False)
    msg = str(exc.value)
    assert "chunk-0-dataset.json:" in msg and "output_tokens" in msg
    assert "nothing is evaluated" in msg
    line = int(msg.split("chunk-0-dataset.json:")[1].split()[0])
    assert "__import__" in f.read_text().splitlines()[line - 1]
    assert not marker.exists()


@pytest.mark.parametrize(
    ("row", "expect"),
    [
        ("1200,1.0,2.0,Gamma,0.25", "expected 6"),
        ("1200,abc,2.0,Gamma,0.25,4", "not a number"),
        ("1200,1.0,2.0,Pareto,0.25,4", "pattern"),
        ("1200,-1.0,2.0,Gamma,0.25,4", ">= 0"),
        ("1800,1.0,2.0,Gamma,0.25,4", "window starts"),
        ("1200,1.0,2.0,,0,0", "needs a pattern"),
    ],
)
def test_malformed_trace_names_file_and_line(tmp_path, row, expect):
    pool = write_pool(tmp_path / "p", [[1.0, 1.0, 1.0, 1.0]])
    f = pool / "chunk-0-trace.csv"
    lines = f.read_text().splitlines()
    lines[2] = row
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as exc:
        load_pool(pool, cache=False)
    assert "chunk-0-trace.csv:3" in str(exc.value) and expect in str(exc.value)


def test_empty_and_bad_json_files(tmp_path):
    pool = write_pool(tmp_path / "p", [[1.0, 1.0]])
    (pool / "chunk-0-trace.csv").write_text("")
    with pytest.raises(UserError, match=r"chunk-0-trace.csv:1: the trace file is empty"):
        load_pool(pool, cache=False)
    pool = write_pool(tmp_path / "q", [[1.0, 1.0]])
    (pool / "chunk-0-dataset.json").write_text('{\n  "0": {\n    "input_tokens": "{1: 1.0}"\n,')
    with pytest.raises(UserError, match=r"chunk-0-dataset.json:4: invalid JSON"):
        load_pool(pool, cache=False)
    (pool / "chunk-0-dataset.json").write_text("")
    with pytest.raises(UserError, match=r"chunk-0-dataset.json:1: the dataset file is empty"):
        load_pool(pool, cache=False)
    (pool / "chunk-0-dataset.json").write_text('{\n"5": {"input_tokens": "{1: 1.0}"}}')
    with pytest.raises(UserError, match=r"chunk-0-dataset.json:2: block key '5'"):
        load_pool(pool, cache=False)


def test_cache_hit_is_fast_equal_and_invalidated(tmp_path):
    rng = np.random.default_rng(0)
    pool_dir = write_pool(tmp_path / "p", rng.uniform(0, 5, size=(4, 144)).tolist(),
                          support=20000)
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    a, ra = read_servegen(pool_dir, cache_dir=cache)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    b, rb = read_servegen(pool_dir, cache_dir=cache)
    second = time.perf_counter() - t0
    assert ra["cache"] == "written" and rb["cache"] == "hit"
    assert second < first / 5, (first, second)
    np.testing.assert_array_equal(a.trace.rate, b.trace.rate)
    for name in a.fields:
        np.testing.assert_array_equal(a.fields[name].cum, b.fields[name].cum)
        np.testing.assert_array_equal(a.fields[name].values, b.fields[name].values)
    # Changing a source file invalidates the cache.
    f = pool_dir / "chunk-3-trace.csv"
    f.write_text(f.read_text().replace(",", ",", 1).replace("\n0,", "\n0,", 1))
    lines = f.read_text().splitlines()
    lines[0] = "0,9.5,2.0,Gamma,0.25,0.42"
    f.write_text("\n".join(lines) + "\n")
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    c, rc = read_servegen(pool_dir, cache_dir=cache)
    assert rc["cache"] == "written" and c.trace.rate[3, 0] == 9.5


def test_default_cache_beside_source_and_fallback(tmp_path, monkeypatch):
    pool_dir = write_pool(tmp_path / "p", [[1.0, 2.0]])
    _, r = read_servegen(pool_dir)
    assert r["cache_path"] == str(pool_dir / ".slobench-cache.npz")
    if os.geteuid() == 0:
        return  # root can write into a read-only directory; the fallback is not observable
    other = write_pool(tmp_path / "ro", [[1.0, 2.0]])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    other.chmod(0o555)
    try:
        _, r = read_servegen(other)
        assert r["cache"] == "written" and str(tmp_path / "xdg") in r["cache_path"]
        _, r = read_servegen(other)
        assert r["cache"] == "hit"
    finally:
        other.chmod(0o755)


def test_missing_dataset_drop_or_borrow(tmp_path):
    pool_dir = write_pool(tmp_path / "p", [[1.0, 2.0], [3.0, 0.0], [1.0, 1.0]], missing=(1,))
    dropped = load_pool(pool_dir, missing="drop", cache=False)
    assert dropped.client_ids.tolist() == ["p/0", "p/2"]
    assert dropped.report["missing_dataset"] == ["p/1"] and dropped.report["dropped"] == ["p/1"]
    borrowed = load_pool(pool_dir, missing="borrow", cache=False)
    assert borrowed.n_clients == 3 and borrowed.borrowed == ("p/1",)
    # The borrowed row is the request-weighted mix of clients 0 and 2 (values 100.. and 300..).
    vals, _ = borrowed.length_mix("input_tokens", clients=np.array([1]))
    assert set(vals.astype(int)) == set(range(100, 150)) | set(range(300, 350))
    with pytest.raises(UserError, match="drop, borrow"):
        load_pool(pool_dir, missing="ignore", cache=False)


def small_pool(tmp_path: Path) -> ClientPool:
    return load_pool(write_pool(tmp_path / "p", [[1.0, 2.0, 3.0, 4.0], [10.0, 0.0, 10.0, 10.0],
                                                 [0.5, 0.5, 0.5, 0.5]]), cache=False)


def test_views_are_immutable_and_new(tmp_path):
    pool = small_pool(tmp_path)
    for arr in (pool.rates, pool.cvs, pool.window_start, pool.client_ids,
                pool.lengths.fields["input_tokens"].values):
        with pytest.raises(ValueError):
            arr.flat[0] = arr.flat[0]
    top = pool.top_k(1)
    assert top.client_ids.tolist() == ["p/1"] and pool.n_clients == 3
    with pytest.raises(ValueError):
        top.rates[0, 0] = 5.0
    assert pool.rates[0, 0] == 1.0


def test_span_with_partial_windows(tmp_path):
    pool = small_pool(tmp_path)
    s = pool.span(300, 1500)
    assert s.window_start.tolist() == [300, 600, 1200]
    assert s.window_dur.tolist() == [300, 600, 300]
    np.testing.assert_allclose(s.requests()[0], [300.0, 1200.0, 900.0])
    assert s.duration_s == 1200 and pool.duration_s == 2400
    assert s.mean_rate() == pytest.approx((300 * 11.5 + 600 * 2.5 + 300 * 13.5) / 1200)
    with pytest.raises(UserError, match="outside"):
        pool.span(5000, 6000)
    with pytest.raises(UserError, match="empty"):
        pool.span(10, 10)


def test_filters_and_summary(tmp_path):
    pool = small_pool(tmp_path)
    assert pool.filter(min_rate=1.0).client_ids.tolist() == ["p/0", "p/1"]
    assert pool.filter(max_rate=1.0).client_ids.tolist() == ["p/2"]
    assert pool.filter(max_mean_input=200).client_ids.tolist() == ["p/0"]
    assert pool.filter(min_cv=1.5, max_cv=2.5).n_clients == 3
    with pytest.raises(UserError, match="no client"):
        pool.filter(min_rate=1e9)
    s = pool.summary()
    text = json.dumps(s)
    assert "client_share" in text
    assert s["client_share"]["p/1"] == pytest.approx(30 / (10 + 30 + 2))
    assert s["rate_over_time"]["rate_rps"] == [11.5, 2.5, 13.5, 14.5]
    assert 100 <= s["lengths"]["input_tokens"]["p50"] <= 360


@pytest.mark.skipif(not (REAL / "language" / "m-small").is_dir(), reason="no ServeGen data")
def test_real_pools_load(tmp_path):
    pool = load_pool(REAL / "language" / "m-small", cache_dir=tmp_path)
    assert pool.n_clients == 43 and pool.n_windows == 2016
    assert len(pool.report["missing_dataset"]) == 5
    assert pool.mean_rate() == pytest.approx(1174, rel=0.01)
    again = load_pool(REAL / "language" / "m-small", cache_dir=tmp_path)
    assert again.report["cache"] == "hit"
    json.dumps(pool.span(0, 3600).summary())


@pytest.mark.parametrize("text", ["{1 2: 3}", "{1: 2 3: 4}", "{1: 2,, 3: 4}", "{, 1: 2}",
                                  "{1:2}{3:4}", '{__import__("os")}', "{1: 2, 3}", "{1e: 2}",
                                  "{: 1}", "{1: --2}", "{,}", "1: 2", "{1: 2}, 3"])
def test_malformed_distribution_structures_are_refused(text):
    with pytest.raises(UserError, match="nothing is evaluated"):
        parse_distribution(text, source="f.json:3")
