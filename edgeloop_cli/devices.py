"""``edgeloop device ...``: the device registry."""

from __future__ import annotations

from typing import Annotated

import typer

from edgeloop_cli._client import connect
from edgeloop_cli._common import JsonFlag, parse_pairs, target
from edgeloop_cli.output import emit

app = typer.Typer(help="The device registry: ids, groups, tags.", no_args_is_help=True)
COLUMNS = ["id", "group", "tags", "online", "last_seen_at"]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="key=value, repeatable")]


@app.command("add")
def add(
    ctx: typer.Context,
    device_id: str,
    group: Annotated[str, typer.Option(help="device group")] = "default",
    tag: TagOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Register a device."""
    body = {"id": device_id, "group": group, "tags": parse_pairs(tag, what="tag")}
    with connect(target(ctx)) as client:
        emit(client.post("/devices", json=body), as_json=as_json, columns=COLUMNS)


@app.command("list")
def list_(
    ctx: typer.Context,
    group: Annotated[str | None, typer.Option(help="only this group")] = None,
    tag: TagOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Devices, filtered by group and tags."""
    params: dict[str, str | list[str]] = {"tag": tag or []}
    if group:
        params["group"] = group
    with connect(target(ctx)) as client:
        emit(client.get("/devices", params=params), as_json=as_json, columns=COLUMNS, key="devices")


@app.command("show")
def show(ctx: typer.Context, device_id: str, as_json: JsonFlag = False) -> None:
    with connect(target(ctx)) as client:
        emit(client.get(f"/devices/{device_id}"), as_json=as_json)


QUARANTINE_COLUMNS = ["device_id", "model", "rate", "baseline", "labels", "at", "reason"]


@app.command("quarantine")
def quarantine(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    lifted: Annotated[bool, typer.Option(help="list lifted quarantines instead")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Devices whose labels are kept out of retraining and canary gates."""
    params: dict[str, str] = {"lifted": str(lifted).lower()}
    if model:
        params["model"] = model
    with connect(target(ctx)) as client:
        found = client.get("/devices/quarantine", params=params)
    emit(found, as_json=as_json, columns=QUARANTINE_COLUMNS, key="quarantine")


@app.command("unquarantine")
def unquarantine(
    ctx: typer.Context,
    device_id: str,
    reason: Annotated[str, typer.Option(help="why its labels can be trusted (kept)")],
    model: Annotated[str | None, typer.Option(help="only this model's quarantine")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Lift a device's label quarantine."""
    body = {"reason": reason, "model": model}
    with connect(target(ctx)) as client:
        found = client.post(f"/devices/{device_id}/quarantine/lift", json=body)
    emit(found, as_json=as_json, columns=QUARANTINE_COLUMNS, key="quarantine")


@app.command("remove")
def remove(ctx: typer.Context, device_id: str, as_json: JsonFlag = False) -> None:
    with connect(target(ctx)) as client:
        client.request("DELETE", f"/devices/{device_id}")
    emit({"id": device_id, "removed": True}, as_json=as_json)
