"""Server metrics: each engine's /metrics page normalized into common series, scraped during real
runs (the built-in emulator, a vLLM-like HTTP server, the scripted server without /metrics),
stored with the run, summarized, and drawn in the report."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import bench, fixed_workload
from slobench.client import server_metrics as sm
from slobench.client.probe import parse_metrics
from slobench.clock import RunClock
from slobench.engine.config import EngineConfig
from slobench.engine.emulator import EmulatorProcess
from slobench.report.run_report import write_run_report
from slobench.report.terminal import server_metrics_text
from slobench.schema import conform_records

# -- real pages of each engine (trimmed; values as the engines print them) ----------------------

# vLLM V1 (vllm/v1/metrics/loggers.py; docs.vllm.ai "Production Metrics"): counters carry _total
# and _created, one label set per engine core (data parallel: engine="0", "1").
VLLM_V1 = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 10.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.3
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1000.0
vllm:prefix_cache_queries_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1000.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 600.0
vllm:prefix_cache_hits_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 200.0
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
vllm:num_preemptions_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1000.0
vllm:prompt_tokens_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1000.0
vllm:prompt_tokens_created{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.7e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 500.0
vllm:generation_tokens_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 300.0
# HELP vllm:iteration_tokens_total Histogram of number of tokens per engine_step.
# TYPE vllm:iteration_tokens_total histogram
vllm:iteration_tokens_total_bucket{engine="0",le="1.0",model_name="Llama-3.1-8B-Instruct"} 0.0
vllm:iteration_tokens_total_bucket{engine="0",le="+Inf",model_name="Llama-3.1-8B-Instruct"} 40.0
vllm:iteration_tokens_total_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 40.0
vllm:iteration_tokens_total_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1500.0
vllm:iteration_tokens_total_count{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 60.0
vllm:iteration_tokens_total_sum{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1300.0
"""

# vLLM V0 (vllm/engine/metrics.py): the older KV gauge name, no prefix-cache counters.
VLLM_V0 = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="llama-2-7b"} 4.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="llama-2-7b"} 0.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="llama-2-7b"} 0.25
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="llama-2-7b"} 4096.0
"""

# SGLang (python/sglang/srt/metrics/collector.py; docs/references/production_metrics.md).
SGLANG = """\
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct"} 8.128902e+06
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.557572e+06
# HELP sglang:cached_tokens_total Number of cached prompt tokens.
# TYPE sglang:cached_tokens_total counter
sglang:cached_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0e+06
# HELP sglang:token_usage The token usage
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.28
# HELP sglang:cache_hit_rate The cache hit rate
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.007507552643049313
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 162.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 2826.0
# HELP sglang:gen_throughput The generation throughput (token/s).
# TYPE sglang:gen_throughput gauge
sglang:gen_throughput{model_name="meta-llama/Llama-3.1-8B-Instruct"} 2355.6
"""

# TGI (docs/source/reference/metrics.md; router metrics via the Rust metrics exporter, whose
# counters have no _total suffix).
TGI = """\
# TYPE tgi_queue_size gauge
tgi_queue_size 7
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 24
# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 9000
# TYPE tgi_batch_inference_count counter
tgi_batch_inference_count{method="prefill"} 30
tgi_batch_inference_count{method="decode"} 970
# TYPE tgi_request_input_length histogram
tgi_request_input_length_bucket{le="+Inf"} 50
tgi_request_input_length_sum 25000
tgi_request_input_length_count 50
# TYPE tgi_request_generated_tokens histogram
tgi_request_generated_tokens_bucket{le="+Inf"} 50
tgi_request_generated_tokens_sum 10000
tgi_request_generated_tokens_count 50
"""

# llama.cpp (tools/server/server.cpp, GET /metrics with --metrics).
LLAMACPP = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 6886
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 3469
# HELP llamacpp:n_decode_total Total number of llama_decode() calls
# TYPE llamacpp:n_decode_total counter
llamacpp:n_decode_total 3500
# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call
# TYPE llamacpp:n_busy_slots_per_decode counter
llamacpp:n_busy_slots_per_decode 1.2
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.125
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 1
"""


