"""``slobench runs``, ``slobench export`` and the Python API (pandas DataFrames) over real run
directories (made once per session by test_catalog.make_run_dirs)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from slobench import api
from slobench.cli.main import app
from slobench.errors import UserError
from slobench.store import catalog as catmod
from test_catalog import make_run_dirs, slobench


@pytest.fixture(scope="session")
def run_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_run_dirs(tmp_path_factory)


@pytest.fixture
def catalog(run_dirs, tmp_path) -> str:
    """A SQLite catalog of the session's runs, indexed through the API."""
    url = catmod.sqlite_url(tmp_path / "catalog.sqlite")
    assert len(api.scan(run_dirs["root"], url).registered) == 5
    return url


def cli(*args: str) -> tuple[int, str, str]:
    """The real CLI in this process (faster than a subprocess on a loaded machine)."""
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def _one_error(code: int, stderr: str) -> str:
    assert code != 0, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_runs_lists_filters_and_scans(run_dirs, tmp_path, monkeypatch):
    monkeypatch.delenv(catmod.ENV, raising=False)
    url = catmod.sqlite_url(tmp_path / "cat.sqlite")
    proc = slobench("runs", "--scan", str(run_dirs["root"]), "--catalog", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Indexed 5 run(s)" in proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= 100
    for name in ("live-a", "sim-a", "ext-a", "trial-01", "trial-02", "complete", "emulator",
                 "llama-3.1"):
        assert name in proc.stdout, name

    def listed(*args: str) -> list[dict]:
        code, out, err = cli("runs", "--catalog", url, "--json", *args)
        assert code == 0, err
        return json.loads(out)

    everything = listed()
    assert len(everything) == 5 and all(r["started_at"].endswith("+00:00") for r in everything)
    assert "summary_json" not in everything[0]
    starts = [r["started_at"] for r in everything]
    assert starts == sorted(starts, reverse=True)  # newest first
    assert sorted(r["run_id"] for r in listed("--engine", "slobench-simulator")) == [
        "sim-a", "trial-01-x1", "trial-02-x2"]
    assert [r["run"] for r in listed("--kind", "sim")] == ["sim-a"]  # the table's short name
    assert [r["run"] for r in listed("--hardware", "TEST")] == ["ext-a"]
    live = next(r for r in everything if r["run"] == "live-a")
    assert [r["run"] for r in listed("--workload", live["workload_fingerprint"][:5])] == [
        "live-a"]
    assert len(listed("--limit", "2")) == 2 and listed("--since", "2999-01-01") == []
    assert len(listed("--since", "2h", "--status", "complete", "--model", "llama")) == 4
    code, out, _ = cli("runs", "--catalog", url, "--engine", "tgi")
    assert code == 0 and "No runs match" in out

    assert "--kind" in _one_error(*cli("runs", "--catalog", url, "--kind", "x")[::2])
    assert "--since" in _one_error(*cli("runs", "--catalog", url, "--since", "soonish")[::2])
    monkeypatch.chdir(tmp_path)
    assert "no catalog at" in _one_error(*cli("runs")[::2])
    # the default catalog: runs/catalog.sqlite, where the runs registered themselves
    own = slobench("runs", "--json", cwd=run_dirs["root"].parent)
    assert own.returncode == 0, own.stderr
    assert len(json.loads(own.stdout)) == 5


def test_export_summary_classes_and_records(run_dirs, catalog, tmp_path):
    live, sim = run_dirs["live"], run_dirs["sim"]
    summary = json.loads((live / "summary.json").read_text())["summary"]
    proc = slobench("export", str(live), str(sim), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["run"] for r in rows] == ["live-a", "sim-a"]
    assert {r["class"] for r in rows} == {"all"}
    assert float(rows[0]["attainment"]) == pytest.approx(summary["overall"]["slo"]["attainment"])
    assert int(rows[0]["requests"]) == summary["overall"]["requests"]
    assert float(rows[0]["ttft_p99"]) == pytest.approx(summary["overall"]["latency"]["ttft"]["p99"])

    out = tmp_path / "classes.json"
    code, _, err = cli("export", "live-a", "--catalog", catalog, "--what", "classes", "-o",
                       str(out))
    assert code == 0, err
    classes = json.loads(out.read_text())
    assert sorted(c["class"] for c in classes) == sorted(summary["classes"])
    assert all(c["engine"] == "slobench-emulator" for c in classes)

    pq_out = tmp_path / "records.parquet"
    code, _, err = cli("export", "live-a", str(sim), "--catalog", catalog, "--what", "records",
                       "-o", str(pq_out))
    assert code == 0, err
    table = pq.read_table(pq_out)
    n_live = pq.read_table(live / "records.parquet").num_rows
    n_sim = pq.read_table(sim / "records.parquet").num_rows
    assert table.num_rows == n_live + n_sim
    rec = table.to_pylist()
    ok = [r for r in rec if r["status"] == "ok"]
    assert ok and all(r["ttft_s"] == pytest.approx(r["first_token_s"] - r["scheduled_s"])
                      for r in ok)
    assert {r["run"] for r in rec} == {"live-a", "sim-a"}
    assert sum(r["slo_met"] for r in rec if r["run"] == "live-a" and r["in_window"]) == \
        round(summary["overall"]["slo"]["attainment"] * summary["overall"]["requests"])

    code, out_text, err = cli("export", str(live), "--what", "records", "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out_text)))
    assert len(rows) == n_live and isinstance(json.loads(rows[0]["token_times"]), list)

    assert "--what" in _one_error(*cli("export", str(live), "--what", "x")[::2])
    assert "--output" in _one_error(*cli("export", str(live), "-f", "parquet")[::2])
    assert "nope" in _one_error(*cli("export", "nope", "--catalog", catalog)[::2])


def test_python_api_returns_dataframes(run_dirs, catalog, tmp_path):
    pd = pytest.importorskip("pandas")
    df = api.runs(catalog)
    assert isinstance(df, pd.DataFrame) and len(df) == 5
    assert {"run", "engine", "model", "hardware", "attainment", "goodput_rps",
            "ttft_p99"} <= set(df.columns)
    assert str(df["started_at"].dt.tz) == "UTC"
    assert list(api.runs(catalog, engine="slobench-emulator").sort_values("run")["run"]) == [
        "ext-a", "live-a"]
    assert api.runs(catalog, since="2999-01-01").empty
    with pytest.raises(UserError, match="unknown filter"):
        api.runs(catalog, gpu="h100")

    summary = json.loads((run_dirs["live"] / "summary.json").read_text())["summary"]
    s = api.summary(run_dirs["live"])
    assert list(s["class"]) == [*sorted(summary["classes"]), "all"]
    overall = s.set_index("class").loc["all"]
    assert overall["goodput_rps"] == pytest.approx(summary["overall"]["goodput_rps"])
    assert overall["tpot_p50"] == pytest.approx(summary["overall"]["latency"]["tpot"]["p50"])

    r = api.records("live-a", catalog)
    assert len(r) == pq.read_table(run_dirs["live"] / "records.parquet").num_rows
    ok = r[r["status"] == "ok"]
    assert (ok["e2e_s"] - (ok["done_s"] - ok["scheduled_s"])).abs().max() < 1e-9
    assert ok["tpot_s"].notna().any()
    c = api.classes([run_dirs["live"], run_dirs["sim"]])
    assert set(c["run"]) == {"live-a", "sim-a"} and "all" not in set(c["class"])

    # a killed run (no summary.json, no records.parquet): summarized from its journal
    killed = tmp_path / "runs" / "killed-a"
    shutil.copytree(run_dirs["live"], killed)
    (killed / "summary.json").unlink()
    (killed / "records.parquet").unlink()
    ks = api.summary(killed).set_index("class").loc["all"]
    assert ks["requests"] == summary["overall"]["requests"]
    assert len(api.records(killed)) == len(r)


def test_api_without_pandas_is_one_clear_error(run_dirs, catalog, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if it were not installed
    with pytest.raises(UserError, match=r"slobench\[notebook\]"):
        api.runs(catalog)
    assert api.summary_table(run_dirs["live"]).num_rows >= 2  # Arrow works without pandas


@pytest.mark.parametrize("width", [60, 80, 100, 160])
def test_runs_table_fits_the_terminal(catalog, width):
    from rich.console import Console

    from slobench.report.runs_table import runs_table

    rows = api.list_runs(catalog)
    console = Console(width=width, record=True, force_terminal=False)
    console.print(runs_table(rows, "title", width))
    lines = console.export_text().splitlines()
    assert max(len(ln) for ln in lines) <= width
    body = "\n".join(lines)
    assert "live-a" in body and "trial-01" in body  # ids stay readable (middle ellipsis)
    if width >= 160:
        assert "not shown" not in body
        for header in ("when", "kind", "engine", "model", "hw", "scenario", "reqs", "status"):
            assert header in body
    else:
        assert "not shown for width" in body and "status" in body
