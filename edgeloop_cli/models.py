"""``edgeloop model ...`` and ``edgeloop run ...``: registry and experiment tracking."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from edgeloop_cli._client import connect
from edgeloop_cli._common import JsonFlag, target
from edgeloop_cli.errors import CliError
from edgeloop_cli.output import emit, human, number, print_human, tree

app = typer.Typer(help="The model registry: versions, aliases, lineage.", no_args_is_help=True)
runs = typer.Typer(help="Training runs: params, metrics, artifacts.", no_args_is_help=True)

VERSION_COLUMNS = ["ref", "aliases", "run_id", "metrics", "artifact_size", "created_at"]
RUN_COLUMNS = ["id", "spec", "status", "dataset_version", "code_version", "metrics", "started_at"]
RUN_LIST_COLUMNS = ["id", "spec", "status", "dataset_version", "metrics", "started_at"]
MODEL_LABELS = {"latest_version": "latest"}


def _split(ref: str) -> tuple[str, str]:
    name, sep, selector = ref.partition("@")
    if not sep or not name or not selector:
        raise CliError(
            f"{ref!r} must look like MODEL@VERSION (number, latest or alias)", code="usage"
        )
    return name, selector


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Registered models with their latest version and aliases."""
    with connect(target(ctx)) as client:
        emit(client.get("/models"), as_json=as_json, key="models", labels=MODEL_LABELS)


@app.command("show")
def show(ctx: typer.Context, ref: str, as_json: JsonFlag = False) -> None:
    """MODEL@VERSION (or MODEL to list its versions)."""
    with connect(target(ctx)) as client:
        if "@" not in ref:
            emit(
                client.get(f"/models/{ref}/versions"),
                as_json=as_json,
                columns=VERSION_COLUMNS,
                key="versions",
            )
            return
        name, selector = _split(ref)
        emit(client.get(f"/models/{name}/versions/{selector}"), as_json=as_json)


@app.command("lineage")
def lineage(ctx: typer.Context, ref: str, as_json: JsonFlag = False) -> None:
    """Version -> run -> dataset version (and ancestors) -> code version, and bundles."""
    name, selector = _split(ref)
    with connect(target(ctx)) as client:
        found = client.get(f"/models/{name}/versions/{selector}/lineage")
    if as_json:
        emit(found, as_json=True)
        return
    print_human(_lineage_tree(found))


def _words(*parts: Any) -> Text:
    return Text("  ".join(str(p) for p in parts if p not in (None, "")))


def _lineage_tree(found: dict[str, Any]) -> Any:
    """model version -> run (params, code) -> dataset version -> its ancestors; bundles."""
    mv = found["model_version"]
    aliases = ", ".join(mv.get("aliases") or [])
    root = tree(_words(mv["ref"], f"aliases: {aliases}" if aliases else ""))
    root.add(_words("model", mv.get("artifact_digest"), f"{mv.get('artifact_size')} bytes"))
    if mv.get("metrics"):
        root.add("metrics").add(human(mv["metrics"]))
    run = found.get("run")
    if run is None:
        root.add("run: none (registered without a tracked run)")
    else:
        branch = root.add(_words("run", run["id"], run.get("spec"), run.get("status")))
        if run.get("params"):
            branch.add("params").add(human(run["params"]))
        branch.add(_words("code", found.get("code_version")))
    dataset = found.get("dataset_version")
    if dataset is not None:
        node = root.add(_words("dataset", dataset["ref"], dataset.get("digest")))
        for parent in found.get("dataset_ancestry") or []:
            node = node.add(_words("parent", parent))
    bundles = found.get("bundles") or []
    node = root.add(f"bundles ({len(bundles)})")
    for bundle in bundles:
        size = bundle.get("size")
        node.add(
            _words(
                bundle["digest"],
                f"{number(size) if isinstance(size, float) else size} bytes",
                ", ".join(bundle.get("formats") or []),
            )
        )
    return root


@app.command("alias")
def alias(
    ctx: typer.Context,
    model: str,
    alias: str,
    version: Annotated[int | None, typer.Argument(help="version to point at")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="remove the alias")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Point ALIAS (e.g. production, candidate) at VERSION of MODEL, or --delete it."""
    with connect(target(ctx)) as client:
        if delete:
            client.request("DELETE", f"/models/{model}/aliases/{alias}")
            emit({"model": model, "alias": alias, "deleted": True}, as_json=as_json)
            return
        if version is None:
            raise CliError("give the VERSION to point the alias at, or --delete", code="usage")
        result = client.request(
            "PUT", f"/models/{model}/aliases/{alias}", json={"version": version}
        )
    emit(result, as_json=as_json, columns=VERSION_COLUMNS)


HISTORY_COLUMNS = ["at", "alias", "from_version", "to_version", "promotion", "rollout_id"]


def _promotion(move: dict[str, Any]) -> str:
    """How an alias move was made: by hand, or a rollout's verified / UNVERIFIED promotion
    (with the gates that had no data)."""
    if move.get("verified") is None:
        return "by hand" if not move.get("rollout_id") else ""
    if move["verified"]:
        return "verified"
    evidence = move.get("evidence") or {}
    gates = evidence.get("gates") or {}
    missing = evidence.get("missing") or [g for g, s in gates.items() if s == "insufficient"]
    return "UNVERIFIED" + (f": no data for {', '.join(missing)}" if missing else "")


@app.command("history")
def history(ctx: typer.Context, model: str, as_json: JsonFlag = False) -> None:
    """Every move of MODEL's aliases: when, from and to which version, and whether a rollout's
    promotion was verified by its gates."""
    with connect(target(ctx)) as client:
        moves = client.get(f"/models/{model}/aliases/history")
    if not as_json:
        moves = [{**m, "promotion": _promotion(m)} for m in moves]
    emit(moves, as_json=as_json, columns=HISTORY_COLUMNS, key="moves")


@app.command("register")
def register(
    ctx: typer.Context,
    model: str,
    run_id: Annotated[str, typer.Option("--run", help="a finished training run")],
    artifact: Annotated[str, typer.Option(help="the run artifact holding the model")] = "model",
    as_json: JsonFlag = False,
) -> None:
    """Register a finished run's model as the next version of MODEL."""
    with connect(target(ctx)) as client:
        result = client.post(
            f"/models/{model}/versions", json={"run_id": run_id, "artifact": artifact}
        )
    emit(result, as_json=as_json, columns=VERSION_COLUMNS)


@runs.command("list")
def list_runs(
    ctx: typer.Context,
    spec: Annotated[str | None, typer.Option(help="only runs of this model spec")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Training runs, newest first."""
    with connect(target(ctx)) as client:
        rows = client.get("/runs", params={"spec": spec} if spec else None)
    emit(rows, as_json=as_json, columns=RUN_LIST_COLUMNS, key="runs")


@runs.command("show")
def show_run(ctx: typer.Context, run_id: str, as_json: JsonFlag = False) -> None:
    """One run with its params, final metrics and artifacts."""
    with connect(target(ctx)) as client:
        emit(client.get(f"/runs/{run_id}"), as_json=as_json)
