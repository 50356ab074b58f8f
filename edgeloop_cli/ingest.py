"""``edgeloop ingest ...``: what the hub's telemetry ingest received and what is missing."""

from __future__ import annotations

from typing import Annotated

import typer

from edgeloop_cli._client import connect
from edgeloop_cli._common import JsonFlag, target
from edgeloop_cli.output import emit

app = typer.Typer(help="Telemetry ingest: counters and sequence gaps.", no_args_is_help=True)


@app.command("stats")
def stats(
    ctx: typer.Context,
    device: Annotated[str | None, typer.Option(help="only this device")] = None,
    only_gaps: Annotated[bool, typer.Option(help="list only streams with missing seqs")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Ingest counters (of a running hub) and per-device missing sequence numbers."""
    params: dict[str, str] = {"only_gaps": str(only_gaps).lower()}
    if device:
        params["device_id"] = device
    with connect(target(ctx)) as client:
        emit(client.get("/ingest/stats", params=params), as_json=as_json)
