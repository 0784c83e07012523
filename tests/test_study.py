"""The provisioning study end to end on the simulator (a short span of the small profile)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from slobench.cli.main import app


def test_provisioning_study_writes_its_report(tmp_path):
    r = CliRunner().invoke(app, ["study", "provisioning", "--profiles", "language-small",
                                 "--rate", "trace*0.2", "-d", "60s", "-o", str(tmp_path)])
    assert r.exit_code == 0, r.output
    (folder,) = tmp_path.glob("study-provisioning-*")
    report = json.loads((folder / "provisioning.json").read_text())
    (row,) = report["rows"]
    assert row["profile"] == "language-small"
    assert row["realistic_replicas"] >= 1 and row["naive_replicas"] >= 1
    assert row["under_provisioning"] == 1 - row["naive_replicas"] / row["realistic_replicas"]
    assert 0 <= row["realistic_attainment_on_naive_plan"] <= 1
    assert row["realistic_capacity_rps"] > 0 and row["naive_capacity_rps"] > 0
    assert "| language-small |" in (folder / "provisioning.md").read_text()


def test_unknown_profile_is_one_line(tmp_path):
    r = CliRunner().invoke(app, ["study", "provisioning", "--profiles", "nope",
                                 "-o", str(tmp_path)])
    assert r.exit_code != 0 and "unknown nope" in r.output and "Traceback" not in r.output


def test_step_windows_follow_the_ramp():
    from slobench.cli.study import step_windows
    from slobench.client.pacing import LoadPlan

    plan = LoadPlan(mode="ramp", ramp_start=2, ramp_step=3, ramp_interval_s=5.0, ramp_max=10)
    assert step_windows(plan) == [(2, 0.0, 5.0), (5, 5.0, 10.0), (8, 10.0, 15.0),
                                  (10, 15.0, 20.0)]


def test_step_load_comparison_of_two_targets(tmp_path):
    r = CliRunner().invoke(app, ["study", "steps", "-t", "emulator:h100", "-t", "emulator:l40s",
                                 "--ramp", "2+2/3s..4", "--output-tokens", "32",
                                 "-o", str(tmp_path)])
    assert r.exit_code == 0, r.output
    for title in ("completed req/s", "goodput req/s", "TTFT p99 (s)", "TPOT p50 (s)"):
        assert title in r.output
    (folder,) = tmp_path.glob("study-steps-*")
    report = json.loads((folder / "steps.json").read_text())
    h100, l40s = report["results"]["emulator:h100"], report["results"]["emulator:l40s"]
    assert [s["users"] for s in h100] == [s["users"] for s in l40s] == [2, 4]
    # the slower GPU decodes slower at every step
    assert all(a["metrics"]["tpot_p50"] < b["metrics"]["tpot_p50"]
               for a, b in zip(h100, l40s, strict=True))
    assert (folder / "target-1" / "records.parquet").is_file()