def test_vllm_v1_page_normalized():
    assert sm.detect_engine(VLLM_V1) == "vllm"
    v = sm.normalize(VLLM_V1, "vllm")
    assert v["requests_running"] == 22 and v["requests_waiting"] == 4  # summed over engines
    assert v["kv_cache_usage"] == pytest.approx(0.4)  # a ratio: averaged over engines
    assert v["prefix_cache_queries"] == 2000 and v["prefix_cache_hits"] == 800
    assert v["preemptions"] == 2
    assert v["prompt_tokens"] == 2000 and v["generation_tokens"] == 800
    assert v["engine_steps"] == 100 and v["step_tokens"] == 2800
    assert v["prefix_cache_hit_rate"] is None


def test_vllm_v0_page_uses_the_old_kv_name():
    v = sm.normalize(VLLM_V0, "vllm")
    assert v["kv_cache_usage"] == 0.25 and v["requests_running"] == 4
    assert v["prefix_cache_queries"] is None and v["engine_steps"] is None


def test_sglang_page_normalized():
    assert sm.detect_engine(SGLANG) == "sglang"
    v = sm.normalize(SGLANG, "sglang")
    assert v["requests_running"] == 162 and v["requests_waiting"] == 2826
    assert v["kv_cache_usage"] == pytest.approx(0.28)
    assert v["prefix_cache_hit_rate"] == pytest.approx(0.0075075, rel=1e-4)
    assert v["prefix_cache_hits"] == 2.0e6 and v["prefix_cache_queries"] == 8.128902e6
    assert v["engine_steps"] is None


def test_tgi_page_normalized():
    assert sm.detect_engine(TGI) == "tgi"
    v = sm.normalize(TGI, "tgi")
    assert v["requests_running"] == 24 and v["requests_waiting"] == 7
    assert v["engine_steps"] == 1000  # prefill + decode forward passes
    assert v["prompt_tokens"] == 25000 and v["generation_tokens"] == 10000
    assert v["kv_cache_usage"] is None


def test_llamacpp_page_normalized():
    assert sm.detect_engine(LLAMACPP) == "llama.cpp"
    v = sm.normalize(LLAMACPP, "llama.cpp")
    assert v["requests_running"] == 2 and v["requests_waiting"] == 1
    assert v["kv_cache_usage"] == 0.125 and v["engine_steps"] == 3500
    assert v["prompt_tokens"] == 6886 and v["generation_tokens"] == 3469


def test_unknown_or_foreign_pages():
    assert sm.detect_engine("process_cpu_seconds_total 1.5\n") is None
    assert parse_metrics(VLLM_V1)["engine"] == "vllm"  # one detection, shared with the probe
    v = sm.normalize("# nothing here\n", "vllm")
    assert all(value is None for value in v.values())


def _table(rows: list[dict[str, float]]) -> pa.Table:
    cols = {"t_s": [r["t_s"] for r in rows]}
    for name in sm.SERIES:
        cols[name] = [r.get(name) for r in rows]
    return pa.Table.from_pydict(cols)


