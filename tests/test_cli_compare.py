"""``slobench workload compare A B``: files, profiles, plots, JSON, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slobench.cli.main import app
from slobench.report import realism_plots
from slobench.schema import write_table
from slobench.workload.generate import generate_workload, naive_workload, resolve_rate
from slobench.workload.profiles import load_profile

SLOBENCH = [sys.executable, "-m", "slobench"]


def slobench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run([*SLOBENCH, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env, stdin=subprocess.DEVNULL)


def invoke(*args: str) -> tuple[int, str, str]:
    """In process (fast): exit code, stdout, stderr."""
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cmp")
    pool = load_profile("language")
    write_table(generate_workload(pool, 1500.0, seed=0), d / "real.parquet")
    # As `generate --naive`: Poisson at the mean rate the realistic workload has over the span.
    mean = float(resolve_rate(pool, None, 1500.0).integral(1500.0)) / 1500.0
    write_table(naive_workload(pool, 1500.0, seed=0, rate=mean), d / "naive.parquet")
    return d


def test_files_terminal_table_fits_100_columns(files: Path) -> None:
    proc = slobench("workload", "compare", "naive.parquet", "real.parquet", cwd=files)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= 100, proc.stdout
    for needle in ("A: naive.parquet", "(reference)", "var/mean of counts, 10 s", "far",
                   "Gini", "KS", "A vs B:"):
        assert needle in proc.stdout, needle


def test_json_on_files(files: Path) -> None:
    code, out, err = invoke("workload", "compare", str(files / "naive.parquet"),
                            str(files / "real.parquet"), "--json")
    assert code == 0, err
    report = json.loads(out)
    keys = {s["key"]: s for s in report["statistics"]}
    assert keys["mean_rate"]["verdict"] == "close"
    assert keys["dispersion_10s"]["verdict"] == "far"
    assert keys["top1_share"]["verdict"] == "far"
    assert report["sources"]["A"].endswith("naive.parquet")


def test_profile_with_short_duration_writes_plots(files: Path, tmp_path: Path) -> None:
    code, out, err = invoke("workload", "compare", str(files / "real.parquet"),
                            "profile:language-small", "--duration", "2min", "--seed", "1",
                            "--plots", str(tmp_path / "plots"))
    assert code == 0, err
    assert "profile language-small (120 s, seed 1)" in out
    html = (tmp_path / "plots" / "compare.html").read_text(encoding="utf-8")
    for title in realism_plots.FIGURE_TITLES:
        assert title in html
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    # PNGs when an exporter is installed; otherwise a warning, and still exit 0.
    assert len(pngs) == len(realism_plots.FIGURE_TITLES) or "PNG figures skipped" in err


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["missing.parquet", "real.parquet"], ["missing.parquet", "no such file"]),
        (["real.parquet", "profile:nope"], ["nope", "not a built-in profile"]),
        (["bad.parquet", "real.parquet"], ["bad.parquet"]),
        (["empty.csv", "real.parquet"], ["empty.csv", "empty"]),
        (["one.jsonl", "real.parquet"], ["at least 2"]),
        (["emptydir", "real.parquet"], ["emptydir"]),
        (["profile:language", "real.parquet", "--duration", "soon"], ["--duration"]),
        (["profile:language", "real.parquet", "--seed", "-1"], ["--seed"]),
    ],
)
def test_bad_input_is_one_error_line(files: Path, args: list[str], needles: list[str]) -> None:
    (files / "bad.parquet").write_bytes(b"PAR1 not parquet at all")
    (files / "empty.csv").write_bytes(b"")
    (files / "one.jsonl").write_text('{"arrival_s": 0, "input_tokens": 5, "output_tokens": 5}\n')
    (files / "emptydir").mkdir(exist_ok=True)
    cwd = Path.cwd()
    os.chdir(files)
    try:
        code, _, err = invoke("workload", "compare", *args)
    finally:
        os.chdir(cwd)
    assert code != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_input_subprocess_has_no_traceback(tmp_path: Path) -> None:
    proc = slobench("workload", "compare", "nothing.parquet", "profile:language", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
