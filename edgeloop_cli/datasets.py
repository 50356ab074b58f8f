"""``edgeloop dataset ...``: versioned, validated datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeloop_cli._client import HubClient, connect
from edgeloop_cli._common import JsonFlag, target
from edgeloop_cli.errors import CliError
from edgeloop_cli.output import emit, progress, stderr

app = typer.Typer(
    help="Import, inspect, validate and export dataset versions.", no_args_is_help=True
)

EXPORT_FORMATS = ("npz", "csv", "parquet")
#: the exit status of `dataset import` (the version is stored) and `dataset validate` when the
#: data failed validation; errors (nothing stored) exit 1 too, with {"error", "code"}
VALIDATION_FAILED = 1
SUMMARY = ["ref", "digest", "num_records", "splits", "validation_status", "parent", "created_at"]
LIST_COLUMNS = ["ref", "num_records", "splits", "validation_status", "parent", "created_at"]
LABELS = {"num_records": "records", "validation_status": "validation"}


def _checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """A validation report for people: one row per check (``--json`` has the check data)."""
    rows = []
    for check in report.get("checks", []):
        if check.get("skipped"):
            result = "skipped"
        elif check.get("passed"):
            result = "ok"
        else:
            result = f"FAILED ({check.get('severity', 'error')})"
        rows.append({"check": check.get("name"), "result": result, "detail": check.get("detail")})
    return rows


def _ref_path(ref: str) -> str:
    name, sep, version = ref.partition("@")
    if not sep or not name or not version:
        raise CliError(f"{ref!r} must look like NAME@VERSION (e.g. digits@1)", code="usage")
    return f"/datasets/{name}/versions/{version}"


def _upload(client: HubClient, path: str, *, file: Path, data: dict[str, str]) -> Any:
    with file.open("rb") as fh:
        return client.post(path, files={"file": (file.name, fh)}, data=data)


@app.command("import")
def import_(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="sklearn:digits, synthetic:vibration, or a file")],
    name: Annotated[str, typer.Option("--name", help="dataset name")],
    append: Annotated[
        bool, typer.Option("--append", help="merge into the latest version's records")
    ] = False,
    alpha: Annotated[float, typer.Option(help="significance of the distribution checks")] = 0.01,
    as_json: JsonFlag = False,
) -> None:
    """Create the next version of NAME from SOURCE (validated against the previous one).

    A file (a path, or ``file:PATH``) is read here and its bytes uploaded, with ``--data-dir``
    as with ``--hub``: the hub never reads paths it is given."""
    file = Path(source.removeprefix("file://").removeprefix("file:")).expanduser()
    with connect(target(ctx)) as client, progress(f"importing {source} as {name}"):
        if file.is_file():
            form = {"append": str(append).lower(), "alpha": str(alpha)}
            result = _upload(client, f"/datasets/{name}/versions/upload", file=file, data=form)
        elif ":" in source and not source.startswith("file:"):
            body = {"source": source, "append": append, "alpha": alpha}
            result = client.post(f"/datasets/{name}/versions", json=body)
        else:
            raise CliError(
                f"{source!r} is neither a file here nor a built-in source (e.g. sklearn:digits)",
                code="invalid_input",
            )
    failed = result["validation_status"] == "failed"
    if not as_json:
        verb = "created" if result["created"] else "unchanged, already stored as"
        stderr.print(f"{verb} {result['ref']} ({result['validation_status']})", markup=False)
        if failed:
            stderr.print(_report_text(result["validation"]), markup=False, highlight=False)
    emit(result, as_json=as_json, columns=SUMMARY, labels=LABELS)
    if failed:  # stored, but training is blocked: a script must not carry on as if it passed
        if not as_json:
            stderr.print(
                f"{result['ref']} is stored but failed validation (exit 1): fix the data, or "
                f"edgeloop dataset override {result['ref']} --reason '...'",
                markup=False,
            )
        raise typer.Exit(code=VALIDATION_FAILED)


@app.command("list")
def list_(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="only this dataset")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List dataset versions."""
    with connect(target(ctx)) as client:
        rows = client.get("/datasets", params={"name": name} if name else None)
    emit(rows, as_json=as_json, columns=LIST_COLUMNS, key="datasets", labels=LABELS)


@app.command("show")
def show(ctx: typer.Context, ref: str, as_json: JsonFlag = False) -> None:
    """Show NAME@VERSION (VERSION may be 'latest'): splits, validation, lineage."""
    with connect(target(ctx)) as client:
        result = client.get(_ref_path(ref))
    if as_json:
        emit(result, as_json=True)
        return
    view = {**result, "validation": _checks(result.get("validation") or {})}
    emit(view, as_json=False, labels={**LABELS, "validation": "checks"})


@app.command("validate")
def validate(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=".csv/.parquet/.npz")],
    name: Annotated[str, typer.Option("--name", help="validate as the next version of NAME")],
    alpha: Annotated[float, typer.Option(help="significance of the distribution checks")] = 0.01,
    as_json: JsonFlag = False,
) -> None:
    """Dry run: would FILE pass validation as the next version of NAME? Stores nothing."""
    with connect(target(ctx)) as client, progress(f"validating {file}"):
        report = _upload(
            client, f"/datasets/{name}/validate", file=file, data={"alpha": str(alpha)}
        )
    if as_json:
        emit(report, as_json=True)
    else:  # not rich markup: "[skip]" is text
        stderr.print(report["text"], markup=False, highlight=False)
    if not report["passed"]:
        raise typer.Exit(code=VALIDATION_FAILED)


@app.command("override")
def override(
    ctx: typer.Context,
    ref: str,
    reason: Annotated[str, typer.Option("--reason", help="why this data is fine; kept on record")],
    as_json: JsonFlag = False,
) -> None:
    """Allow training on a version that failed validation (recorded with the reason)."""
    with connect(target(ctx)) as client:
        result = client.post(_ref_path(ref) + "/override", json={"reason": reason})
    emit(result, as_json=as_json, columns=[*SUMMARY, "override_reason"], labels=LABELS)


@app.command("export")
def export(
    ctx: typer.Context,
    ref: str,
    output: Annotated[Path, typer.Argument(help="where to write it: .npz, .csv or .parquet")],
    format: Annotated[
        str | None,
        typer.Option(
            "--format", help="npz, csv or parquet (default: from OUTPUT's suffix, else npz)"
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write a version's records: .npz byte-for-byte as stored, or a .csv / .parquet table
    (id, one column per flattened feature such as px_0_0..px_7_7, label) that `dataset
    import` reads back to the same records."""
    suffix = output.suffix.lower().lstrip(".")
    chosen = format or {"csv": "csv", "parquet": "parquet", "pq": "parquet"}.get(suffix, "npz")
    if chosen not in EXPORT_FORMATS:
        raise CliError(f"--format {chosen!r}: use one of {', '.join(EXPORT_FORMATS)}", code="usage")
    with connect(target(ctx)) as client:
        info = client.get(_ref_path(ref))
        data = client.get(_ref_path(ref) + "/data", params={"format": chosen})
    output.write_bytes(data)
    emit(
        {
            "ref": info["ref"],
            "path": str(output.resolve()),
            "format": chosen,
            "size": len(data),
            "digest": info["digest"],
        },
        as_json=as_json,
    )


def _report_text(validation: dict[str, Any]) -> str:
    """A stored validation report as text (what ``dataset validate`` prints)."""
    from hub.datasets import ValidationReport

    try:
        return ValidationReport.model_validate(validation).render_text()
    except ValueError:
        return "validation failed; see: edgeloop dataset show NAME@VERSION"
