"""``edgeloop trigger ...``: continuous-training policies and their triggers (``--data-dir``)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from hub.cli._common import JsonFlag, parse_pairs, target
from hub.cli._output import emit
from hub.errors import InvalidInput

app = typer.Typer(help="Continuous training: policies and triggers.", no_args_is_help=True)
EVENT_COLUMNS = ["id", "model_name", "kind", "status", "reason", "run_id", "at"]


def _hub(ctx: typer.Context) -> Any:
    if target(ctx).hub_url:
        raise InvalidInput("triggers run where the hub's database is: use --data-dir")
    from hub.cli.training import _local

    return _local(target(ctx))


def _event(event: Any) -> dict[str, Any]:
    return dict(event.model_dump(mode="json"))


@app.command("policy")
def policy(
    ctx: typer.Context,
    model: str,
    spec: Annotated[str, typer.Option("--spec", help="model spec to train")],
    dataset: Annotated[str, typer.Option("--dataset", help="dataset NAME (its latest version)")],
    every: Annotated[int | None, typer.Option(help="schedule: seconds between runs")] = None,
    new_data: Annotated[bool, typer.Option(help="train when a new dataset version lands")] = True,
    new_code: Annotated[bool, typer.Option(help="train when the spec's code changes")] = True,
    debounce: Annotated[int, typer.Option(help="seconds between two triggered runs")] = 300,
    param: Annotated[list[str] | None, typer.Option("--param", help="key=value")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create or replace MODEL's training policy."""
    from hub.db import session_scope
    from hub.specs._base import param_value
    from hub.triggers import set_policy

    _, engine, _ = _hub(ctx)
    params = {k: param_value(v) for k, v in parse_pairs(param, what="param").items()}
    with session_scope(engine) as s:
        found = set_policy(
            s,
            model_name=model,
            spec=spec,
            dataset=dataset,
            params=params,
            schedule_interval_s=every,
            on_new_data=new_data,
            on_new_code=new_code,
            debounce_s=debounce,
        )
        emit(found.model_dump(mode="json"), as_json=as_json)


@app.command("run")
def run(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Evaluate every policy now and start the runs that are due (what the hub does each minute)."""
    from hub.triggers import run_triggers

    _, engine, store = _hub(ctx)
    emit(
        [_event(e) for e in run_triggers(engine, store)],
        as_json=as_json,
        columns=EVENT_COLUMNS,
        key="events",
    )


@app.command("now")
def now(
    ctx: typer.Context,
    model: str,
    reason: Annotated[str, typer.Option("--reason", help="why; kept with the event")],
    as_json: JsonFlag = False,
) -> None:
    """Train MODEL now, on demand (one run per model at a time)."""
    from hub.triggers import trigger_now

    _, engine, store = _hub(ctx)
    emit(_event(trigger_now(engine, store, model_name=model, reason=reason)), as_json=as_json)


@app.command("events")
def events(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Every trigger: kind, reason, status and the run it started."""
    from hub.db import session_scope
    from hub.triggers import list_events

    _, engine, _ = _hub(ctx)
    with session_scope(engine) as s:
        rows = [_event(e) for e in list_events(s, model_name=model)]
    emit(rows, as_json=as_json, columns=EVENT_COLUMNS, key="events")
