"""``slobench fit`` as a user meets it: a real subprocess, real files, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SLOBENCH = [sys.executable, "-m", "slobench"]


def slobench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SLOBENCH, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180, env=dict(os.environ), stdin=subprocess.DEVNULL)


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]


def write_log(path: Path, n: int = 3000) -> None:
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.exponential(0.5, n))
    lines = ["ts,user,prompt_tokens,completion_tokens,sess"]
    for i in range(n):
        lines.append(f"{t[i]:.4f},{'alice' if i % 4 else 'bob'},{rng.integers(10, 800)},"
                     f"{rng.integers(1, 200)},s{i // 2}")
    path.write_text("\n".join(lines) + "\n")


def test_fit_then_generate(tmp_path: Path) -> None:
    write_log(tmp_path / "log.csv")
    proc = slobench("fit", "log.csv", "-o", "pool.npz", "--time-col", "ts", "--client-col",
                    "user", "--input-col", "prompt_tokens", "--output-col", "completion_tokens",
                    "--session-col", "sess", "--export-servegen", "sg", "--report", "rep.json",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "gap families" in proc.stdout and "sessions" in proc.stdout
    assert "alice" in proc.stdout
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["clients"] == 2 and rep["sessions"]["turns"]["values"] == [2]
    assert (tmp_path / "sg" / "chunk-0-trace.csv").exists()
    for pool in ("pool.npz", "sg"):
        gen = slobench("generate", "--pool", pool, "-d", "10min", "-o", "w.parquet", "-q",
                       cwd=tmp_path)
        assert gen.returncode == 0, gen.stderr


@pytest.mark.parametrize(("text", "args", "needles"), [
    ("ts,i,o\n0,1,2\n1,x,2\n", ["--time-col", "ts", "--input-col", "i", "--output-col", "o"],
     ["log.csv:3", "'i'"]),
    ("ts,i,o\n0,1,2\n1,3\n", ["--time-col", "ts", "--input-col", "i", "--output-col", "o"],
     ["log.csv:3"]),
    ("ts,i,o\n0,1,2\n", ["--time-col", "tss", "--input-col", "i", "--output-col", "o"],
     ["--time-col 'tss'", "did you mean 'ts'"]),
    ("a,b\n0,1\n", [], ["log.csv:1", "--time-col"]),
    ("ts,i,o\n0,1,2\n", ["--time-col", "ts", "--input-col", "i", "--output-col", "o",
                         "--block", "900s"], ["multiple of --window"]),
    ("ts,i,o\n0,1,2\n", ["--time-col", "ts", "--input-col", "i", "--output-col", "o",
                         "--window", "300s", "--export-servegen", "sg"], ["600 s windows"]),
    ("", [], ["empty"]),
])
def test_fit_errors(tmp_path: Path, text: str, args: list[str], needles: list[str]) -> None:
    (tmp_path / "log.csv").write_text(text)
    proc = slobench("fit", "log.csv", "-o", "pool.npz", *args, cwd=tmp_path)
    one_line_error(proc, *needles)
    assert not (tmp_path / "pool.npz").exists()


def test_fit_missing_file_and_bad_format(tmp_path: Path) -> None:
    one_line_error(slobench("fit", "nope.csv", "-o", "p.npz", cwd=tmp_path), "no such file")
    (tmp_path / "log.csv").write_text("arrival_s,input_tokens,output_tokens\n0,1,1\n")
    one_line_error(slobench("fit", "log.csv", "-o", "p.npz", "--format", "bogus",
                            cwd=tmp_path), "--format 'bogus'")
