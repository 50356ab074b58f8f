"""``edgeloop bundle ...``: check signed model bundles, offline, as an agent would."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from edgeloop_cli._client import Target, connect
from edgeloop_cli._common import JsonFlag
from edgeloop_cli.errors import CliError
from edgeloop_cli.output import emit, emit_error, stderr

if TYPE_CHECKING:  # the rest on use: every command's start-up imports this module
    from model_packager.signing import Ed25519PublicKey

app = typer.Typer(help="Verify signed model bundles.", no_args_is_help=True)

SUMMARY = ["valid", "reason", "name", "version", "digest", "key_id"]


@app.callback()
def _bundles() -> None:
    """Verify signed model bundles (the same checks an agent runs before installing)."""


class _NoKey(CliError):
    """No usable public key to verify with (``code`` says why)."""


def _data_dir(ctx: typer.Context) -> Path:
    from hub.core.settings import SettingsError, load_settings

    found = ctx.find_root().obj
    if isinstance(found, Target) and found.data_dir:
        return Path(found.data_dir).expanduser().resolve()
    try:
        return load_settings().data_dir
    except (SettingsError, ValidationError) as exc:
        raise _NoKey(
            f"no --public-key and no usable data dir: {exc}", code="no_public_key"
        ) from exc


def _hub_key(ctx: typer.Context) -> dict[str, str] | None:
    """The running hub's current public key (``{"key_id", "pem"}``) under ``--hub``, else None:
    a CLI talking to a hub must never sign or verify with a key of its own machine."""
    found = ctx.find_root().obj
    if not (isinstance(found, Target) and found.hub_url):
        return None
    with connect(found) as client:
        key: dict[str, str] = client.get("/keys/public")
    return key


def _trusted_key(ctx: typer.Context, public_key: Path | None) -> Ed25519PublicKey:
    """The key to verify with: --public-key FILE, else the hub's own signing key (from the
    hub under ``--hub``, from the data dir in-process)."""
    from hub.security.keys import bundle_signing_key_path
    from model_packager.signing import (
        InsecureKeyFileError,
        KeyMaterialError,
        load_private_key,
        load_public_key,
    )

    try:
        if public_key is not None:
            return load_public_key(public_key)
        from_hub = _hub_key(ctx)
        if from_hub is not None:
            return load_public_key(from_hub["pem"].encode())
        path = bundle_signing_key_path(_data_dir(ctx))
        if not path.exists():
            raise _NoKey(
                f"no public key to verify with: pass --public-key FILE, or --data-dir of the "
                f"hub that signed the bundle (no signing key at {path})",
                code="no_public_key",
            )
        return load_private_key(path).public_key()
    except InsecureKeyFileError as exc:
        raise _NoKey(str(exc), code="insecure_key_file") from exc
    except KeyMaterialError as exc:
        raise _NoKey(str(exc), code="invalid_public_key") from exc


@app.command("verify")
def verify(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="the bundle file", show_default=False)],
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="the hub's public key: raw 32 bytes, PEM, hex or base64 "
            "(default: the signing key in the data dir)",
            show_default=False,
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check FILE's structure, signature and digests; exit 1 when it is not valid."""
    from model_packager.bundle import verify_bundle
    from model_packager.signing import key_id

    try:
        key = _trusted_key(ctx, public_key)
    except _NoKey as exc:
        emit_error(message=exc.message, code=exc.code, as_json=as_json)
        raise typer.Exit(code=2) from None
    result = verify_bundle(file, public_key=key)
    retired = False
    if not result.valid and public_key is None:
        # signed before a key rotation? the hub keeps its retired keys (hub.security.keys)
        for old in _retired_public_keys(ctx):
            again = verify_bundle(file, public_key=old)
            if again.valid:
                result, key, retired = again, old, True
                break
    manifest: dict[str, Any] = result.manifest or {}
    emit(
        {
            "valid": result.valid,
            "reason": result.reason,
            "digest": result.digest,
            "name": manifest.get("name"),
            "version": manifest.get("version"),
            "key_id": key_id(key),
            "retired_key": retired,
            "files": sorted(manifest.get("files", {})),
        },
        as_json=as_json,
        columns=SUMMARY,
    )
    if retired and not as_json:
        stderr.print(
            "note: signed by a retired key; devices that rotated refuse it: re-package it",
            highlight=False,
        )
    if not result.valid:
        if not as_json:
            stderr.print(f"[bold red]invalid bundle[/]: {result.reason}", highlight=False)
        raise typer.Exit(code=1)


def _retired_public_keys(ctx: typer.Context) -> list[Ed25519PublicKey]:
    from hub.security.keys import retired_key, retired_key_ids

    try:
        data_dir = _data_dir(ctx)
    except _NoKey:
        return []
    keys = []
    for kid in reversed(retired_key_ids(data_dir)):  # the most recently retired first
        private = retired_key(data_dir, kid)
        if private is not None:
            keys.append(private.public_key())
    return keys


@app.command("public-key")
def public_key_cmd(
    ctx: typer.Context,
    out: Annotated[
        Path | None, typer.Option("--out", help="write the PEM public key to this file")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """The hub's bundle-signing public key, for provisioning devices (agents verify with it).

    Under ``--hub`` the running hub's key; in-process the data dir's (created on first use)."""
    from hub.security.keys import bundle_signing_key_path
    from model_packager.signing import (
        InsecureKeyFileError,
        key_id,
        load_or_create_private_key,
        public_key_pem,
    )

    from_hub = _hub_key(ctx)
    if from_hub is not None:
        kid, pem = from_hub["key_id"], from_hub["pem"]
    else:
        path = bundle_signing_key_path(_data_dir(ctx))
        try:
            private = load_or_create_private_key(path)
        except InsecureKeyFileError as exc:
            emit_error(message=str(exc), code="insecure_key_file", as_json=as_json)
            raise typer.Exit(code=2) from None
        kid, pem = key_id(private.public_key()), public_key_pem(private).decode()
    if out is not None:
        out.write_text(pem)
    emit(
        {"key_id": kid, "pem": pem, "path": str(out) if out else None},
        as_json=as_json,
        columns=["key_id", "path"],
    )