def test_counters_become_rates_over_the_window():
    rows = [{"t_s": float(t), "requests_running": float(t), "kv_cache_usage": 0.1 * t,
             "prefix_cache_queries": 100.0 * t, "prefix_cache_hits": 25.0 * t,
             "engine_steps": 10.0 * t, "step_tokens": 300.0 * t, "preemptions": float(t // 2)}
            for t in range(-1, 8)]
    table = _table(rows)
    s = sm.summarize_series(table, (1.0, 5.0))
    assert s["requests_running"] == {"mean": 3.0, "max": 5.0}
    assert s["kv_cache_usage"]["max"] == pytest.approx(0.5)
    assert s["prefix_cache_hit_rate"] == pytest.approx(0.25)
    assert s["tokens_per_step"] == pytest.approx(30.0)
    assert s["preemptions"] == 2  # 5 // 2 - 1 // 2
    iv = sm.interval_series(table)
    assert np.allclose(iv["prefix_cache_hit_rate"], 0.25)
    assert np.allclose(iv["tokens_per_step"], 30.0)
    # a counter reset (server restart) is a gap, never a negative rate
    rows[4]["engine_steps"] = 0.0
    iv = sm.interval_series(_table(rows))
    assert np.isnan(iv["tokens_per_step"][3]) and np.isfinite(iv["tokens_per_step"][4])


def test_nothing_scraped_summarizes_to_none():
    assert sm.summarize_series(None, (0, 1)) is None
    assert sm.summarize_series(_table([]), (0, 1)) is None


def test_old_records_without_cached_tokens_still_load():
    old = pa.table({"request_id": ["a"], "client_id": ["c"], "app": ["chatbot"],
                    "scheduled_s": [0.0], "input_tokens": [10], "status": ["ok"]})
    rec = conform_records(old)
    assert rec["cached_tokens"].to_pylist() == [None]
    assert sm.prompt_cache_share(rec) is None


def test_scrape_failures_are_counted_never_raised(tmp_path, free_port_refused):
    scraper = sm.MetricsScraper(free_port_refused, tmp_path, RunClock(), interval_s=0.05)
    scraper.start()
    time.sleep(0.3)
    info = scraper.stop()
    assert info["errors"] >= 2 and info["scrapes"] == 0
    assert "Error" in (info["last_error"] or "")
    assert sm.load(tmp_path) is None  # error lines only: no series


# -- a vLLM-like server over real HTTP: metrics that move, and cached_tokens in usage -------------


class _VLLMLike(BaseHTTPRequestHandler):
    served = 0
    lock = threading.Lock()

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, obj: object) -> None:
        body = orjson.dumps(obj)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            return self._json({"data": [{"id": "m", "owned_by": "vllm"}]})
        if self.path == "/version":
            return self._json({"version": "0.10.0"})
        if self.path == "/metrics":
            n = type(self).served
            page = (f'vllm:num_requests_running{{model_name="m"}} {min(n, 3)}\n'
                    f'vllm:num_requests_waiting{{model_name="m"}} 0\n'
                    f'vllm:kv_cache_usage_perc{{model_name="m"}} {0.01 * min(n, 50)}\n'
                    f'vllm:prefix_cache_queries_total{{model_name="m"}} {64 * n}\n'
                    f'vllm:prefix_cache_hits_total{{model_name="m"}} {16 * n}\n'
                    f'vllm:iteration_tokens_total_count{{model_name="m"}} {4 * n}\n'
                    f'vllm:iteration_tokens_total_sum{{model_name="m"}} {68 * n}\n'
                    f'vllm:num_preemptions_total{{model_name="m"}} 0\n').encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return None
        self.send_error(404)
        return None

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = orjson.loads(self.rfile.read(length))
        with type(self).lock:
            type(self).served += 1
        usage = {"prompt_tokens": 64, "completion_tokens": 4, "total_tokens": 68,
                 "prompt_tokens_details": {"cached_tokens": 16}}
        if not body.get("stream"):
            return self._json({"id": "x", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "a b c d"},
                 "finish_reason": "length"}], "usage": usage})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i in range(4):
            chunk = {"id": "x", "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": {"content": f" t{i}"}, "finish_reason": None}]}
            self.wfile.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            self.wfile.flush()
        self.wfile.write(b"data: " + orjson.dumps({"id": "x", "choices": [], "usage": usage})
                         + b"\n\ndata: [DONE]\n\n")
        self.wfile.flush()
        return None


@pytest.fixture
def vllm_like() -> Iterator[str]:
    _VLLMLike.served = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _VLLMLike)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("stream", [True, False])
def test_vllm_like_server_cached_tokens_and_scrape(tmp_path, vllm_like, stream):
    wl = fixed_workload(12, gap_s=0.1)
    a = bench(vllm_like, wl, tmp_path, stream=stream)
    rec = a.run.load_records()[0]
    assert rec["cached_tokens"].to_pylist() == [16] * 12
    block = json.loads((a.run.path / "summary.json").read_text())["server_metrics"]
    assert block["engine"] == "vllm"
    assert block["prompt_cache"]["hit_share"] == pytest.approx(0.25)
    s = block["summary"]
    assert s["prefix_cache_hit_rate"] == pytest.approx(0.25)
    assert s["tokens_per_step"] == pytest.approx(17.0)
    assert s["preemptions"] == 0
    assert block["scrapes"] >= 2 and block["errors"] == 0
    line = server_metrics_text(block)
    assert "prefix-cache hit rate 25" in line and "17.0 tokens/step" in line


# -- the built-in emulator: a real run, stored, summarized, reported ----------------------------


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    with EmulatorProcess(EngineConfig()) as proc:
        yield proc.base_url


