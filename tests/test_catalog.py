"""The run catalog against real run directories made by real ``slobench run`` / ``simulate`` /
``capacity`` commands (the built-in emulator as target), on SQLite here and on a real PostgreSQL
server in test_catalog_postgres.py (which runs these same test functions)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import select, update

from slobench import api
from slobench.client.probe import identify_server, parse_metrics, parse_models
from slobench.engine.config import EngineConfig
from slobench.engine.emulator import EmulatorProcess
from slobench.errors import UserError
from slobench.store import catalog as catmod
from slobench.store.catalog import Catalog, CatalogError, register_safely

SLOBENCH = [sys.executable, "-m", "slobench"]
SECRETS = ("pw-SECRET-9", "tok-SECRET-8", "sk-SECRET-7")


def slobench(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SLOBENCH, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})},
                          stdin=subprocess.DEVNULL)


# -- real run directories, made once per session -------------------------------------------------


def make_run_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A runs folder with a live run on the built-in emulator, a simulated run, a live run on an
    emulator started separately (URL with credentials, --api-key, --hardware) and a capacity
    search of two simulated trials. Made once per session and shared by the catalog tests,
    which must not change them."""
    base = tmp_path_factory.getbasetemp() / "catalog-runs"
    done = base / "done.json"
    if done.exists():
        return {k: Path(v) for k, v in json.loads(done.read_text()).items()}
    if base.exists():
        shutil.rmtree(base)
    base.mkdir()
    env = {k: v for k, v in os.environ.items() if k != catmod.ENV}
    with EmulatorProcess(EngineConfig(served_model_name="ext-model")) as srv:
        port = srv.base_url.rsplit(":", 1)[1]
        url = f"http://user:{SECRETS[0]}@127.0.0.1:{port}/v1?api_key={SECRETS[1]}"
        commands = {
            "live": ["run", "-d", "2s", "-r", "4", "--run-id", "live-a", "--out", "runs", "-q",
                     "--apps", "chatbot:0.5,coding:0.5"],
            "sim": ["simulate", "-d", "20s", "-r", "5", "--run-id", "sim-a", "--out", "runs",
                    "-q", "--gpu", "a100-80gb", "--apps", "chatbot:0.5,coding:0.5"],
            "ext": ["run", "--target", url, "--api-key", SECRETS[2], "--hardware", "2xTEST-GPU",
                    "--engine", "vllm", "-n", "6", "-r", "10", "--run-id", "ext-a", "--out",
                    "runs", "-q"],
            "capacity": ["capacity", "--duration", "20s", "--max-trials", "2", "--out", "runs",
                         "-q"],
        }
        procs = {name: subprocess.Popen([*SLOBENCH, *args], cwd=base, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL)
                 for name, args in commands.items()}
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, (name, err)
            assert "not registered" not in err, (name, err)
    runs = base / "runs"
    paths = {"root": runs, "live": runs / "live-a", "sim": runs / "sim-a", "ext": runs / "ext-a"}
    trials = sorted(runs.glob("capacity-*/trial-*"))
    assert len(trials) == 2, trials
    paths["trial1"], paths["trial2"] = trials
    done.write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    return paths


@pytest.fixture(scope="session")
def run_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_run_dirs(tmp_path_factory)


@pytest.fixture
def catalog_url(tmp_path: Path) -> str:
    """An empty catalog (test_catalog_postgres.py overrides this with a PostgreSQL database)."""
    return catmod.sqlite_url(tmp_path / "cat" / "catalog.sqlite")


def _by_id(rows: list[dict]) -> dict[str, dict]:
    return {api.run_label(r): r for r in rows}


def _manifests(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("manifest.json"))


# -- the hook: runs register themselves --------------------------------------------------------


def test_runs_register_themselves_in_the_runs_folder(run_dirs):
    """Every run (the capacity trials too) registered itself in runs/catalog.sqlite while the
    four commands ran at the same time; none made a catalog of its own elsewhere."""
    root = run_dirs["root"]
    assert [p.name for p in root.rglob("catalog.sqlite")] == ["catalog.sqlite"]
    rows = _by_id(Catalog.open(str(root / "catalog.sqlite")).list_runs())
    trial = f"{run_dirs['trial1'].parent.name}/{run_dirs['trial1'].name}"
    assert {"live-a", "sim-a", "ext-a", trial} <= set(rows)
    assert len(rows) == len(_manifests(root))
    assert all(r["status"] == "complete" and r["requests"] for r in rows.values())
    manifest = json.loads((run_dirs["live"] / "manifest.json").read_text())
    assert manifest["server"]["engine"] == "slobench-emulator"
    assert manifest["server"]["models"][0]["id"] == "llama-3.1-8b"


