"""slobench simulate / emulate / run-on-the-emulator as a user meets them."""

from __future__ import annotations

import json

import pytest

from test_cli import assert_one_line_error, only_run, slobench


def test_simulate_writes_a_run_that_report_reads(tmp_path):
    proc = slobench("simulate", "-r", "20", "-d", "60s", "--replicas", "2", "--router",
                    "prefix_affinity", "--out", "runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Simulated" in proc.stdout and "TTFT" in proc.stdout
    run = only_run(tmp_path / "runs")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["target"]["kind"] == "simulation"
    assert manifest["target"]["replicas"] == 2
    assert manifest["simulation"]["speedup"] > 10
    summary = json.loads((run / "summary.json").read_text())["summary"]
    assert summary["overall"]["requests"] > 1000
    rep = slobench("report", str(run), cwd=tmp_path)
    assert rep.returncode == 0 and "Simulated in virtual time" in rep.stdout


def test_simulate_overload_degrades_goodput(tmp_path):
    """3x the load of one H100: the SLOs start failing, and the run still finishes."""
    light = slobench("simulate", "-r", "10", "-d", "60s", "--out", "a", "--run-id", "x",
                     cwd=tmp_path)
    heavy = slobench("simulate", "-r", "60", "-d", "60s", "--output-tokens", "512",
                     "--out", "b", "--run-id", "x", cwd=tmp_path)
    assert light.returncode == 0 and heavy.returncode == 0, heavy.stderr

    def attainment(d: str) -> float:
        s = json.loads((tmp_path / d / "x" / "summary.json").read_text())["summary"]
        return s["overall"]["slo"]["attainment"]

    assert attainment("a") > 0.95
    assert attainment("b") < attainment("a")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--gpu", "h1000"], ["h1000", "h100-sxm"]),
        (["--model", "llama-3.1-70b"], ["does not fit", "tp=2"]),
        (["--model", "gpt-99"], ["gpt-99"]),
        (["--router", "random"], ["random"]),
        (["--policy", "lifo"], ["lifo"]),
        (["--tp", "3"], ["tp"]),
        (["--replicas", "0"], ["--replicas"]),
        (["missing.parquet"], ["missing.parquet"]),
    ],
)
def test_simulate_bad_input(tmp_path, args, needles):
    assert_one_line_error(slobench("simulate", "-n", "10", *args, cwd=tmp_path), *needles)


def test_emulate_bad_input(tmp_path):
    assert_one_line_error(slobench("emulate", "--gpu", "nope", cwd=tmp_path), "nope")
    assert_one_line_error(slobench("emulate", "--error-rate", "429", cwd=tmp_path),
                          "--error-rate")


def test_run_on_a_bigger_emulated_setup(tmp_path):
    proc = slobench("run", "-d", "3s", "-r", "3", "--model", "qwen2.5-7b", "--gpu", "l40s",
                    "--out", "runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((only_run(tmp_path / "runs") / "manifest.json").read_text())
    assert manifest["config"]["builtin_engine"]["gpu"] == "l40s"
    assert manifest["target"]["model"] == "qwen2.5-7b"
    assert isinstance(manifest["emulator"]["keeping_real_time"], bool)  # busy CI may lag
    engine = manifest["config"]["builtin_engine"]
    assert isinstance(engine["kv_capacity_tokens"], int)  # data, not mistaken for a secret
    assert isinstance(engine["config"]["max_num_batched_tokens"], int)
