"""``edgeloop model-code check SPEC``: the model code's CI (build, train, export, quantize, tests).

Exits 1 when any check fails; ``--json`` prints ``{spec, code_version, passed, checks}``.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

app = typer.Typer(
    help="Check model code (a spec) before it trains for real.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _group() -> None:
    """Model code (spec) tools."""


@app.command("check")
def check(
    ctx: typer.Context,
    spec: Annotated[str, typer.Argument(help="built-in spec name or package.module:Class")],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Build SPEC, train a few steps, export to ONNX, check parity, quantize, run its tests."""
    from edgeloop_cli._quiet import native_stderr_captured

    verbose = bool(getattr(ctx.find_root().obj, "verbose", False))  # (this app alone: no -v)
    with native_stderr_captured(verbose=verbose):
        from hub.training.check import check_spec  # lazily: torch is a hub dependency

        report = check_spec(spec)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
    else:
        sys.stdout.write(report.render_text() + "\n")
    sys.stdout.flush()
    if not report.passed:
        raise typer.Exit(code=1)