# -- the catalog, on each backend ----------------------------------------------------------------


def test_scan_indexes_every_run_and_is_idempotent(catalog_url, run_dirs):
    root = run_dirs["root"]
    result = api.scan(root, catalog_url)
    assert not result.failed
    assert len(result.registered) == len(_manifests(root)) == 5
    cat = Catalog.open(catalog_url)
    rows = _by_id(cat.list_runs())
    assert len(rows) == 5

    live = rows["live-a"]
    summary = json.loads((run_dirs["live"] / "summary.json").read_text())["summary"]
    manifest = json.loads((run_dirs["live"] / "manifest.json").read_text())
    assert (live["kind"], live["simulated"], live["status"]) == ("live", False, "complete")
    assert (live["engine"], live["engine_source"]) == ("slobench-emulator", "builtin")
    assert (live["model"], live["hardware"], live["tp"]) == ("llama-3.1-8b", "h100-sxm", 1)
    assert live["requests"] == summary["overall"]["requests"] > 0
    assert live["attainment"] == pytest.approx(summary["overall"]["slo"]["attainment"])
    assert live["ttft_p99"] == pytest.approx(summary["overall"]["latency"]["ttft"]["p99"])
    assert live["workload_fingerprint"] == manifest["workload"]["fingerprint"]
    assert live["scenario"] == "synthetic" and live["slo_spec"].startswith("chatbot:")
    assert live["path"] == str(run_dirs["live"].absolute())
    assert live["started_at"] is not None and live["ended_at"] >= live["started_at"]
    assert json.loads(live["summary_json"])["summary"]["overall"]["requests"] == live["requests"]
    classes = {c["app"]: c for c in cat.classes([live["uid"]])}
    assert set(classes) == set(summary["classes"]) and classes
    for app, c in classes.items():
        assert c["requests"] == summary["classes"][app]["requests"]
        assert c["target"] == pytest.approx(0.9)

    sim = rows["sim-a"]
    assert (sim["kind"], sim["simulated"], sim["engine"]) == ("simulated", True,
                                                              "slobench-simulator")
    assert (sim["hardware"], sim["client_healthy"]) == ("a100-80gb", True)
    assert {c["app"] for c in cat.classes([sim["uid"]])} == {"chatbot", "coding"}

    ext = rows["ext-a"]
    assert (ext["engine"], ext["engine_source"]) == ("slobench-emulator", "metrics")
    assert (ext["model"], ext["hardware"]) == ("ext-model", "2xTEST-GPU")
    assert ext["target_url"].startswith("http://127.0.0.1:") and "@" not in ext["target_url"]
    assert json.loads(ext["server_json"])["models"][0]["id"] == "ext-model"

    trial = rows[f"{run_dirs['trial1'].parent.name}/{run_dirs['trial1'].name}"]
    assert (trial["kind"], trial["simulated"]) == ("capacity-trial", True)
    assert trial["group_id"].startswith("capacity-")

    again = api.scan(root, catalog_url)
    assert len(again.registered) == 5
    rows2 = _by_id(cat.list_runs())
    assert set(rows2) == set(rows)
    assert all(rows2[k]["registered_at"] == rows[k]["registered_at"] for k in rows)


