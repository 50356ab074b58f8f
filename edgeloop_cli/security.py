"""``edgeloop device token|enroll|revoke|credentials`` and ``edgeloop token ...``.

Secrets (enrolment tokens, API tokens, MQTT passwords) are printed once, when created.
"""

from __future__ import annotations

from typing import Annotated

import typer

from edgeloop_cli._client import connect
from edgeloop_cli._common import JsonFlag, parse_pairs, target
from edgeloop_cli.output import emit

enroll_tokens = typer.Typer(help="Enrolment tokens devices trade for credentials.")
api_tokens = typer.Typer(help="Admin-API tokens with scopes (read, admin).", no_args_is_help=True)
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="key=value, repeatable")]
TOKEN_COLUMNS = ["id", "name", "group", "tags", "uses", "max_uses", "expires_at", "revoked_at"]
API_COLUMNS = ["id", "name", "scope", "created_at", "revoked_at"]
QuietFlag = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="print only the token (for a shell variable: TOKEN=$(... -q))"
    ),
]


def _created(made: dict[str, object], *, as_json: bool, quiet: bool) -> None:
    if quiet and not as_json:
        print(made["token"])
    else:
        emit(made, as_json=as_json)


@enroll_tokens.command("create")
def token_create(
    ctx: typer.Context,
    group: Annotated[str, typer.Option(help="group of the devices that enrol with it")] = "default",
    tag: TagOpt = None,
    uses: Annotated[int, typer.Option(help="how many enrolments it allows", min=1)] = 1,
    expires_in: Annotated[int, typer.Option(help="lifetime in seconds", min=1)] = 24 * 3600,
    name: Annotated[str, typer.Option(help="a note for operators")] = "",
    quiet: QuietFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Create an enrolment token (shown once)."""
    body = {
        "group": group,
        "tags": parse_pairs(tag, what="tag"),
        "max_uses": uses,
        "expires_in_s": expires_in,
        "name": name,
    }
    with connect(target(ctx)) as client:
        _created(client.post("/enrollment-tokens", json=body), as_json=as_json, quiet=quiet)


@enroll_tokens.command("list")
def token_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    with connect(target(ctx)) as client:
        found = client.get("/enrollment-tokens")
    emit(found, as_json=as_json, columns=TOKEN_COLUMNS, key="tokens")


@enroll_tokens.command("revoke")
def token_revoke(ctx: typer.Context, token_id: int, as_json: JsonFlag = False) -> None:
    with connect(target(ctx)) as client:
        emit(client.post(f"/enrollment-tokens/{token_id}/revoke"), as_json=as_json)


def enroll(
    ctx: typer.Context,
    device_id: str,
    group: Annotated[str | None, typer.Option(help="device group")] = None,
    tag: TagOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Enrol a device as admin: prints its MQTT password once (re-enrolling rotates it)."""
    body = {"group": group, "tags": parse_pairs(tag, what="tag")}
    with connect(target(ctx)) as client:
        emit(client.post(f"/devices/{device_id}/enroll", json=body), as_json=as_json)


def revoke(ctx: typer.Context, device_id: str, as_json: JsonFlag = False) -> None:
    """Remove a device's broker login; the broker disconnects it."""
    with connect(target(ctx)) as client:
        emit(client.post(f"/devices/{device_id}/revoke"), as_json=as_json)


@api_tokens.command("create")
def api_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="who or what uses it")],
    scope: Annotated[str, typer.Option(help="read | admin")] = "read",
    quiet: QuietFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Create an API token (shown once)."""
    with connect(target(ctx)) as client:
        made = client.post("/tokens", json={"name": name, "scope": scope})
    _created(made, as_json=as_json, quiet=quiet)


@api_tokens.command("list")
def api_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    with connect(target(ctx)) as client:
        emit(client.get("/tokens"), as_json=as_json, columns=API_COLUMNS, key="tokens")


@api_tokens.command("revoke")
def api_revoke(ctx: typer.Context, token_id: int, as_json: JsonFlag = False) -> None:
    with connect(target(ctx)) as client:
        emit(client.post(f"/tokens/{token_id}/revoke"), as_json=as_json)
