"""``edgeloop cluster status``: the hub replicas on one database, their components and the
singletons' leases."""

from __future__ import annotations

import typer

from edgeloop_cli._client import connect
from edgeloop_cli._common import JsonFlag, target
from edgeloop_cli.output import emit

app = typer.Typer(help="Several hub replicas on one database.", no_args_is_help=True)


@app.command("status")
def status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Replicas (alive or not), the live replicas of each component, each lease's holder."""
    with connect(target(ctx)) as client:
        emit(client.get("/cluster"), as_json=as_json)
