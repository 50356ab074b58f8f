"""``make bench`` writes each result as JSON and one markdown summary over all of them."""

from __future__ import annotations

import json
from pathlib import Path

from bench._result import BenchResult
from bench._summary import SUMMARY, write_summary


def test_summary_lists_every_result_in_order_with_its_verdict(tmp_path: Path) -> None:
    BenchResult(
        name="rollout",
        baseline="lower bound",
        ratio=9.34,
        target="<= 2",
        met=False,
        details={"devices": 1000, "rollout_s": 12.4, "timeline": [1, 2], "note": "a|b"},
    ).write(tmp_path)
    written = BenchResult(
        name="inference", baseline="bare onnxruntime", ratio=1.1496, target="<= 1.15", met=True
    ).write(tmp_path)
    body = json.loads(written.read_text())
    assert body["cores"] and body["written_at"] and body["machine"]
    (tmp_path / "broken.json").write_text("{ not json")

    summary = write_summary(tmp_path, order=["inference", "rollout"])
    assert summary == tmp_path / SUMMARY
    lines = summary.read_text().splitlines()
    rows = [line for line in lines if line.startswith("| `")]
    assert [r.split("|")[1].strip() for r in rows] == ["`inference`", "`rollout`"]
    assert "| 1.150 | <= 1.15 | yes |" in rows[0]
    assert "| 9.340 | <= 2 | **no** |" in rows[1]
    details = lines[lines.index("## rollout") + 2]
    assert "`devices` 1000" in details and "`rollout_s` 12.4" in details
    assert "timeline" not in details  # lists stay in the JSON
    assert "a\\|b" in details  # a pipe cannot break the table
    assert "- broken.json: JSONDecodeError" in lines