def test_filters(catalog_url, run_dirs):
    api.scan(run_dirs["root"], catalog_url)
    cat = Catalog.open(catalog_url)

    def ids(**filters):
        return sorted(api.run_label(r) for r in cat.list_runs(**filters))

    trials = [f"{p.parent.name}/{p.name}" for p in (run_dirs["trial1"], run_dirs["trial2"])]
    assert ids(engine="SLOBENCH-EMULATOR") == ["ext-a", "live-a"]
    assert ids(engine="slobench-simulator") == sorted(["sim-a", *trials])
    assert ids(engine="vllm") == []
    assert ids(model="LLAMA-3.1") == sorted(["live-a", "sim-a", *trials])
    assert ids(model="%") == [] and ids(model="_") == []  # no SQL wildcards
    assert ids(hardware="test-gpu") == ["ext-a"]
    assert ids(hardware="a100") == ["sim-a"]
    assert len(ids(scenario="synth")) == 5
    fingerprint = cat.find("live-a")[0]["workload_fingerprint"]
    assert ids(workload=fingerprint[:6]) == ["live-a"]
    assert ids(kind="capacity-trial") == sorted(trials)
    assert ids(kind="simulated") == ["sim-a"]
    assert len(ids(status="complete")) == 5 and ids(status="running") == []
    assert len(ids(since=catmod.parse_since("1h"))) == 5
    assert ids(since=catmod.parse_since("2999-01-01")) == []
    newest = cat.list_runs(limit=2)
    assert len(newest) == 2
    assert newest[0]["started_at"] >= newest[1]["started_at"]
    assert all(newest[1]["started_at"] >= r["started_at"] for r in cat.list_runs()[2:])
    with pytest.raises(UserError, match="--limit"):
        cat.list_runs(limit=0)


def test_register_again_updates_the_same_row(catalog_url, run_dirs, tmp_path):
    cat = Catalog.open(catalog_url)
    first = cat.register_run(run_dirs["live"])
    time.sleep(1.1)
    cat.register_run(run_dirs["live"])
    (row,) = cat.list_runs()
    assert row["uid"] == first["uid"]
    assert row["registered_at"] == first["registered_at"] < row["updated_at"]
    # the same run moved elsewhere, without its summary: same row, new path, metrics kept
    moved = tmp_path / "elsewhere" / "live-a"
    shutil.copytree(run_dirs["live"], moved)
    (moved / "summary.json").unlink()
    cat.register_run(moved)
    (row2,) = cat.list_runs()
    assert row2["path"] == str(moved.absolute())
    assert row2["requests"] == row["requests"] and row2["attainment"] == row["attainment"]
    assert len(cat.classes([row["uid"]])) == len(cat.classes([first["uid"]])) > 0


def test_find_runs_by_id(catalog_url, run_dirs, tmp_path):
    api.scan(run_dirs["root"], catalog_url)
    cat = Catalog.open(catalog_url)
    live = cat.find("live-a")
    assert len(live) == 1
    assert cat.find(live[0]["uid"][:8]) == live
    trial = run_dirs["trial1"]
    assert [r["path"] for r in cat.find(f"{trial.parent.name}/{trial.name}")] == [
        str(trial.absolute())]
    assert api.run_path("live-a", catalog_url) == run_dirs["live"].absolute()
    assert api.run_path(str(run_dirs["sim"]), catalog_url) == run_dirs["sim"]
    # another run with the same id, in a study folder: the bare id is now ambiguous
    twin = tmp_path / "study-x" / "live-a"
    shutil.copytree(run_dirs["live"], twin)
    cat.register_run(twin)
    with pytest.raises(UserError, match="2 runs have that id"):
        api.run_path("live-a", catalog_url)
    assert api.run_path("study-x/live-a", catalog_url) == twin.absolute()
    with pytest.raises(UserError, match="no run with that id"):
        api.run_path("nope", catalog_url)


CONCURRENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from slobench.store.catalog import Catalog
    url, start, paths = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    time.sleep(max(0.0, start - time.time()))
    for p in paths:
        Catalog.open(url).register_run(Path(p))
