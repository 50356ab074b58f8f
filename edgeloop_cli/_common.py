"""Shared option types and the target stored on the typer context."""

from __future__ import annotations

from typing import Annotated

import typer

from edgeloop_cli._client import Target

JsonFlag = Annotated[
    bool, typer.Option("--json", help="print one JSON object on stdout (logs go to stderr)")
]


def target(ctx: typer.Context) -> Target:
    found = ctx.find_root().obj
    if not isinstance(found, Target):  # pragma: no cover - the root callback always sets it
        raise RuntimeError("CLI target missing")
    return found


def parse_pairs(pairs: list[str] | None, *, what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{what} {pair!r} must look like key=value")
        result[key] = value
    return result
