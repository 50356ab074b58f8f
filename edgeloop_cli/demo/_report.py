"""The demo's report: one HTML page with plots (rollout progress, accuracy and drift scores
over time per model version) and the summary, written next to the PNGs it embeds."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop_cli.demo._timeline import Timeline

if TYPE_CHECKING:
    from edgeloop_cli.demo._measure import RunRecord

MARKS = {
    "rollout1_start": "first rollout",
    "drift_onset": "drift onset",
    "detected": "drift detected",
    "canary_start": "canary starts",
    "canary_end": "canary done",
}


def _marks(ax: Any, timeline: Timeline) -> None:
    for key, label in MARKS.items():
        if key in timeline.marks:
            ax.axvline(timeline.marks[key], color="grey", linestyle=":", linewidth=1)
            ax.annotate(
                label,
                (timeline.marks[key], 1.0),
                xycoords=("data", "axes fraction"),
                rotation=90,
                va="top",
                ha="right",
                fontsize=7,
                color="grey",
            )


def _plots(out: Path, *, measured: RunRecord, timeline: Timeline) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, Path] = {}
    fig, ax = plt.subplots(figsize=(8, 3))
    for rollout_id, samples in timeline.rollouts.items():
        if samples:
            ax.step(
                [s[0] for s in samples], [s[1] for s in samples], where="post", label=rollout_id
            )
    _marks(ax, timeline)
    ax.set(xlabel="seconds", ylabel="devices healthy", title="Rollout progress")
    ax.legend(fontsize=8)
    paths["rollouts"] = out / "rollouts.png"
    fig.tight_layout()
    fig.savefig(paths["rollouts"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3))
    for version, points in sorted(measured.accuracy_series.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=f"v{version}")
    _marks(ax, timeline)
    ax.set(xlabel="seconds", ylabel="accuracy from labels (%)", title="Live accuracy")
    ax.legend(fontsize=8)
    paths["accuracy"] = out / "accuracy.png"
    fig.tight_layout()
    fig.savefig(paths["accuracy"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3))
    for name, scores in sorted(measured.drift_series.items()):
        ax.plot([p[0] for p in scores], [p[1] for p in scores], marker=".", label=name)
    ax.axhline(1.0, color="red", linewidth=1, label="threshold")
    _marks(ax, timeline)
    ax.set(
        xlabel="seconds",
        ylabel="score / threshold (max per evaluation)",
        yscale="log",
        title="Drift scores (model version scope)",
    )
    ax.legend(fontsize=7)
    paths["drift"] = out / "drift.png"
    fig.tight_layout()
    fig.savefig(paths["drift"], dpi=110)
    plt.close(fig)
    return paths


def write_report(
    out: Path, *, summary: dict[str, Any], measured: RunRecord, timeline: Timeline
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(out, measured=measured, timeline=timeline)
    if (out / "dashboard-rollout.png").exists():
        plots["dashboard: the canary rollout"] = out / "dashboard-rollout.png"
    images = "".join(
        f'<h2>{html.escape(name)}</h2><img alt="{name}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}">'
        for name, path in plots.items()
    )
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v))}</td></tr>"
        for k, v in summary.items()
        if k != "report"
    )
    marks = "".join(
        f"<tr><th>{html.escape(MARKS.get(k, k))}</th><td>{v:.1f} s</td></tr>"
        for k, v in sorted(timeline.marks.items(), key=lambda kv: kv[1])
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeloop demo report</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}
th{{text-align:left;padding-right:1em}}img{{max-width:100%}}</style></head>
<body><h1>edgeloop demo: the loop, closed</h1>
<table>{rows}</table><h2>timeline</h2><table>{marks}</table>{images}</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return path
