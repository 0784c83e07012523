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
