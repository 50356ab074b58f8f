"""``edgeloop trigger ...``: continuous-training policies and their triggers."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from edgeloop_cli._client import connect
from edgeloop_cli._common import JsonFlag, parse_pairs, target
from edgeloop_cli.output import emit

app = typer.Typer(help="Continuous training: policies and triggers.", no_args_is_help=True)
EVENT_COLUMNS = ["id", "model_name", "kind", "status", "reason", "run_id", "rollout_id", "at"]


@app.command("policy")
def policy(
    ctx: typer.Context,
    model: str,
    spec: Annotated[str, typer.Option("--spec", help="model spec to train")],
    dataset: Annotated[str, typer.Option("--dataset", help="dataset NAME (its latest version)")],
    every: Annotated[int | None, typer.Option(help="schedule: seconds between runs")] = None,
    new_data: Annotated[bool, typer.Option(help="train when a new dataset version lands")] = True,
    new_code: Annotated[bool, typer.Option(help="train when the spec's code changes")] = True,
    drift: Annotated[bool, typer.Option(help="train on a drift alert")] = True,
    degradation: Annotated[bool, typer.Option(help="train when live accuracy drops")] = True,
    field_data: Annotated[
        bool, typer.Option(help="merge labelled field samples into the dataset before such runs")
    ] = True,
    min_field_records: Annotated[int, typer.Option(help="labelled field samples needed")] = 50,
    min_incident_records: Annotated[
        int,
        typer.Option(
            help="labelled field samples from the incident's scopes since its first alert, "
            "needed before a drift/degradation run"
        ),
    ] = 1000,
    fine_tune_epochs: Annotated[
        int,
        typer.Option(
            help="drift/degradation runs fine-tune the drifted version this many epochs "
            "(0: train afresh)"
        ),
    ] = 10,
    field_device_share: Annotated[
        float, typer.Option(help="no device keeps more than max(2/N, this) of the field data")
    ] = 0.1,
    canary: Annotated[
        str | None,
        typer.Option(help="selector: package each retrained version and roll it out as a canary"),
    ] = None,
    canary_phases: Annotated[str, typer.Option(help="phases of that canary")] = "1,50%,100%",
    debounce: Annotated[int, typer.Option(help="seconds between two triggered runs")] = 300,
    param: Annotated[list[str] | None, typer.Option("--param", help="key=value")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create or replace MODEL's training policy."""
    from hub.specs import param_value  # lazily: the specs import torch

    params = {k: param_value(v) for k, v in parse_pairs(param, what="param").items()}
    body: dict[str, Any] = {
        "spec": spec,
        "dataset": dataset,
        "params": params,
        "schedule_interval_s": every,
        "on_new_data": new_data,
        "on_new_code": new_code,
        "on_drift": drift,
        "on_degradation": degradation,
        "field_data": field_data,
        "min_field_records": min_field_records,
        "min_incident_records": min_incident_records,
        "field_device_share": field_device_share,
        "fine_tune_epochs": fine_tune_epochs,
        "canary": {"selector": canary, "phases": canary_phases} if canary else {},
        "debounce_s": debounce,
    }
    with connect(target(ctx)) as client:
        emit(client.request("PUT", f"/triggers/policies/{model}", json=body), as_json=as_json)


@app.command("run")
def run(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Evaluate every policy now and start the runs that are due (what the hub does each minute)."""
    with connect(target(ctx)) as client:
        found = client.post("/triggers/run")
    emit(found["events"], as_json=as_json, columns=EVENT_COLUMNS, key="events")


@app.command("now")
def now(
    ctx: typer.Context,
    model: str,
    reason: Annotated[str, typer.Option("--reason", help="why; kept with the event")],
    as_json: JsonFlag = False,
) -> None:
    """Train MODEL now, on demand (one run per model at a time)."""
    with connect(target(ctx)) as client:
        found = client.post(f"/triggers/policies/{model}/run", json={"reason": reason})
    emit(found, as_json=as_json)


@app.command("events")
def events(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Every trigger: kind, reason, status, the run it started and the canary it began."""
    params = {"model": model} if model else {}
    with connect(target(ctx)) as client:
        found = client.get("/triggers/events", params=params)
    emit(found["events"], as_json=as_json, columns=EVENT_COLUMNS, key="events")
