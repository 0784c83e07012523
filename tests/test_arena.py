"""``slobench arena`` over a catalog of real runs, opened in real headless Chromium: the
leaderboard ranks each scenario column on its own (a different winner per column), Pareto plots
render, drill-down reaches a run's report, markup in a served model name never runs, nothing
leaves 127.0.0.1, and the app answers nothing but GET (405) and serves reports only of runs the
catalog knows (404 for any path)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from slobench.cli.main import app as cli
from slobench.engine.config import EngineConfig
from slobench.engine.emulator import EmulatorProcess
from slobench.report.arena import (
    build_board,
    engine_settings,
    host_warning,
    is_loopback,
    make_app,
    pareto_front,
)
from slobench.store.catalog import Catalog, sqlite_url

HOSTILE = "evil<script>window.__pwned=1</script><img src=x onerror=window.__pwned=1>"
HOSTILE_HW = "cpu<b>bold</b>"
# Two workloads, each judged by an SLO that suits it: long prompts against a TTFT target, long
# answers at a high rate against a TPOT target. Big prefill chunks win the first, small chunks
# (decodes never wait behind a long prefill) the second; the L4 loses both.
PREFILL = ["--input-tokens", "6000", "--output-tokens", "16", "--rate", "5",
           "--slo", "chatbot: ttft<=900ms, tpot<=1s"]
DECODE = ["--input-tokens", "1000", "--output-tokens", "200", "--rate", "25",
          "--slo", "chatbot: ttft<=10s, tpot<=25ms"]
CONFIGS = {"h100": ["--gpu", "h100"],
           "h100-chunk512": ["--gpu", "h100", "--max-num-batched-tokens", "512"],
           "l4": ["--gpu", "l4"]}
NO_REPORT = "decode-l4"  # its report.html is removed: the arena makes it on demand


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six simulated runs (3 configurations x 2 scenarios), one more of the decode workload at a
    lower rate, and one live run against the emulator serving a model whose name carries
    markup; none registered: the arena's start-up scan indexes them."""
    out = tmp_path_factory.mktemp("arena") / "runs"
    runner = CliRunner()
    for wname, wargs in (("prefill", PREFILL), ("decode", DECODE)):
        for cname, cargs in CONFIGS.items():
            r = runner.invoke(cli, ["simulate", "-q", "-d", "20s", "--apps", "chatbot",
                                    "--out", str(out), "--run-id", f"{wname}-{cname}",
                                    "--no-catalog", *wargs, *cargs])
            assert r.exit_code == 0, r.output
    # the decode workload at a lower rate: a scenario of its own, in the same family
    r = runner.invoke(cli, ["simulate", "-q", "-d", "20s", "--apps", "chatbot", "--out", str(out),
                            "--run-id", "decode15-h100-chunk512", "--no-catalog",
                            *[("15" if a == "25" else a) for a in DECODE],
                            *CONFIGS["h100-chunk512"]])
    assert r.exit_code == 0, r.output
    engine = EngineConfig(served_model_name=HOSTILE).validate_all()
    with EmulatorProcess(engine) as srv:
        r = runner.invoke(cli, ["run", "-q", "--target", srv.base_url, "-n", "10", "-r", "10",
                                "--input-tokens", "64", "--output-tokens", "12",
                                "--apps", "chatbot", "--hardware", HOSTILE_HW, "--out", str(out),
                                "--run-id", "live-evil", "--no-catalog"])
        assert r.exit_code == 0, r.output
    (out / NO_REPORT / "report.html").unlink()
    return out


def _reader(stream: Any, lines: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)


@pytest.fixture(scope="module")
def arena(runs_dir: Path) -> Iterator[str]:
    """``slobench arena`` in a subprocess on a free loopback port; its base URL."""
    env = {k: v for k, v in os.environ.items() if k != "SLOBENCH_CATALOG"}
    proc = subprocess.Popen([sys.executable, "-m", "slobench", "arena", "--runs-dir",
                             str(runs_dir), "--port", "0"], cwd=runs_dir.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    try:
        deadline = time.monotonic() + 90
        base = None
        while base is None and time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=0.5)
                if line.startswith("Arena at "):
                    base = line.split()[2].rstrip("/")
        assert base, f"the arena did not start: {proc.stderr.read() if proc.poll() else ''}"
        assert base.startswith("http://127.0.0.1:")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.returncode in (0, -15), proc.stderr.read()


