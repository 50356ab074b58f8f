"""``edgeloop monitor ...``: drift and degradation status, alerts, evaluation on demand."""

from __future__ import annotations

from typing import Annotated

import typer

from edgeloop_cli._client import connect
from edgeloop_cli._common import JsonFlag, target
from edgeloop_cli.output import emit

app = typer.Typer(help="Monitoring: drift and degradation alerts.", no_args_is_help=True)
ALERT_COLUMNS = [
    "id",
    "kind",
    "scope",
    "model",
    "version",
    "detector",
    "score",
    "threshold",
    "at",
    "resolved_at",
]


@app.command("status")
def status(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Per model version: windows, predictions, live vs evaluated accuracy, scores, alerts."""
    params = {"model": model} if model else {}
    with connect(target(ctx)) as client:
        found = client.get("/monitor/status", params=params)
    if as_json:
        emit(found, as_json=True)
        return
    rows = [
        {
            "version": f"{v['model']}@{v['version']}",
            "windows": v["windows"],
            "predictions": v["predictions"],
            "live_accuracy": v["live_accuracy"]["accuracy"],
            "labels": v["live_accuracy"]["n"],
            "evaluated_accuracy": v["evaluated_accuracy"],
            "open_alerts": len(v["open_alerts"]),
        }
        for v in found["versions"]
    ]
    labels = {
        "live_accuracy": "live accuracy (from field labels)",
        "labels": "field labels",
        "evaluated_accuracy": "accuracy when packaged (test split)",
    }
    emit(rows, as_json=False, key="versions", labels=labels)
    lag = found.get("monitor") or {}
    cycle = lag.get("last_cycle_s")
    typer.echo(
        f"monitor: {lag.get('lag_s', 0):.1f} s behind ingest "
        f"({lag.get('pending_rows', 0)} telemetry rows waiting)"
        + ("" if cycle is None else f"; latest evaluation took {cycle:.2f} s")
    )


@app.command("alerts")
def alerts(
    ctx: typer.Context,
    kind: Annotated[str | None, typer.Option(help="drift | degradation")] = None,
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    open_only: Annotated[bool, typer.Option("--open", help="only unresolved alerts")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Alerts: kind, scope, detector, score against threshold, when."""
    params: dict[str, str] = {"open_only": str(open_only).lower()}
    if kind:
        params["kind"] = kind
    if model:
        params["model"] = model
    with connect(target(ctx)) as client:
        found = client.get("/monitor/alerts", params=params)
    emit(found, as_json=as_json, columns=ALERT_COLUMNS, key="alerts")


@app.command("evaluate")
def evaluate(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Evaluate the telemetry and labels that arrived since the last evaluation, now."""
    with connect(target(ctx)) as client:
        found = client.post("/monitor/evaluate")
    emit(
        found,
        as_json=as_json,
        columns=["versions", "rows", "labels", "windows", "scores", "errors"],
    )
