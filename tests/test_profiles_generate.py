"""Built-in profiles (shipped, small, faithful to ServeGen) and ``slobench generate``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from slobench.errors import UserError
from slobench.workload.generate import generate_workload
from slobench.workload.profiles import (
    PROFILE_DIR,
    SPECS,
    TOLERANCES,
    fidelity,
    load_profile,
    profile_info,
    profile_names,
    representative_day,
)

DATA = Path(os.environ.get("SLOBENCH_SERVEGEN_DATA", "/work/shared/data/servegen"))
SLOBENCH = [sys.executable, "-m", "slobench"]
MAX_BYTES = 400_000  # each profile; the brief's budget is "well under 1 MB"


def slobench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLOBENCH_SERVEGEN_DATA": "/nonexistent"}
    return subprocess.run([*SLOBENCH, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env, stdin=subprocess.DEVNULL)


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


# --- profiles -------------------------------------------------------------------------------


def test_profiles_are_installed_small_and_credited() -> None:
    names = profile_names()
    assert {"language", "reasoning", "multimodal"} <= set(names)
    assert set(names) == set(SPECS)
    for name in names:
        size = (PROFILE_DIR / f"{name}.npz").stat().st_size
        assert size < MAX_BYTES, (name, size)
    notice = (PROFILE_DIR / "NOTICE").read_text()
    assert "alibaba/ServeGen" in notice and "2505.09999" in notice and "Apache" in notice
    assert "Apache License" in (PROFILE_DIR / "LICENSE").read_text()
    assert "ServeGen" in (PROFILE_DIR / "README.md").read_text()


@pytest.mark.parametrize("name", ["language", "language-small", "reasoning", "multimodal"])
def test_profile_loads_without_data(name: str) -> None:
    pool = load_profile(name)
    kind = {"language": "language", "language-small": "language", "reasoning": "reason",
            "multimodal": "multimodal"}[name]
    assert pool.kind == kind
    assert pool.n_windows == 144 and pool.duration_s == 86400
    assert pool.mean_rate() > 0
    assert pool.rates.flags.writeable is False
    info = profile_info(name)
    assert info["fidelity"]["ok"] is True
    assert "ServeGen" in info["credit"]
    t = generate_workload(pool, 120.0, seed=1)
    assert t.num_rows > 0
    assert np.all(np.diff(t["arrival_s"].to_numpy()) >= 0)
    if kind == "reason":
        assert t["reasoning_tokens"].to_numpy().sum() > 0
    if kind == "multimodal":
        assert sum(len(x) for x in t["image_tokens"].to_pylist()) > 0


def test_unknown_profile_lists_names() -> None:
    with pytest.raises(UserError, match=r"language.*multimodal.*reasoning"):
        load_profile("nope")


def test_profile_npz_is_plain_numbers() -> None:
    # allow_pickle=False must be enough to read every array
    for name in profile_names():
        with np.load(PROFILE_DIR / f"{name}.npz", allow_pickle=False) as z:
            for k in z.files:
                assert z[k].dtype != object


@pytest.mark.skipif(not (DATA / "reason").is_dir(), reason="ServeGen data directory absent")
@pytest.mark.parametrize("name", ["reasoning", "multimodal", "language-small", "language"])
def test_profile_matches_its_source(name: str) -> None:
    from slobench.workload.servegen import load_pool

    src = load_pool(DATA / str(SPECS[name]["source"]))
    day = representative_day(src)
    assert day == profile_info(name)["day"]
    src = src.span(day * 86400.0, (day + 1) * 86400.0)
    fid = fidelity(load_profile(name), src)
    assert fid["mean_rate_rel"] <= TOLERANCES["mean_rate_rel"]
    assert fid["window_rate_rel"] <= TOLERANCES["window_rate_rel"]
    assert fid["cv_rel"] <= TOLERANCES["cv_rel"]
    for f, e in fid["lengths"].items():
        assert e["mean_rel"] <= TOLERANCES["length_mean_rel"], (f, e)
        assert e["ks"] <= TOLERANCES["ks"], (f, e)
        assert e["ks_binned"] <= TOLERANCES["ks_binned"], (f, e)
        for q in ("p50", "p90", "p99"):
            if f"{q}_rel" in e:
                assert e[f"{q}_rel"] <= TOLERANCES["length_pct_rel"], (f, q, e)
            else:
                assert e[f"{q}_abs"] <= TOLERANCES["ratio_pct_abs"], (f, q, e)
    assert fid["ok"] is True


# --- slobench generate ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["language", "language-small", "reasoning", "multimodal"])
def test_generate_each_profile(tmp_path: Path, name: str) -> None:
    out = tmp_path / "w.parquet"
    proc = slobench("generate", "--profile", name, "-d", "2min", "--seed", "3", "-o", str(out),
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert all(len(ln) <= 100 for ln in proc.stdout.splitlines())
    for label in ("requests", "mean rate", "inter-arrival CV", "input tokens", "top clients"):
        assert label in proc.stdout
    t = pq.read_table(out)
    assert t.num_rows > 0 and t.column_names[:2] == ["request_id", "arrival_s"]
    arr = t["arrival_s"].to_numpy()
    assert arr.min() >= 0 and arr.max() < 120
    pool = load_profile(name)
    expected = float(pool.aggregate_rate()[0] * 120)
    assert 0.5 * expected < t.num_rows < 1.5 * expected


def test_generate_deterministic_and_rate_forms(tmp_path: Path) -> None:
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    for p in (a, b):
        proc = slobench("generate", "--profile", "reasoning", "--rate", "peak:40", "--mode",
                        "servegen", "--top-k", "5", "--start", "6h", "-d", "5min", "-q",
                        "-o", str(p), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.equals(tb)
    assert len(set(ta["client_id"].to_pylist())) <= 5
    rates = tmp_path / "rates.csv"
    rates.write_text("time_s,rate\n0,5\n60,20\n")
    proc = slobench("generate", "--profile", "language", "--rate", f"file:{rates}", "-d", "2min",
                    "-q", "-o", str(a), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    arr = pq.read_table(a)["arrival_s"].to_numpy()
    assert 150 < len(arr) < 2500
    assert (arr >= 60).sum() > 2 * (arr < 60).sum()


def test_generate_naive(tmp_path: Path) -> None:
    out = tmp_path / "n.parquet"
    proc = slobench("generate", "--profile", "multimodal", "--naive", "--rate", "20", "-d",
                    "5min", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "naive" in proc.stdout
    t = pq.read_table(out)
    assert 0.85 * 6000 < t.num_rows < 1.15 * 6000
    assert set(t["client_id"].to_pylist()) == {"naive"}
    gaps = np.diff(t["arrival_s"].to_numpy())
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.1  # Poisson


def _write_pool(d: Path) -> None:
    d.mkdir()
    rows = []
    for w in range(12):
        rows.append(f"{w * 600},{2.0 + (w % 3)},1.5,Gamma,{1 / 1.5**2},{1.5**2 / 2.0}")
    (d / "chunk-0-trace.csv").write_text("\n".join(rows) + "\n")
    (d / "chunk-1-trace.csv").write_text(
        "\n".join(f"{w * 600},1.0,0.8,Weibull,1.3,0.9" for w in range(12)) + "\n")
    ds = {"0": {"input_tokens": "{100: 0.5, 200: 0.5}", "output_tokens": "{10: 0.3, 50: 0.7}"}}
    import json

    (d / "chunk-0-dataset.json").write_text(json.dumps(ds))
    (d / "chunk-1-dataset.json").write_text(json.dumps(ds))


def test_generate_from_pool(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    _write_pool(pool)
    out = tmp_path / "p.parquet"
    proc = slobench("generate", "--pool", str(pool), "--rate", "trace*2", "-d", "30min",
                    "--app", "coding", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    t = pq.read_table(out)
    assert set(t["app"].to_pylist()) == {"coding"}
    assert set(t["input_tokens"].to_pylist()) <= {100, 200}
    assert set(t["client_id"].to_pylist()) == {"pool/0", "pool/1"}
    expected = 2 * (3.0 + 1.0) * 1800
    assert 0.8 * expected < t.num_rows < 1.2 * expected


def test_generate_synthetic(tmp_path: Path) -> None:
    out = tmp_path / "s.parquet"
    proc = slobench("generate", "--rate", "5", "--process", "gamma", "--cv", "2", "-d", "2min",
                    "--input-tokens", "300", "--apps", "coding", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    t = pq.read_table(out)
    assert set(t["input_tokens"].to_pylist()) == {300}
    assert set(t["app"].to_pylist()) == {"coding"}


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--profile", "nope"], ["nope", "language", "reasoning", "multimodal"]),
        (["--profile", "language", "--rate", "bogus"], ["--rate", "trace"]),
        (["--profile", "language", "--rate", "peak:-3"], ["peak"]),
        (["--profile", "language", "--mode", "poisson"], ["--mode", "renewal"]),
        (["--profile", "language", "--duration", "soon"], ["--duration"]),
        (["--profile", "language", "--top-k", "0"], ["top-k"]),
        (["--profile", "language", "--process", "gamma"], ["--process", "synthetic"]),
        (["--rate", "trace"], ["--profile or --pool"]),
        (["--naive"], ["--profile or --pool"]),
        (["--profile", "language", "--pool", "x"], ["not both"]),
        (["--pool", "/nonexistent/pool"], ["/nonexistent/pool"]),
        (["--profile", "language", "--rate", "file:missing.csv"], ["missing.csv"]),
    ],
)
def test_generate_bad_input_is_one_line(tmp_path: Path, args: list[str],
                                        needles: list[str]) -> None:
    proc = slobench("generate", "-d", "1min", *args, "-o", str(tmp_path / "x.parquet"),
                    cwd=tmp_path)
    one_line_error(proc, *needles)
    assert not (tmp_path / "x.parquet").exists()


def test_generate_unwritable_output(tmp_path: Path) -> None:
    one_line_error(slobench("generate", "--profile", "language", "-d", "1min", "-o",
                            str(tmp_path / "no" / "dir" / "x.parquet"), cwd=tmp_path), "-o")
    one_line_error(slobench("generate", "--profile", "language", "-d", "1min", "-o",
                            str(tmp_path), cwd=tmp_path), "directory")
    (tmp_path / "afile").write_text("")
    one_line_error(slobench("generate", "--profile", "language", "-d", "1min", "-o",
                            str(tmp_path / "afile" / "x.parquet"), cwd=tmp_path), "-o")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores mode bits
            pytest.skip("running as root: a read-only directory is still writable")
        one_line_error(slobench("generate", "--profile", "language", "-d", "1min", "-o",
                                str(ro / "x.parquet"), cwd=tmp_path), "-o")
    finally:
        ro.chmod(0o700)


def test_simulate_with_profile(tmp_path: Path) -> None:
    proc = slobench("simulate", "--profile", "reasoning", "--rate", "2", "-d", "30s", "-q",
                    "-o", str(tmp_path / "runs"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "reasoning" in proc.stdout
    one_line_error(slobench("simulate", "--profile", "nope", "-q", "-o",
                            str(tmp_path / "runs"), cwd=tmp_path), "nope")
