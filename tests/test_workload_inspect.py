"""``slobench workload inspect``: statistics on hand-built tables, figures, the CLI, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from slobench.report import workload_plots
from slobench.schema import conform_workload, write_table
from slobench.slo.stats import percentiles
from slobench.workload.inspect import choose_bin_s, inspect_workload, prefix_reuse

SLOBENCH = [sys.executable, "-m", "slobench"]


def make_table(arrival: np.ndarray, **cols: object) -> pa.Table:
    n = len(arrival)
    data: dict[str, object] = {
        "request_id": [f"r{i}" for i in range(n)],
        "arrival_s": np.asarray(arrival, dtype=np.float64),
        "input_tokens": np.full(n, 100, dtype=np.int64),
        "output_tokens": np.full(n, 10, dtype=np.int64),
    }
    data.update(cols)
    return conform_workload(pa.table(data))


def poisson(rate: float, duration: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, int(rate * duration * 1.2)))
    return t[t < duration]


def bursty(duration: float, seed: int = 2) -> np.ndarray:
    """A Markov-modulated Poisson process: episodes of mean 20 s alternating 50 and 2 req/s."""
    rng = np.random.default_rng(seed)
    out, t, high = [], 0.0, True
    while t < duration:
        d = rng.exponential(20.0)
        rate = 50.0 if high else 2.0
        k = rng.poisson(rate * d)
        out.append(t + np.sort(rng.random(k)) * d)
        t, high = t + d, not high
    arr = np.concatenate(out)
    return arr[arr < duration]


def by_window(stats: dict, w: float) -> dict:
    return next(s for s in stats["scales"] if s["window_s"] == w)


def test_poisson_is_cv_one_and_dispersion_one_at_short_scales() -> None:
    stats = inspect_workload(make_table(poisson(20.0, 1200.0)))
    assert 0.95 < stats["interarrival"]["cv"] < 1.05
    assert 19.0 < stats["mean_rate_rps"] < 21.0
    for w in (1.0, 10.0):
        s = by_window(stats, w)
        assert 0.8 < s["dispersion"] < 1.25, s
        assert s["cv"] == pytest.approx(s["poisson_cv"], rel=0.15)
    assert by_window(stats, 60.0)["windows"] == 19
    # The span (first to last arrival) is just under 1200 s: one whole 600 s window, too few.
    assert by_window(stats, 600.0)["windows"] == 1
    assert by_window(stats, 600.0)["dispersion"] is None
    json.dumps(stats, allow_nan=False)


def test_bursty_is_above_poisson_at_every_scale() -> None:
    stats = inspect_workload(make_table(bursty(3600.0)))
    assert stats["interarrival"]["cv"] > 1.5
    for w in (1.0, 10.0, 60.0):
        s = by_window(stats, w)
        assert s["dispersion"] > 3.0, s
        assert s["cv"] > 2 * s["poisson_cv"], s
    rot = stats["rate_over_time"]
    assert sum(rot["counts"]) == stats["requests"]
    assert rot["peak_rps"] > 1.5 * stats["mean_rate_rps"]


def test_shares_top_and_rest() -> None:
    clients = ["a"] * 5 + ["b"] * 3 + ["c"] * 2
    apps = ["chatbot"] * 6 + ["coding"] * 4
    inp = np.array([10] * 5 + [100] * 3 + [0] * 2, dtype=np.int64)
    out = np.zeros(10, dtype=np.int64)
    table = make_table(np.arange(10.0), client_id=clients, app=apps, input_tokens=inp,
                       output_tokens=out)
    from slobench.workload import inspect as insp

    stats = insp.inspect_workload(table, top_clients=2)
    c = stats["clients"]
    assert c["distinct"] == 3
    assert [(e["name"], e["requests"]) for e in c["top"]] == [("a", 5), ("b", 3)]
    assert c["top"][0]["share"] == pytest.approx(0.5)
    assert c["top"][0]["token_share"] == pytest.approx(50 / 350)
    assert c["top"][1]["token_share"] == pytest.approx(300 / 350)
    assert c["rest"] == {"count": 1, "requests": 2, "share": pytest.approx(0.2),
                         "token_share": 0.0}
    a = stats["apps"]
    assert [(e["name"], e["share"]) for e in a["top"]] == [("chatbot", 0.6), ("coding", 0.4)]
    assert a["rest"] is None


def test_lengths_use_the_project_percentiles() -> None:
    rng = np.random.default_rng(3)
    inp = rng.integers(1, 5000, 1000)
    out = rng.integers(1, 500, 1000)
    reason = np.where(np.arange(1000) % 4 == 0, rng.integers(1, 2000, 1000), 0)
    stats = inspect_workload(make_table(np.arange(1000.0), input_tokens=inp, output_tokens=out,
                                        reasoning_tokens=reason))
    tok = stats["tokens"]
    ref = percentiles(inp, (50, 90, 99))
    for k in ("p50", "p90", "p99", "max", "mean"):
        assert tok["input"][k] == pytest.approx(ref[k])
    assert tok["output"]["max"] == out.max()
    assert tok["reasoning"]["count"] == 250  # only the requests that reason
    assert tok["reasoning_share"] == pytest.approx(0.25)
    assert tok["total_input"] == inp.sum()
    assert sum(tok["input"]["histogram"]["counts"]) == 1000
    assert tok["input"]["cdf"]["x"][-1] == inp.max()


def test_no_reasoning_images_sessions_or_prefixes() -> None:
    stats = inspect_workload(make_table(np.arange(5.0)))
    assert stats["tokens"]["reasoning"] is None
    assert stats["images"] is None
    assert stats["sessions"] is None
    assert stats["prefix"] is None


def test_images_sessions_and_prefix_reuse() -> None:
    lists = pa.list_(pa.int64())
    table = make_table(
        np.array([0.0, 1.0, 2.0, 3.0, 4.0]),
        session_id=["s1", "s1", "s2", "s1", ""],
        turn=np.array([0, 1, 0, 2, 0], dtype=np.int32),
        think_s=np.array([0.0, 2.0, 0.0, 4.0, 0.0]),
        image_tokens=pa.array([[576, 576], [], [], [100], []], lists),
        prefix_blocks=pa.array([[1, 2], [1, 3], [4], [], [2]], lists),
    )
    stats = inspect_workload(table)
    im = stats["images"]
    assert (im["requests_with_images"], im["images"]) == (2, 3)
    assert im["tokens_per_image"]["max"] == 576
    s = stats["sessions"]
    assert (s["sessions"], s["multi_turn_sessions"], s["requests_in_multi_turn"]) == (2, 1, 3)
    assert s["followup_share"] == pytest.approx(0.4)
    assert s["think_s"]["mean"] == pytest.approx(3.0)
    p = stats["prefix"]
    # first blocks 1 (new), 1 (seen), 4 (new), 2 (seen in request 0): 2 of 4
    assert p["requests_with_prefix"] == 4
    assert p["first_block_reuse"] == pytest.approx(0.5)
    # blocks 1 2 | 1 3 | 4 | 2: the second 1 and the second 2 were seen before
    assert p["block_reuse"] == pytest.approx(2 / 6)
    assert p["distinct_blocks"] == 4


def test_prefix_reuse_follows_arrival_order_not_row_order() -> None:
    lists = pa.list_(pa.int64())
    table = make_table(np.array([5.0, 1.0]), prefix_blocks=pa.array([[7], [7]], lists))
    stats = inspect_workload(table)
    assert stats["prefix"]["first_block_reuse"] == pytest.approx(0.5)
    assert prefix_reuse(pa.array([[], []], lists)) is None


def test_bin_choice_and_tiny_workloads() -> None:
    assert choose_bin_s(3600.0, 36000) == 30.0  # at most 120 bins
    assert choose_bin_s(86400.0, 10**6) == 900.0
    assert choose_bin_s(3600.0, 100) == 300.0  # about 10 requests per bin
    assert choose_bin_s(10.0, 5) == 1.0  # at least 10 bins
    one = inspect_workload(make_table(np.array([3.0])))
    assert one["requests"] == 1 and one["mean_rate_rps"] is None
    assert one["interarrival"]["cv"] is None
    assert all(s["dispersion"] is None for s in one["scales"])
    json.dumps(one, allow_nan=False)


def test_html_has_titles_and_data_and_works_offline(tmp_path: Path) -> None:
    clients = [f"client-{i % 12}" for i in range(2000)]
    table = make_table(bursty(400.0)[:2000], client_id=clients)
    stats = inspect_workload(table)
    path = workload_plots.write_html(stats, tmp_path / "sub" / "w.html", source="w.parquet")
    text = path.read_text(encoding="utf-8")
    for title in (workload_plots.RATE, workload_plots.RATE_BY_CLIENT, workload_plots.BURST,
                  workload_plots.LENGTH_CDF, workload_plots.LENGTH_HIST, workload_plots.CLIENTS,
                  workload_plots.APPS):
        assert title in text, title
    assert "client-3" in text and "rest (2 clients)" in text
    assert "index of dispersion" in text.lower()
    assert '<script src="http' not in text  # plotly.js is inlined, not fetched
    assert text.count("Plotly.newPlot") == 7
    assert str(stats["requests"]) in text


def test_png_unavailable_names_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    def nope(name: str) -> object:
        def f(*a: object, **k: object) -> object:
            raise workload_plots.PngUnavailable(f"no {name}")
        return f

    monkeypatch.setattr(workload_plots, "_pngs_plotly", nope("kaleido"))
    monkeypatch.setattr(workload_plots, "_pngs_matplotlib", nope("matplotlib"))
    stats = inspect_workload(make_table(np.arange(50.0)))
    with pytest.raises(workload_plots.PngUnavailable, match="no kaleido; no matplotlib"):
        workload_plots.write_pngs(stats, tmp_path / "png")


# ----------------------------------------------------------------------------- the command


def slobench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run([*SLOBENCH, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env, stdin=subprocess.DEVNULL)


def one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def workload_file(tmp_path: Path) -> Path:
    arrival = bursty(900.0)
    n = len(arrival)
    table = make_table(arrival, client_id=[f"c{i % 13}" for i in range(n)],
                       app=["chatbot" if i % 3 else "coding" for i in range(n)],
                       session_id=[f"s{i // 3}" for i in range(n)],
                       turn=np.arange(n, dtype=np.int32) % 3)
    path = tmp_path / "f.parquet"
    write_table(table, path)
    return path


def test_cli_json_and_html(workload_file: Path) -> None:
    cwd = workload_file.parent
    proc = slobench("workload", "inspect", "f.parquet", "--html", "out.html", "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["file"] == "f.parquet"
    assert stats["clients"]["distinct"] == 13 and len(stats["clients"]["top"]) == 10
    assert stats["sessions"]["multi_turn_sessions"] > 0
    assert by_window(stats, 10.0)["dispersion"] > 3
    html = (cwd / "out.html").read_text(encoding="utf-8")
    assert workload_plots.BURST in html and '"c0"' in html
    assert "out.html" in proc.stderr


def test_cli_terminal_summary_fits_100_columns(workload_file: Path) -> None:
    proc = slobench("workload", "inspect", str(workload_file), cwd=workload_file.parent)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= 100
    text = proc.stdout
    for needle in ("requests over", "inter-arrival CV", "var/mean", "600s windows", "input",
                   "rest (3 clients)", "coding", "Sessions:"):
        assert needle in text, needle


def test_cli_reads_public_traces(tmp_path: Path) -> None:
    (tmp_path / "v.csv").write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n"
                                    "0.0,100,10\n0.5,200,20\n1.5,300,30\n")
    proc = slobench("workload", "inspect", "v.csv", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["requests"] == 3 and stats["tokens"]["input"]["max"] == 300


@pytest.mark.parametrize(
    ("name", "content", "needles"),
    [
        ("missing.parquet", None, ["missing.parquet", "no such file"]),
        ("bad.parquet", b"PAR1 this is not parquet at all", ["bad.parquet", "Parquet"]),
        ("odd.csv", b"when,what\n1,2\n", ["odd.csv", "format"]),
        ("empty.csv", b"", ["empty.csv", "empty"]),
        ("noise.bin", bytes(range(256)) * 8, ["noise.bin"]),
    ],
)
def test_cli_bad_input_is_one_error_line(tmp_path: Path, name: str, content: bytes | None,
                                         needles: list[str]) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    one_error_line(slobench("workload", "inspect", name, cwd=tmp_path), *needles)


def test_cli_directory_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    one_error_line(slobench("workload", "inspect", "d", cwd=tmp_path), "not a file")