def get(url: str) -> tuple[int, Any, bytes]:
    """Status, headers (names in any case) and body of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def raw(base: str, method: str, path: str, headers: dict[str, str] | None = None
        ) -> tuple[int, Any, bytes]:
    """One request with the path sent exactly as given (no client-side normalization)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_host="Host" in (headers or {}))
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def board(base: str, query: str = "") -> dict[str, Any]:
    status, _, body = get(f"{base}/api/leaderboard{query}")
    assert status == 200
    return json.loads(body)


def ids(data: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Scenario ids by name (prefill, decode, decode15, live) and configuration ids by name."""
    scen = {}
    for s in data["scenarios"]:
        name = ("prefill" if "ttft<=900ms" in s["slo"] else
                "decode15" if "rate 15" in s["detail"] else
                "decode" if "tpot<=25ms" in s["slo"] else "live")
        scen[name] = s["id"]
    conf = {}
    for c in data["configurations"]:
        if c["engine"] == "slobench-emulator":
            conf["live"] = c["id"]
        elif c["hardware"] == "l4":
            conf["l4"] = c["id"]
        else:
            conf["h100-chunk512" if c["settings"] else "h100"] = c["id"]
    return scen, conf


def pwned(page: Any) -> str:
    return page.evaluate("typeof window.__pwned")


def hover_all(page: Any, selector: str) -> None:
    for el in page.locator(selector).all():
        el.scroll_into_view_if_needed()
        el.hover(force=True)


# -- the leaderboard ---------------------------------------------------------------------------


def test_leaderboard_api_ranks_each_scenario_on_its_own(arena):
    data = board(arena)
    scen, conf = ids(data)
    assert set(scen) == {"prefill", "decode", "decode15", "live"}, data["scenarios"]
    assert set(conf) == {"h100", "h100-chunk512", "l4", "live"}
    assert data["runs_ranked"] == 8
    cells = {c["id"]: c["cells"] for c in data["configurations"]}
    # no configuration wins every scenario: the request distribution changes the ranking
    assert cells[conf["h100"]][scen["prefill"]]["rank"] == 1
    assert cells[conf["h100-chunk512"]][scen["prefill"]]["rank"] == 2
    assert cells[conf["h100-chunk512"]][scen["decode"]]["rank"] == 1
    assert cells[conf["h100"]][scen["decode"]]["rank"] == 2
    assert cells[conf["l4"]][scen["decode"]]["rank"] == 3
    assert cells[conf["live"]][scen["live"]]["best"]
    winners = {s["id"]: s["winners"] for s in data["scenarios"]}
    assert winners[scen["prefill"]] == [conf["h100"]]
    assert winners[scen["decode"]] == [conf["h100-chunk512"]]
    assert {c["settings"].get("batched-tokens") for c in data["configurations"]} == {None, "512"}
    # the hostile names come back as data, unchanged
    live = next(c for c in data["configurations"] if c["id"] == conf["live"])
    assert live["model"] == HOSTILE and live["hardware"] == HOSTILE_HW
    # filters
    assert {c["hardware"] for c in board(arena, "?hardware=l4")["configurations"]} == {"l4"}
    assert board(arena, "?engine=slobench-emulator")["runs_ranked"] == 1
    status, _, body = get(f"{arena}/api/runs?hardware=l4")
    rows = json.loads(body)
    assert status == 200 and len(rows) == 2 and "summary_json" not in rows[0]
    assert len(json.loads(get(f"{arena}/api/runs")[2])) == 8
    status, _, body = get(f"{arena}/api/scenario/{scen['decode']}")
    sc = json.loads(body)
    assert status == 200 and len(sc["runs"]) == 3 and sc["frontiers"]
    # the family: the same workload shape and SLOs at every rate
    families = {s["id"]: s["family"] for s in data["scenarios"]}
    assert families[scen["decode"]] == families[scen["decode15"]] != families[scen["prefill"]]
    sc = json.loads(get(f"{arena}/api/scenario/{scen['decode']}?scope=family")[2])
    assert sc["scope"] == "family" and len(sc["runs"]) == 4


def test_leaderboard_in_chromium(arena, browser):
    scen, conf = ids(board(arena))
    page = browser.open(f"{arena}/")
    table = page.locator("#leaderboard")
    assert table.locator("tbody tr").count() == 4
    assert table.locator("thead th.scenario").count() == 4
    for cname, sname, rank in (("h100", "prefill", "1"), ("h100-chunk512", "decode", "1"),
                               ("h100", "decode", "2"), ("l4", "prefill", "3")):
        cell = page.locator(f'tr[data-config="{conf[cname]}"] td[data-scenario="{scen[sname]}"]')
        assert cell.get_attribute("data-rank") == rank, (cname, sname)
        assert ("best" in (cell.get_attribute("class") or "").split()) == (rank == "1")
    assert page.locator("td.best").count() == 4  # one per column
    assert "No configuration wins every scenario" in page.inner_text("#verdict")
    # the hostile model and hardware names are shown literally and never run
    body = page.inner_text("body")
    assert HOSTILE in body and HOSTILE_HW in body
    assert page.locator("#leaderboard img").count() == 0
    hover_all(page, "#leaderboard td")
    assert pwned(page) == "undefined"
    # rows sort by the rank in a column
    with page.expect_navigation():
        page.click(f'th[data-scenario="{scen["decode"]}"] a[title]')
    first = page.locator("#leaderboard tbody tr").first
    assert first.get_attribute("data-config") == conf["h100-chunk512"]
    with page.expect_navigation():
        page.click("#leaderboard thead th:first-child a")
    assert "sort=name" in page.url
    # the filter form
    page.select_option('select[name="hardware"]', "l4")
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.locator("#leaderboard tbody tr").count() == 1
    assert "hardware=l4" in page.url
    browser.assert_clean()


def test_pareto_plots_render_in_chromium(arena, browser):
    scen, _ = ids(board(arena))
    for name, configs in (("prefill", 3), ("live", 1)):
        page = browser.open(f"{arena}/scenario/{scen[name]}")
        page.wait_for_selector("body[data-plots-ready]", timeout=30_000)
        figs = page.locator("div.fig")
        assert figs.count() == 2 == int(page.get_attribute("body", "data-plots-ready"))
        for i in range(2):
            fig = figs.nth(i)
            assert "js-plotly-plot" in (fig.get_attribute("class") or "")
            assert fig.locator("svg.main-svg").count() >= 1
            # one trace per configuration and the frontier
            assert fig.locator(".scatterlayer .trace").count() == configs + 1
            assert fig.locator(".scatterlayer .trace .points path").count() == configs
            assert int(fig.get_attribute("data-frontier")) >= 1
        legends = " ".join(t.text_content() or "" for t in page.locator(".legendtext").all())
        assert "Pareto frontier" in legends
        seen = []
        for point in page.locator(".scatterlayer .points path").all():
            point.scroll_into_view_if_needed()
            point.hover(force=True)
            page.wait_for_function("() => [...document.querySelectorAll('.hoverlayer')]"
                                   ".some(h => h.textContent.length > 0)", timeout=5000)
            seen.append(" ".join(h.text_content() or "" for h in
                                 page.locator(".hoverlayer").all()))
        assert all("goodput" in s for s in seen) and seen
        if name == "live":  # plotly shows the name as text: escaped, not drawn as markup
            assert HOSTILE in legends, legends
            assert any(HOSTILE in s for s in seen), seen
            assert page.locator(".js-plotly-plot img").count() == 0
            assert HOSTILE in page.inner_text("body")
        assert pwned(page) == "undefined"
        page.close()
    # the family of the decode scenario: its three runs and the one at a lower rate
    page = browser.open(f"{arena}/scenario/{scen['decode']}")
    with page.expect_navigation():
        page.click("#scope a")
    assert "scope=family" in page.url
    page.wait_for_selector("body[data-plots-ready]", timeout=30_000)
    assert page.locator("div.fig").first.get_attribute("data-points") == "4"
    assert page.locator("div.fig").first.locator(".scatterlayer .points path").count() == 4
    assert page.locator("#runs tbody tr").count() == 4
    assert "rate 15" in page.inner_text("#runs")
    page.close()
    # a click on a point opens its run
    page = browser.open(f"{arena}/scenario/{scen['live']}")
    page.wait_for_selector("body[data-plots-ready]", timeout=30_000)
    point = page.locator(".scatterlayer .points path").first
    point.hover(force=True)
    box = point.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_url("**/run/*", timeout=10_000)
    assert "live-evil" in page.inner_text("h1")
    browser.assert_clean()


def test_drill_down_to_a_run_report_in_chromium(arena, browser):
    _, conf = ids(board(arena))
    page = browser.open(f"{arena}/")
    with page.expect_navigation():
        page.click(f'tr[data-config="{conf["live"]}"] td.best a')
    assert page.inner_text("h1") == "Run live-evil"
    assert HOSTILE in page.inner_text("table.kv")
    assert page.locator("#classes tbody tr").count() == 2  # all, chatbot
    page.click("#report-link")
    page.wait_for_selector("body[data-plots-ready]", timeout=30_000)
    n = int(page.get_attribute("body", "data-plots-ready"))
    assert n >= 3
    for i in range(n):
        assert page.locator("div.fig").nth(i).locator("svg.main-svg").count() >= 1
    assert HOSTILE in page.inner_text("body")
    for drag in page.locator(".nsewdrag").all()[:4]:
        drag.scroll_into_view_if_needed()
        drag.hover(force=True)
    assert pwned(page) == "undefined"
    page.go_back()
    with page.expect_navigation():
        page.click("#summary-link")
    assert json.loads(page.inner_text("body"))["summary"]["overall"]["requests"] == 10
    browser.assert_clean()


def test_report_is_made_on_demand_for_a_catalogued_run(arena, runs_dir):
    data = json.loads(get(f"{arena}/api/runs?hardware=l4")[2])
    uid = next(r["uid"] for r in data if r["run_id"] == NO_REPORT)
    assert not (runs_dir / NO_REPORT / "report.html").exists()
    status, headers, body = get(f"{arena}/run/{uid}/report.html")
    assert status == 200 and body.startswith(b"<!DOCTYPE html>")
    assert (runs_dir / NO_REPORT / "report.html").is_file()
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "'sha256-" in csp and "unsafe-inline'; img" in csp
    assert "script-src 'unsafe-inline'" not in csp
    # a current report is served as it is, not written again
    made = (runs_dir / NO_REPORT / "report.html").stat().st_mtime_ns
    assert get(f"{arena}/run/{uid}/report.html")[0] == 200
    assert (runs_dir / NO_REPORT / "report.html").stat().st_mtime_ns == made
    # a report whose scripts this slobench does not know (another version) is left as it is
    # and made again outside the run directory
    stale = runs_dir / "prefill-l4" / "report.html"
    text = stale.read_text()
    start = text.index("sha256-") + 7
    stale.write_text(text[:start] + "A" * 43 + "=" + text[start + 44:])
    before = stale.read_bytes()
    uid = next(r["uid"] for r in data if r["run_id"] == "prefill-l4")
    status, headers, body = get(f"{arena}/run/{uid}/report.html")
    assert status == 200 and body != before and b"A" * 43 not in body
    assert stale.read_bytes() == before
    assert all(h in headers["Content-Security-Policy"]
               for h in re.findall(r"sha256-[A-Za-z0-9+/=]+", body[:4096].decode()))


# -- read-only, and nothing but catalogued runs --------------------------------------------------


def test_read_only_and_no_path_traversal(arena, runs_dir):
    uid = json.loads(get(f"{arena}/api/runs?engine=slobench-emulator")[2])[0]["uid"]
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
        for path in ("/", "/api/runs", "/api/scan", f"/run/{uid}/report.html"):
            status, headers, _ = raw(arena, method, path)
            assert status == 405, (method, path)
            assert headers["Allow"] == "GET"
    secret = runs_dir.parent / "secret.txt"
    secret.write_text("not for the browser")
    for path in (f"/run/{uid}/../../secret.txt", "/run/..%2F..%2Fsecret.txt/report.html",
                 f"/run/{uid}%2F..%2F..%2Fsecret.txt/report.html",
                 f"/run/{uid}/..%2F..%2Fsecret.txt", "/run/live-evil/report.html",
                 "/run/0123456789abcdef0123/report.html", f"/run/{uid}/manifest.json",
                 f"/run/{uid}/report.html/../../secret.txt", "/static/../secret.txt",
                 "/run/%2e%2e/report.html", "/scenario/..%2F..%2Fsecret.txt"):
        status, _, body = raw(arena, "GET", path)
        assert status == 404, path
        assert b"not for the browser" not in body
    # security headers on every answer
    status, headers, body = get(f"{arena}/")
    assert status == 200
    assert headers["X-Content-Type-Options"] == "nosniff"
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp.split("script-src")[1] \
        .split(";")[0] and "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
    assert b"<script>" not in body  # no inline script on any arena page
    # another Host (DNS rebinding) is refused
    status, _, _ = raw(arena, "GET", "/api/runs", {"Host": "attacker.example:80"})
    assert status == 400


@pytest.fixture
def served() -> Iterator[Any]:
    """``serve(app) -> base URL``: an app on a free loopback port in a thread."""
    import uvicorn

    servers: list[tuple[Any, threading.Thread]] = []

    def serve(web: Any) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(web, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        servers.append((server, thread))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield serve
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def test_allow_write_enables_only_the_rescan(tmp_path, served):
    runs = tmp_path / "runs"
    url = sqlite_url(tmp_path / "cat.sqlite")
    Catalog.open(url)
    r = CliRunner().invoke(cli, ["simulate", "-q", "-n", "20", "--out", str(runs), "--run-id",
                                 "one", "--no-catalog"])
    assert r.exit_code == 0, r.output
    base = served(make_app(url, allow_write=True, runs_dir=runs))
    assert json.loads(get(f"{base}/api/runs")[2]) == []
    status, _, _ = raw(base, "POST", "/api/scan")  # no header: a cross-site form cannot scan
    assert status == 403
    status, _, _ = raw(base, "POST", "/api/scan", {"X-Slobench": "scan",
                                                   "Origin": "http://attacker.example"})
    assert status == 403
    status, _, body = raw(base, "POST", "/api/scan", {"X-Slobench": "scan"})
    assert status == 200 and json.loads(body)["registered"] == 1
    assert [r["run_id"] for r in json.loads(get(f"{base}/api/runs")[2])] == ["one"]
    for method, path in (("PUT", "/api/scan"), ("DELETE", "/api/runs"), ("POST", "/")):
        assert raw(base, method, path)[0] == 405
    assert b"rescan allowed" in get(f"{base}/")[2]
    # read-only by default: no scan route at all
    ro = served(make_app(url))
    assert raw(ro, "POST", "/api/scan", {"X-Slobench": "scan"})[0] == 405


# -- the command line --------------------------------------------------------------------------


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["arena", "--runs-dir", str(tmp_path / "missing"), "--port", "0"])
    assert r.exit_code != 0 and "error: --runs-dir" in r.output and "Traceback" not in r.output
    # nothing to show: no catalog (none is made)
    r = runner.invoke(cli, ["arena", "--no-scan", "--catalog", str(tmp_path / "c.sqlite"),
                            "--port", "0"])
    assert r.exit_code != 0 and "error: no catalog at" in r.output, r.output
    assert not (tmp_path / "c.sqlite").exists()
    Catalog.open(sqlite_url(tmp_path / "c.sqlite"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = runner.invoke(cli, ["arena", "--no-scan", "--catalog", str(tmp_path / "c.sqlite"),
                                "--port", str(port)])
    assert r.exit_code != 0 and "error: --host/--port" in r.output, r.output


def test_host_warning():
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_loopback(host) and host_warning(host) is None
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.org"):
        assert not is_loopback(host)
        assert "reachable from other machines" in (host_warning(host) or "")


# -- pure parts --------------------------------------------------------------------------------


def _row(uid: str, hw: str, fp: str, goodput: float, attainment: float, **kw: Any
         ) -> dict[str, Any]:
    return {"uid": uid, "run_id": uid, "path": None, "status": "complete", "engine": "e",
            "engine_version": "1", "model": "m", "hardware": hw, "tp": 1, "replicas": 1,
            "scenario": "s", "workload_fingerprint": fp, "slo_spec": "x", "goodput_rps": goodput,
            "attainment": attainment, "client_healthy": True, "ttft_p99": 1.0, **kw}


def test_board_ties_share_a_rank_and_zero_goodput_never_wins():
    rows = [_row("a", "h1", "f1", 5.0, 1.0), _row("b", "h2", "f1", 5.0, 1.0),
            _row("c", "h3", "f1", 4.0, 0.9), _row("d", "h1", "f2", 0.0, 0.0),
            _row("e", "h2", "f2", 0.0, 0.0),
            # a better run of h3 in f1 from an overloaded client: a valid run is preferred
            _row("f", "h3", "f1", 9.0, 1.0, client_healthy=False),
            _row("g", "h1", "f1", None, None, status="running")]
    b = build_board(rows, {})
    assert b.skipped == 1 and len(b.scenarios) == 2 and len(b.configs) == 3
    f1 = next(s for s in b.scenarios if s.fingerprint == "f1")
    f2 = next(s for s in b.scenarios if s.fingerprint == "f2")
    ranks = {c.hardware: c.cells[f1.id]["rank"] for c in b.configs}
    assert ranks == {"h1": 1, "h2": 1, "h3": 3}
    assert next(c for c in b.configs if c.hardware == "h3").cells[f1.id]["run_uid"] == "c"
    assert len(f1.winners) == 2 and f2.winners == []
    assert all(c.cells[f2.id]["rank"] == 1 and not c.cells[f2.id]["best"]
               for c in b.configs if f2.id in c.cells)


def test_pareto_front():
    pts = [(1.0, 5.0), (2.0, 4.0), (2.0, 9.0), (3.0, 9.0), (0.5, 1.0), (4.0, 10.0)]
    assert pareto_front(pts) == [4, 0, 2, 5]
    assert pareto_front([]) == []


def test_engine_settings_from_manifests():
    sim = {"target": {"kind": "simulation", "engine": {**EngineConfig().model_dump(),
                                                       "max_num_batched_tokens": 512,
                                                       "policy": "slo"},
                      "replicas": 2, "router": "least_outstanding"}}
    assert engine_settings(sim) == {"batched-tokens": "512", "policy": "slo",
                                    "router": "least_outstanding"}
    builtin = {"config": {"builtin_engine": {"config": {**EngineConfig().model_dump(),
                                                        "enable_prefix_caching": False}}}}
    assert engine_settings(builtin) == {"prefix-caching": "off"}
    sweep = {"sweep": {"params": {"max_num_seqs": 64, "gpu_memory_utilization": 0.9}}}
    assert engine_settings(sweep) == {"max_num_seqs": "64", "gpu_memory_utilization": "0.9"}
    assert engine_settings({}) == {}


def test_leaderboard_page_escapes_without_a_browser(runs_dir, tmp_path, served):
    """The HTML itself carries the hostile names escaped (not only defused by the CSP)."""
    url = sqlite_url(tmp_path / "cat.sqlite")
    Catalog.open(url).scan(runs_dir)
    base = served(make_app(url))
    scen, _ = ids(board(base))
    uid = json.loads(get(f"{base}/api/runs?engine=slobench-emulator")[2])[0]["uid"]
    for path in ("/", f"/run/{uid}", f"/scenario/{scen['live']}"):
        status, _, body = get(base + path)
        html = body.decode()
        assert status == 200
        assert "<script>window.__pwned" not in html and "<img src=x" not in html, path
        assert "<b>bold</b>" not in html
        if path.startswith("/scenario"):  # in the figure data: JSON with <, >, & escaped
            # escaped for plotly (html.escape), then for the script element (\\uXXXX)
            assert "evil\\u0026lt;script\\u0026gt;window.__pwned=1" in html
        else:
            assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
