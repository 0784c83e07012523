"""HTML reports of runs and comparisons, opened in real headless Chromium: every plot renders, no
console error, no network, and strings planted by a server or a workload never run as code."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from browser import BrowserTimeout
from slobench.benchmark import (
    BenchmarkConfig,
    TargetConfig,
    analyze,
    built_in_target,
    run_benchmark,
    run_simulation,
)
from slobench.client.journal import read_journal
from slobench.client.pacing import LoadPlan
from slobench.client.runner import Timeouts
from slobench.engine.config import EngineConfig
from slobench.engine.scripted import ScriptedServerProcess
from slobench.report.html import (
    ecdf_points,
    goodput_load_figure,
    plotly_js,
    script_json,
    text,
    thin,
    write_figures_page,
)
from slobench.report.run_report import (
    REPORT,
    _significance,
    write_compare_report,
    write_run_report,
)
from slobench.schema import conform_workload

SCRIPT = "<script>window.__pwned=1</script>"
IMG = '<img src=x onerror="window.__pwned=1">'
MODEL = f"evil-model{SCRIPT}{IMG}"
APP = f"chat{SCRIPT}"
CLIENT = f"{IMG}client"
ERROR = f"boom </script>{SCRIPT}{IMG} & more"
PAYLOADS = (MODEL, APP, CLIENT)
SLO = "chatbot: ttft<=2s, tpot<=200ms; *: ttft<=2s, tpot<=200ms"


def workload(n: int, *, gap_s: float, apps: tuple[str, ...], clients: tuple[str, ...],
             output_tokens: int = 12) -> pa.Table:
    ids = [f"q{i:04d}" for i in range(n)]
    return conform_workload(pa.table({
        "request_id": ids,
        "arrival_s": 0.05 + np.arange(n) * gap_s,
        "client_id": [clients[i % len(clients)] for i in range(n)],
        "app": [apps[i % len(apps)] for i in range(n)],
        "session_id": ids,
        "input_tokens": np.full(n, 24, dtype=np.int64),
        "output_tokens": np.full(n, output_tokens, dtype=np.int64),
    }))


def bench(url: str, table: pa.Table, out: Path, run_id: str) -> Path:
    cfg = BenchmarkConfig(target=TargetConfig(url=url), plan=LoadPlan(mode="open"),
                          timeouts=Timeouts(request_s=30, stall_s=10), slo=SLO, out=out,
                          run_id=run_id)
    return run_benchmark(table, cfg).run.path


# Run directories are made before any browser starts: Playwright's sync API keeps an event loop
# of its own running in this thread while it is up.

@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    made: dict[str, Path] = {}
    # the built-in engine emulator serving a model whose name carries markup
    engine = EngineConfig(served_model_name=MODEL).validate_all()
    with built_in_target(engine) as url:
        made["emulator"] = bench(url, workload(16, gap_s=0.08, apps=("chatbot", APP),
                                               clients=("c0", CLIENT)), out, "emulator")
    # the scripted server: every third request fails with an error body carrying markup
    body = json.dumps({"error": {"message": ERROR, "type": "server_error"}})
    with ScriptedServerProcess({"ttft_s": 0.02, "tpot_s": 0.004, "fault": "status",
                                "fault_status": 500, "fault_every": 3, "fault_body": body},
                               model=MODEL) as srv:
        made["scripted"] = bench(srv.base_url, workload(12, gap_s=0.05, apps=("chatbot", APP),
                                                        clients=(CLIENT, "c1")),
                                 out, "scripted")
    made["sim"] = run_simulation(workload(300, gap_s=0.02, apps=("chatbot", "coding", APP),
                                          clients=("c0", "c1", CLIENT), output_tokens=40),
                                 EngineConfig(), slo=SLO, out=out, run_id="sim",
                                 warmup_s=0.5).run.path
    return made


def check_rendered(page, browser) -> int:
    """Every figure div holds a drawn plotly plot (an svg with at least one trace)."""
    page.wait_for_selector("body[data-plots-ready]", timeout=30_000)
    n = int(page.get_attribute("body", "data-plots-ready"))
    figs = page.locator("div.fig")
    assert figs.count() == n > 0
    for i in range(n):
        fig = figs.nth(i)
        assert "js-plotly-plot" in (fig.get_attribute("class") or ""), fig.get_attribute("id")
        assert fig.locator("svg.main-svg").count() >= 1
        traces = fig.locator(".scatterlayer .trace, .barlayer .trace")
        assert traces.count() >= 1, fig.get_attribute("data-title")
    browser.assert_clean()
    return n


def hover_everything(page) -> list[str]:
    """Move the mouse across every plot and over every bar; the hover texts seen."""
    seen = []
    for drag in page.locator(".nsewdrag").all():
        box = drag.bounding_box()
        if not box:
            continue
        drag.scroll_into_view_if_needed()
        box = drag.bounding_box()
        for fx in np.linspace(0.02, 0.98, 5):
            page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * 0.5)
            seen.append(page.locator(".hoverlayer").first.text_content() or "")
    for bar in page.locator(".barlayer .point path").all():
        bar.scroll_into_view_if_needed()
        bar.hover(force=True)
        seen.append(hover_text(page))  # a bar always has a label: wait for it
    return seen


def hover_text(page, timeout_ms: float = 3000) -> str:
    """The hover labels once plotly has drawn some ('' if none came)."""
    try:
        page.wait_for_function("() => [...document.querySelectorAll('.hoverlayer')]"
                               ".some(h => h.textContent.length > 0)", timeout=timeout_ms)
    except BrowserTimeout:
        return ""
    return " ".join(h.text_content() or "" for h in page.locator(".hoverlayer").all())


def assert_inert(page, html: str, literal: tuple[str, ...]) -> None:
    assert page.evaluate("typeof window.__pwned") == "undefined"
    body = page.inner_text("body")
    for s in literal:
        assert s in body, s
    # escaped in the file itself, not only defused by the page's Content-Security-Policy
    assert SCRIPT not in html and "<img src=x" not in html and "</script><script>" not in html


def test_run_reports_render_offline(runs, browser):
    for name in ("emulator", "sim"):
        path = runs[name] / REPORT
        assert path.exists(), f"run_benchmark/run_simulation did not write {path}"
        page = browser.open(path)
        n = check_rendered(page, browser)
        titles = [page.locator("div.fig").nth(i).get_attribute("data-title") for i in range(n)]
        assert {"TTFT distribution per class (ECDF)", "Latency over time",
                "Throughput over time", "SLO attainment per class"} <= set(titles)
        if name == "emulator":
            assert {"TPOT distribution per class (ECDF)", "Send lag over time"} <= set(titles)
        else:
            assert "Send lag: none in a simulated run" in page.inner_text("body")
        page.close()
    browser.assert_clean()


def test_markup_from_server_and_workload_never_runs(runs, browser):
    path = runs["scripted"] / REPORT
    html = path.read_text()
    page = browser.open(path)
    check_rendered(page, browser)
    assert_inert(page, html, (MODEL, APP, CLIENT, ERROR))
    # plotly shows the class name literally in its legend and its bar hover labels
    legends = [t.text_content() for t in page.locator(".legendtext").all()]
    assert any(APP in (t or "") for t in legends), legends
    seen = hover_everything(page)
    assert any(APP in s for s in seen), seen
    assert page.evaluate("typeof window.__pwned") == "undefined"
    # the errors section lists the server's message, as text
    assert "Errors per class" in page.inner_text("body")
    browser.assert_clean()


def test_markup_in_the_emulator_model_name_never_runs(runs, browser):
    page = browser.open(runs["emulator"] / REPORT)
    check_rendered(page, browser)
    hover_everything(page)
    assert_inert(page, (runs["emulator"] / REPORT).read_text(), (MODEL, APP, CLIENT))
    browser.assert_clean()


def test_compare_page(runs, browser, tmp_path):
    comparison = {
        "runs": [{"run_id": "scripted", "label": f"base {SCRIPT}"},
                 {"run_id": "emulator", "label": "candidate"}],
        "metrics": [{"metric": "ttft_p99", "run": "emulator", "p_value": 0.001,
                     "significant": True},
                    {"metric": "e2e_p50", "run": "emulator", "p_value": 0.4}],
        "notes": [f"note from the comparison {IMG}"],
    }
    out = write_compare_report([runs["scripted"], runs["emulator"]], comparison,
                               tmp_path / "compare.html")
    html = out.read_text()
    page = browser.open(out)
    n = check_rendered(page, browser)
    titles = {page.locator("div.fig").nth(i).get_attribute("data-title") for i in range(n)}
    assert {"SLO attainment per class and run", "TTFT distribution per run (ECDF, all classes)",
            "Goodput against offered load"} <= titles
    hover_everything(page)
    assert_inert(page, html, (f"base {SCRIPT}", APP, IMG))
    sig = page.locator("td span.sig")
    assert sig.count() == 2
    assert {sig.nth(0).get_attribute("title"), sig.nth(1).get_attribute("title")} == {
        "significant (p = 0.001)", "not significant (p = 0.4)"}
    browser.assert_clean()


def test_compare_page_from_slobench_compare(runs, browser, tmp_path):
    from slobench.report.compare import compare_runs

    paths = [runs["emulator"], runs["scripted"]]
    cmp = compare_runs(paths, resamples=200, baseline=1).as_dict()
    out = write_compare_report(paths, cmp, tmp_path / "compare.html")
    page = browser.open(out)
    check_rendered(page, browser)
    body = page.inner_text("body")
    assert "(baseline)" in body and "bootstrap interval" in body
    rows = page.locator("table").nth(2).locator("tbody tr, tr")
    assert rows.count() > 10
    # the baseline column has no change; the other one has one per metric where defined
    assert page.locator("td span.better, td span.worse").count() >= 1
    assert_inert(page, out.read_text(), (APP, MODEL))
    browser.assert_clean()


def test_goodput_against_load_page(browser, tmp_path):
    points = [{"load": x, "goodput": min(x, 6.0) * 0.97, "attainment": 0.99 if x < 6 else 0.5,
               "label": f"trial-{i} {SCRIPT}"} for i, x in enumerate((2.0, 4.0, 6.0, 8.0))]
    fig = goodput_load_figure(points, title=f"Capacity {IMG}", capacity_rps=5.0)
    out = write_figures_page(tmp_path / "capacity.html", f"Capacity of {IMG}", [fig],
                             intro=[f"stopped {SCRIPT}"])
    page = browser.open(out)
    assert check_rendered(page, browser) == 1
    assert page.locator(".annotation-text").first.text_content() == "capacity 5 req/s"
    box = page.locator(".nsewdrag").first.bounding_box()
    seen = []
    for fx in (0.3, 0.75):  # hovermode x, no hover distance: every position has a label
        page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] / 2)
        seen.append(hover_text(page))
    assert any(f" {SCRIPT}" in s and "trial-" in s for s in seen), seen
    assert_inert(page, out.read_text(), (f"Capacity of {IMG}", f"stopped {SCRIPT}"))
    browser.assert_clean()


def test_cli_report_writes_html_and_reads_a_killed_run(runs, tmp_path):
    # a copy of a live run as if killed: no records.parquet, a torn last journal line
    run = tmp_path / "killed"
    run.mkdir()
    src = runs["scripted"]
    for name in ("manifest.json", "workload.parquet", "records.journal.jsonl"):
        (run / name).write_bytes((src / name).read_bytes())
    manifest = json.loads((run / "manifest.json").read_text())
    manifest.update(status="running", window=None)
    (run / "manifest.json").write_text(json.dumps(manifest))
    with (run / "records.journal.jsonl").open("a") as f:
        f.write('{"request_id": "torn", "sch')
    assert read_journal(run / "records.journal.jsonl")[1] == 1
    proc = subprocess.run([sys.executable, "-m", "slobench", "report", str(run)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"HTML report: {run / REPORT}" in proc.stdout
    page = (run / REPORT).read_text()
    assert "did not finish (killed?)" in page and "1 torn journal line(s)" in page
    assert SCRIPT not in page

    (run / REPORT).unlink()
    proc = subprocess.run([sys.executable, "-m", "slobench", "report", str(run), "--no-html",
                           "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)
    assert not (run / REPORT).exists()


def test_report_with_other_slos_says_so(runs, tmp_path):
    a = analyze(runs["sim"], slo="*: ttft<=1us")
    out = write_run_report(runs["sim"], tmp_path / "strict.html", analysis=a)
    page = out.read_text()
    assert "Judged against other SLOs" in page and "Missed the SLO attainment target" in page


def test_large_run_is_fast_and_small(tmp_path):
    n = 10_000
    table = workload(n, gap_s=0.01, apps=("chatbot", "coding"), clients=("a", "b", "c"),
                     output_tokens=16)
    path = run_simulation(table, EngineConfig(), slo=SLO, out=tmp_path, run_id="big").run.path
    t = time.perf_counter()
    out = write_run_report(path, tmp_path / "again.html")
    elapsed = time.perf_counter() - t
    assert elapsed < 5.0, elapsed  # ~0.2 s on an idle core; generous for a loaded machine
    extra = out.stat().st_size - len(plotly_js())
    assert extra < 2_000_000, extra
    assert "scatter plots show 5,000 of the 10,000 requests" in out.read_text()


# -- the pieces --------------------------------------------------------------------------------


def test_the_browser_harness_sees_and_blocks_network_use(browser, tmp_path):
    page_path = tmp_path / "leaky.html"
    page_path.write_text('<img src="https://example.com/pixel.png"><script>'
                         'fetch("http://203.0.113.7/beacon").catch(() => {});</script>')
    page = browser.open(page_path)
    page.wait_for_timeout(300)
    tried = browser.off_host_requests()
    assert any("example.com" in u for u in tried), tried
    assert any("203.0.113.7" in u for u in tried), tried
    assert page.evaluate("1 + 1") == 2


def test_script_json_cannot_close_the_element():
    s = script_json({"name": "</script><script>x()</script>", "amp": "&", "ls": "\u2028",
                     "nan": float("nan")})
    assert "<" not in s and ">" not in s and "&" not in s and "\u2028" not in s
    assert json.loads(s) == {"name": "</script><script>x()</script>", "amp": "&",
                             "ls": "\u2028", "nan": None}
    assert text('<b a="1">&') == '&lt;b a="1"&gt;&amp;'


def test_ecdf_points_keep_exact_quantiles():
    rng = np.random.default_rng(1)
    v = rng.lognormal(size=100_001)
    v[5] = np.nan
    x, p = ecdf_points(v, 1000)
    assert len(x) <= 1000 and x[0] == np.nanmin(v) and x[-1] == np.nanmax(v)
    assert p[-1] == 1.0
    srt = np.sort(v[~np.isnan(v)])
    # every point is an exact order statistic, and no rank is more than n/1000 from a drawn one
    ranks = np.round(p * srt.size).astype(int) - 1
    assert np.array_equal(x, srt[ranks])
    assert np.diff(p).max() <= 1 / 999 + 2 / srt.size
    x, p = ecdf_points(np.array([3.0, 1.0, 2.0]), 1000)
    assert list(x) == [1.0, 2.0, 3.0] and list(p) == [1 / 3, 2 / 3, 1.0]


def test_thin_keeps_outliers_and_order():
    t = np.arange(50_000, dtype=float)
    v = np.ones_like(t)
    v[[10, 20_000, 49_999]] = 100.0
    keep = thin(t, v, 1000)
    assert len(keep) <= 1000 and np.all(np.diff(t[keep]) > 0)
    assert {10, 20_000, 49_999} <= set(keep.tolist())


def test_significance_is_tolerant_of_shape():
    marks = _significance({"classes": {"chatbot": {"ttft_p99": {"p_value": 0.01}}},
                           "rows": [{"name": "E2E p50", "run_id": "r2", "significant": False}]})
    assert marks[("ttftp99", "chatbot", "")]["significant"] is True
    assert marks[("e2ep50", "", "r2")]["significant"] is False
    assert _significance({"anything": [1, "x", None]}) == {}