""")


def _copies(source: Path, folder: Path, n: int, prefix: str) -> list[Path]:
    out = []
    for i in range(n):
        dst = folder / f"{prefix}-{i:02d}"
        shutil.copytree(source, dst, ignore=shutil.ignore_patterns("*.parquet", "*.jsonl"))
        manifest = json.loads((dst / "manifest.json").read_text())
        manifest["run_id"] = dst.name
        (dst / "manifest.json").write_text(json.dumps(manifest))
        out.append(dst)
    return out


def test_concurrent_registration_into_a_new_catalog(catalog_url, run_dirs, tmp_path):
    """Two processes create the schema and register 15 runs each into one catalog at the same
    moment: every run arrives, nothing fails."""
    a = _copies(run_dirs["sim"], tmp_path / "runs", 15, "a")
    b = _copies(run_dirs["sim"], tmp_path / "runs", 15, "b")
    start = time.time() + 2.0
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, catalog_url, str(start),
                               *map(str, paths)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for paths in (a, b)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    rows = Catalog.open(catalog_url).list_runs()
    assert sorted(r["run_id"] for r in rows) == sorted(p.name for p in a + b)
    assert all(r["requests"] and r["status"] == "complete" for r in rows)


def _all_text(cat: Catalog) -> str:
    with cat.engine.connect() as conn:
        return "\n".join(str(tuple(row)) for table in catmod.metadata.sorted_tables
                         for row in conn.execute(select(table)))


def test_credentials_are_never_stored(catalog_url, run_dirs):
    api.scan(run_dirs["root"], catalog_url)
    cat = Catalog.open(catalog_url)
    text = _all_text(cat)
    assert "ext-a" in text and "127.0.0.1" in text
    for secret in SECRETS:
        assert secret not in text
    if catalog_url.startswith("sqlite"):
        folder = Path(catalog_url.removeprefix("sqlite:///")).parent
        for f in folder.iterdir():
            for secret in SECRETS:
                assert secret.encode() not in f.read_bytes(), (f, secret)
    ext = cat.find("ext-a")[0]
    assert ext["target_url"] == json.loads(ext["server_json"])["url"]
    assert "?" not in ext["target_url"] and "user" not in ext["target_url"]


def _wait_for_journal(root: Path, n: int, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for journal in root.glob("*/records.journal.jsonl"):
            if len(journal.read_bytes().splitlines()) >= n:
                return journal.parent
        time.sleep(0.1)
    raise AssertionError("the run produced no records in time")


def test_killed_run_shows_running_until_report_or_scan(catalog_url, tmp_path):
    env = {catmod.ENV: catalog_url}
    proc = subprocess.Popen([*SLOBENCH, "run", "--workers", "1", "-d", "60s", "-r", "10",
                             "--output-tokens", "4",
                             "--out", "runs", "-q"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env}, start_new_session=True)
    try:
        run = _wait_for_journal(tmp_path / "runs", 5)
        cat = Catalog.open(catalog_url)
        (row,) = cat.list_runs()
        assert (row["status"], row["requests"], row["pid"]) == ("running", None, proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the built-in emulator too
    assert not (tmp_path / "runs" / "catalog.sqlite").exists()  # $SLOBENCH_CATALOG was used
    (row,) = cat.list_runs()
    assert row["status"] == "running"  # nothing has looked at it since
    rep = slobench("report", str(run), cwd=tmp_path, env=env)
    assert rep.returncode == 0, rep.stderr
    (row,) = cat.list_runs()
    assert row["status"] == "killed"  # its process is gone
    assert row["requests"] >= 5 and row["attainment"] is not None
    assert cat.classes([row["uid"]])
    scanned = slobench("runs", "--scan", "runs", "--catalog", catalog_url, "--json",
                       cwd=tmp_path)
    assert scanned.returncode == 0, scanned.stderr
    (listed,) = json.loads(scanned.stdout)
    assert (listed["status"], listed["requests"]) == ("killed", row["requests"])


def test_a_newer_schema_is_refused(catalog_url, run_dirs, capsys):
    cat = Catalog.open(catalog_url)
    with cat.engine.begin() as conn:
        conn.execute(update(catmod.schema_version).values(version=catmod.SCHEMA_VERSION + 1))
    with pytest.raises(CatalogError, match="newer"):
        Catalog.open(catalog_url)
    catmod._WARNED.clear()
    assert register_safely(run_dirs["sim"], catalog=catalog_url) is False
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: run sim-a not registered")
    assert "newer" in err


# -- never failing a run (SQLite and unreachable PostgreSQL) -------------------------------------


def test_a_catalog_that_cannot_be_written_never_fails_a_run(tmp_path, free_port_refused):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = slobench("simulate", "-d", "10s", "--out", "runs", "-q", "--catalog",
                    str(blocker / "catalog.sqlite"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "not registered" in warnings[0] and "--scan" in warnings[0]
    assert "Traceback" not in proc.stderr
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert (run / "summary.json").exists()

    port = free_port_refused.rsplit(":", 1)[1]
    pg = f"postgresql://slobench:pg-SECRET-1@127.0.0.1:{port}/catalog"
    proc = slobench("simulate", "-d", "10s", "--out", "runs2", "-q", cwd=tmp_path,
                    env={catmod.ENV: pg})
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "127.0.0.1" in warnings[0]
    assert "pg-SECRET-1" not in proc.stderr + proc.stdout
    assert [p.name for p in (tmp_path / "runs2").iterdir()] != []

    proc = slobench("simulate", "-d", "10s", "--out", "runs3", "-q", "--no-catalog",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "runs3" / "catalog.sqlite").exists()


def test_catalog_urls(tmp_path, monkeypatch):
    monkeypatch.delenv(catmod.ENV, raising=False)
    run = tmp_path / "runs" / "capacity-20260101-000000" / "trial-01-x1"
    assert catmod.runs_root(run) == tmp_path / "runs"
    assert catmod.resolve_url(None, tmp_path / "runs") == catmod.sqlite_url(
        tmp_path / "runs" / "catalog.sqlite")
    assert catmod.resolve_url("off") is None
    assert catmod.resolve_url("postgresql://u:p@h/db").startswith("postgresql+psycopg://")
    monkeypatch.setenv(catmod.ENV, str(tmp_path / "team.sqlite"))
    assert catmod.resolve_url(None, tmp_path) == catmod.sqlite_url(tmp_path / "team.sqlite")
    assert catmod.shown_url("postgresql://u:secret@h/db?password=x") == "postgresql://u:***@h/db"
    with pytest.raises(UserError, match="--since"):
        catmod.parse_since("last tuesday")
    with pytest.raises(UserError, match="no catalog at"):
        Catalog.open(str(tmp_path / "missing.sqlite"), create=False)


# -- server identification ---------------------------------------------------------------------

VLLM_METRICS = """\
# HELP python_info Python platform information
python_info{implementation="CPython",major="3",minor="12",version="3.12.3"} 1.0
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
vllm:cache_config_info{block_size="16",gpu_memory_utilization="0.9",num_gpu_blocks="27000"} 1.0
vllm:num_requests_running{model_name="meta-llama/Llama-3.1-8B"} 3.0
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="meta-llama/Llama-3.1-8B"} 7.0
"""


def test_metrics_name_the_engine():
    vllm = parse_metrics(VLLM_METRICS)
    assert (vllm["engine"], vllm["version"]) == ("vllm", None)  # python_info is not vLLM's
    assert vllm["cache_config"]["gpu_memory_utilization"] == "0.9"
    assert parse_metrics('sglang:num_running_reqs{model_name="m"} 0\n')["engine"] == "sglang"
    tgi = parse_metrics('tgi_request_count 4\ntgi_info{version="2.4.1"} 1\n')
    assert (tgi["engine"], tgi["version"]) == ("tgi", "2.4.1")
    assert parse_metrics("llamacpp:prompt_tokens_total 12\n")["engine"] == "llama.cpp"
    assert parse_metrics("process_cpu_seconds_total 1.5\n")["engine"] is None
    models = parse_models(b'{"data": [{"id": "m", "owned_by": "vllm", "max_model_len": 4096,'
                          b' "permission": [{}]}]}')
    assert models == [{"id": "m", "owned_by": "vllm", "max_model_len": 4096}]
    assert parse_models(b"not json") == []


def test_identify_a_server_never_fails(free_port_refused, scripted_server):
    t0 = time.monotonic()
    refused = identify_server(free_port_refused)
    assert time.monotonic() - t0 < 5
    assert refused["engine"] is None and "/v1/models" in refused["errors"]
    url = scripted_server({"ttft_s": 0.01, "tpot_s": 0.001})
    scripted = identify_server(url)
    assert scripted["models"] and scripted["models"][0]["id"]
    assert scripted["engine"] == "slobench" and scripted["detected_from"] == "models"
    with EmulatorProcess(EngineConfig()) as srv:
        emu = identify_server(srv.base_url, {"Authorization": "Bearer x"})
    assert (emu["engine"], emu["detected_from"]) == ("slobench-emulator", "metrics")
    assert emu["models"][0]["max_model_len"] > 0 and not emu["errors"]
