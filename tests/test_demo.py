"""``make demo`` end to end, in a short version: a real hub process, a simulated fleet of real
agents, drift, detection, retraining on field data and a canary decided by its gates. The
assertions are the loop's promises (docs/LOOP_METRICS.md): a broken loop fails here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeloop_cli.demo import DemoOptions, run_demo

CONTRACT = {
    "devices",
    "accuracy_before",
    "accuracy_during_drift",
    "accuracy_after",
    "drift_detected_after_windows",
    "canary_started_after_s",
    "recovered_after_s",
    "report",
    # issue #16
    "false_alarms",
    "accuracy_by_cohort",
    "oracle_accuracy",
    "detection_s",
}


@pytest.mark.timeout(900)
def test_demo_closes_the_loop(tmp_path: Path) -> None:
    summary = run_demo(
        DemoOptions(
            data_dir=tmp_path / "demo",
            devices=8,
            drift_fraction=0.5,
            epochs=8,
            baseline_s=10,
            after_s=30,
            min_incident_records=300,
        )
    )
    assert set(summary) >= CONTRACT
    assert summary["devices"] == 8 and summary["fleet"]["start_failures"] == 0
    assert summary["drifted_devices"] == 4
    cohorts = summary["accuracy_by_cohort"]
    drifted, clean = cohorts["drifted"], cohorts["clean"]
    # the drift hurts the drifted cohort by at least 5 pp
    assert drifted["before"]["accuracy"] - drifted["during"]["accuracy"] >= 5, cohorts
    # detected: the first alert came after the onset, on a scope holding a drifted device ...
    assert summary["first_alert"] is not None and summary["detection_s"] >= 0, summary
    # ... and nothing else alerted
    assert summary["false_alarms"] == 0, summary["false_alarm_list"]
    # retrained, canaried and promoted
    assert summary["versions"] == ["1", "2"] and summary["canary_state"] == "completed", summary
    assert summary["canary_started_after_s"] > 0
    # production moved on evidence: the gates had error-rate data and, labels flowing,
    # accuracy data (issue #21)
    assert summary["canary_promotion"] == "verified", summary
    # the first rollout (a first deployment: error-rate data is its evidence) is verified in
    # a normal run; withheld, never unverified, if its devices sent too little telemetry
    assert summary["first_promotion"] in {"verified", "withheld"}, summary
    # the drifted cohort recovers to within 2 pp of the oracle: its 95% interval reaches it
    oracle = summary["oracle_accuracy"]["accuracy"]["drifted"]
    after = drifted["after"]
    assert after["n"] >= 50, after
    assert after["ci95"][1] >= oracle - 2, (after, oracle)
    assert clean["after"]["ci95"][1] >= clean["before"]["accuracy"] - 2, clean
    # every figure is scored on inputs no model of the run was trained on
    assert 0 < summary["scoreable_labels"] < summary["labels"]
    report = Path(summary["report"])
    assert report.exists() and report.read_text().count("data:image/png;base64,") >= 3
    assert json.loads((report.parent / "summary.json").read_text())["versions"] == ["1", "2"]
