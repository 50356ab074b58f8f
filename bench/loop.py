"""``make bench-loop``: the whole loop (``make demo``) at 50 and 200 devices, 3 seeds, rotation
and noise drift; median and range of every figure docs/LOOP_METRICS.md defines.

Ratio: the median over runs of the drifted cohort's accuracy after promotion / the oracle's
accuracy on the same inputs (target >= 0.99), met only with 0 false alarms in every run. Each
run is a real ``hub serve`` and a fleet of real agents; one takes ~5 minutes at 50 devices
and ~7 at 200 on 2 cores (the 12 runs: ~65 minutes).

Environment: ``EDGELOOP_LOOP_DEVICES`` (``50,200``), ``EDGELOOP_LOOP_KINDS``
(``rotation,noise``), ``EDGELOOP_LOOP_SEEDS`` (3).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench._result import RESULTS, BenchResult

FIGURES = (
    "accuracy_before",
    "accuracy_during_drift",
    "accuracy_after",
    "detection_windows",
    "detection_s",
    "false_alarms",
    "canary_started_after_s",
    "recovered_after_s",
    "drifted_after_vs_oracle",
    "clean_after_minus_before_pp",
)
TARGETS = {
    "detection_windows": ("<=", 2.0),
    "false_alarms": ("<=", 0.0),
    "canary_started_after_s": ("<=", 180.0),
    "recovered_after_s": ("<=", 600.0),
    "drifted_after_vs_oracle": (">=", 0.99),
    "clean_after_minus_before_pp": (">=", -0.5),
}


def _cohort(summary: dict[str, Any], cohort: str, period: str) -> float | None:
    value = summary["accuracy_by_cohort"][cohort].get(period) or {}
    return value.get("accuracy")


def spread(values: list[float | None]) -> dict[str, Any]:
    """Median and range of the runs that have the figure, and how many do not (None)."""
    present = [float(v) for v in values if v is not None]
    return {
        "median": statistics.median(present) if present else None,
        "min": min(present) if present else None,
        "max": max(present) if present else None,
        "missing": len(values) - len(present),
    }


def met(figures: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """Each target on the medians (a missing median fails)."""
    out = {}
    for name, (op, bound) in TARGETS.items():
        median = figures[name]["median"]
        out[name] = median is not None and (median <= bound if op == "<=" else median >= bound)
    return out


def run() -> BenchResult:
    from edgeloop_cli.demo import DemoOptions, run_demo

    devices = [int(d) for d in os.environ.get("EDGELOOP_LOOP_DEVICES", "50,200").split(",")]
    kinds = os.environ.get("EDGELOOP_LOOP_KINDS", "rotation,noise").split(",")
    seeds = range(int(os.environ.get("EDGELOOP_LOOP_SEEDS", "3")))
    runs: list[dict[str, Any]] = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    partial = RESULTS / "loop_runs.jsonl"  # each run as it ends: a cut-short bench keeps them
    partial.write_text("")
    for n in devices:
        for kind in kinds:
            for seed in seeds:
                with tempfile.TemporaryDirectory(prefix="edgeloop-loop-") as tmp:
                    summary = run_demo(
                        DemoOptions(data_dir=Path(tmp), devices=n, drift=kind, seed=seed)
                    )
                row: dict[str, Any] = {"devices": n, "drift": kind, "seed": seed}
                row.update({k: summary.get(k) for k in FIGURES})
                for cohort in ("drifted", "clean"):
                    for period in ("before", "during", "after"):
                        row[f"{cohort}_{period}"] = _cohort(summary, cohort, period)
                    row[f"oracle_{cohort}"] = (
                        (summary.get("oracle_accuracy") or {}).get("accuracy", {}).get(cohort)
                    )
                row["canary_state"] = summary.get("canary_state")
                row["false_alarm_list"] = summary.get("false_alarm_list")
                runs.append(row)
                with partial.open("a") as out:
                    out.write(json.dumps(row, default=str) + "\n")
                print(
                    f"loop {n} devices {kind} seed {seed}: drifted after "
                    f"{row['drifted_after']} vs oracle {row['oracle_drifted']}, detection "
                    f"{row['detection_windows']} windows, false alarms {row['false_alarms']}",
                    flush=True,
                )
    groups: dict[str, dict[str, Any]] = {}
    for n in devices:
        for kind in kinds:
            mine = [r for r in runs if r["devices"] == n and r["drift"] == kind]
            figures = {k: spread([r[k] for r in mine]) for k in FIGURES}
            groups[f"{n}/{kind}"] = {"figures": figures, "met": met(figures)}
    ratios = [r["drifted_after_vs_oracle"] for r in runs]
    ratio = spread(ratios)["median"] or 0.0
    every_met = all(all(g["met"].values()) for g in groups.values())
    no_false = all((r["false_alarms"] or 0) == 0 for r in runs)
    return BenchResult(
        name="loop",
        baseline="the oracle (the same spec trained knowing the shift), drifted cohort",
        ratio=float(ratio),
        target=">= 0.99 with 0 false alarms (and every figure's target on its median)",
        met=ratio >= 0.99 and no_false and every_met,
        details={"groups": groups, "runs": runs, "targets": TARGETS},
    )
