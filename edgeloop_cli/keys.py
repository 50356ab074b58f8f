"""``edgeloop keys show|rotate``: the bundle signing key and its rotation."""

from __future__ import annotations

import typer

from edgeloop_cli._client import connect
from edgeloop_cli._common import JsonFlag, target
from edgeloop_cli.output import emit

app = typer.Typer(help="The hub's bundle signing key.", no_args_is_help=True)


@app.command("show")
def show(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The current key id, retired key ids, and which key each device trusts."""
    with connect(target(ctx)) as client:
        emit(client.get("/keys"), as_json=as_json)


@app.command("rotate")
def rotate(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """A new signing key; the old one is retired and signs each device's RotateKey.

    A running hub (``hub serve``) sends the commands; devices offline get them when they
    come back. Bundles packaged from now on carry the new key: re-package versions that
    devices which already rotated should still be able to install."""
    with connect(target(ctx)) as client:
        emit(client.post("/keys/rotate"), as_json=as_json)
