"""Length fidelity over real HTTP: the server's usage counts are compared with the plan, and a
server that stops early or counts prompts differently is reported per run."""

from __future__ import annotations

from helpers import bench, fixed_workload
from slobench.slo.fidelity import fidelity_warnings


def test_exact_run_reports_no_deviation(scripted_server, tmp_path):
    url = scripted_server({"ttft_s": 0.01, "tpot_s": 0.001})  # generates max_tokens
    a = bench(url, fixed_workload(6, gap_s=0.02, input_tokens=40, output_tokens=12), tmp_path)
    fid = a.manifest["length_fidelity"]
    assert fid["output"] == {"checked": 6, "exact": 6, "short": 0, "long": 0, "mean_ratio": 1.0}
    assert fid["input"]["checked"] == 6
    assert not [w for w in fidelity_warnings(fid) if "answers" in w]


def test_early_stop_and_other_tokenizer_are_reported(scripted_server, tmp_path):
    url = scripted_server({"ttft_s": 0.01, "tpot_s": 0.001, "output_tokens": 5})
    a = bench(url, fixed_workload(6, gap_s=0.02, input_tokens=40, output_tokens=12), tmp_path)
    fid = a.manifest["length_fidelity"]
    assert fid["output"]["short"] == 6 and fid["output"]["mean_ratio"] == 5 / 12
    assert fid["output"]["worst"][0] == {"request_id": "q0000", "planned": 12, "got": 5}
    warnings = fidelity_warnings(fid)
    assert any("6 of 6 answers were shorter" in w for w in warnings)