def test_emulator_run_stores_summarizes_and_reports(tmp_path, emulator, browser):
    from slobench.benchmark import BenchmarkConfig, TargetConfig, run_benchmark
    from slobench.client.pacing import LoadPlan
    from slobench.client.runner import Timeouts

    wl = fixed_workload(40, gap_s=0.05, input_tokens=300, output_tokens=40)
    cfg = BenchmarkConfig(target=TargetConfig(url=emulator), plan=LoadPlan(mode="open"),
                          timeouts=Timeouts(request_s=30, stall_s=10), out=tmp_path / "runs",
                          scrape_interval_s=0.2)
    a = run_benchmark(wl, cfg)
    run = a.run.path
    table = pq.read_table(run / sm.TABLE)
    assert table.num_rows >= 5
    assert set(sm.SERIES) <= set(table.column_names)
    assert np.nanmax(table["requests_running"].to_numpy(zero_copy_only=False)) >= 1
    block = a.manifest["server_metrics"]
    assert block["engine"] == "slobench-emulator" and block["errors"] == 0
    s = block["summary"]
    assert s["requests_running"]["max"] >= 1
    assert 0 < s["kv_cache_usage"]["max"] <= 1
    assert s["tokens_per_step"] > 1  # continuous batching: several requests per step
    assert s["counters"]["prompt_tokens"] > 0
    assert s["preemptions"] == 0
    assert json.loads((run / "summary.json").read_text())["server_metrics"]["summary"] == s
    html = (run / "report.html").read_text()
    assert "<h2>Server metrics</h2>" in html
    titles = re.findall(r'data-title="([^"]+)"', html)
    assert "Latency over time" in titles
    for title in ("Server: requests running and waiting", "Server: KV-cache usage",
                  "Server: tokens per engine step (batching efficiency)"):
        assert title in titles
    ids = re.findall(r'<div class="fig" id="(fig-\d+)"', html)
    assert len(ids) == len(set(ids))  # the section's figures continue the page's numbering
    # drawn in Chromium: every figure, the server ones included, has a plot with traces
    page = browser.open(run / "report.html")
    page.wait_for_selector("body[data-plots-ready]", timeout=30_000)
    assert int(page.get_attribute("body", "data-plots-ready")) == len(ids)
    for title in titles:
        if title.startswith("Server:"):
            fig = page.locator(f'div.fig[data-title="{title}"]')
            assert "js-plotly-plot" in (fig.get_attribute("class") or ""), title
            assert fig.locator(".scatterlayer .trace").count() >= 1, title
    page.close()
    browser.assert_clean()


def test_scraping_off_writes_nothing(tmp_path, emulator):
    from slobench.benchmark import BenchmarkConfig, TargetConfig, run_benchmark
    from slobench.client.pacing import LoadPlan

    cfg = BenchmarkConfig(target=TargetConfig(url=emulator), plan=LoadPlan(mode="open"),
                          out=tmp_path / "runs", scrape_interval_s=0, html_report=False)
    a = run_benchmark(fixed_workload(3), cfg)
    assert not (a.run.path / sm.JOURNAL).exists()
    assert "off" in a.manifest["server_metrics"]["note"]


def test_server_without_metrics_is_only_noted(tmp_path, scripted_server):
    url = scripted_server({"ttft_s": 0.01, "tpot_s": 0.002})
    a = bench(url, fixed_workload(5), tmp_path)
    assert a.health["valid"] and a.summary["overall"]["requests"] == 5
    block = a.manifest["server_metrics"]
    assert "no Prometheus endpoint" in block["note"] and block["scrapes"] == 0
    assert block["summary"] is None
    assert "Server metrics: none" in server_metrics_text(block)
    html = (a.run.path / "report.html").read_text()
    assert "No server metrics to plot" in html and "no Prometheus endpoint" in html


def test_killed_run_keeps_what_was_scraped(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "slobench", "run", "--out", "runs", "-d",
                             "60s", "-r", "5", "--output-tokens", "8", "--scrape-interval",
                             "0.1s", "--no-catalog", "--workers", "1"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        journal = None
        while time.monotonic() < deadline:
            found = list((tmp_path / "runs").glob(f"*/{sm.JOURNAL}"))
            records = list((tmp_path / "runs").glob("*/records.journal.jsonl"))
            if found and len(found[0].read_bytes().splitlines()) >= 8 and records \
                    and records[0].stat().st_size:
                journal = found[0]
                break
            time.sleep(0.1)
        assert journal is not None, "no server metrics were scraped in time"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    run = journal.parent
    assert not (run / sm.TABLE).exists()
    table = sm.load(run)
    assert table is not None and table.num_rows >= 8
    assert table["t_s"].to_numpy().max() > 0  # on the run clock of the dispatch
    write_run_report(run)
    html = (run / "report.html").read_text()
    assert "Server: requests running and waiting" in html
