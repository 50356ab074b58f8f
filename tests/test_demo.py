"""``make demo`` end to end (a real hub process driven over its API)."""

from __future__ import annotations

from pathlib import Path

from hub.demo import run_demo


def test_demo_runs_the_built_loop(tmp_path: Path) -> None:
    summary = run_demo(tmp_path / "demo")
    assert summary["validation_blocked"] is True
    assert summary["devices"] == 5 and summary["grown_dataset"] == "digits@2"
    assert summary["model"] == "digits-cnn@1" and summary["accuracy"] > 90
    assert str(summary["bundle"]).startswith("sha256:")
    assert summary["broker"].startswith("embedded-")
