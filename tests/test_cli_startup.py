"""In-process commands that need no model runtime start without importing one, nor numpy,
and on a database that carries the current schema do no schema work (the start-up time
itself is measured by ``make bench-cli``, bench/cli.py: a wall-time assertion here would be
flaky on a shared machine; which modules load and which statements run are not)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# seconds each at import: torch ~2, scipy.stats ~1, pandas ~0.4, numpy ~0.1, ...
MODEL_RUNTIMES = [
    "numpy",
    "torch",
    "onnx",
    "onnxruntime",
    "ai_edge_litert",
    "litert_torch",
    "tensorflow",
    "optuna",
    "scipy",
    "sklearn",
    "pandas",
]
WEB_AND_DATABASE = ["fastapi", "starlette", "sqlalchemy", "sqlmodel", "pydantic_settings"]

PROBE = """
import contextlib, io, json, sys
from edgeloop_cli import main

statements = []  # per command: the SQL it ran (a probe with "sql" only: sqlalchemy loads)
if sys.argv[2:] == ["sql"]:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "before_cursor_execute", lambda *a: statements[-1].append(a[2]))
codes = []
for args in json.loads(sys.argv[1]):
    statements.append([])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        codes.append(main(args))
print(json.dumps({"codes": codes, "modules": sorted(sys.modules), "statements": statements}))
"""


def _probe(*commands: list[str], sql: bool = False) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(commands)), *(["sql"] if sql else [])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    found: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return found


def _loaded(*commands: list[str]) -> tuple[list[int], set[str]]:
    found = _probe(*commands)
    return found["codes"], {m.split(".")[0] for m in found["modules"]}


def _in_process(data_dir: Path) -> list[list[str]]:
    dd = ["--data-dir", str(data_dir)]
    return [
        [*dd, "model", "list", "--json"],
        [*dd, "dataset", "list"],
        [*dd, "rollout", "list"],
        [*dd, "device", "list", "--json"],
        [*dd, "monitor", "status"],
        [*dd, "run", "list", "--json"],
    ]


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[list[str]], dict[str, Any]]:
    """The in-process commands, one after the other in one process on a new data dir: what
    they loaded and the SQL each ran."""
    commands = _in_process(tmp_path_factory.mktemp("data"))
    found = _probe(*commands, sql=True)
    assert found["codes"] == [0] * len(commands)
    return commands, found


def test_in_process_commands_load_no_model_runtime(
    in_process: tuple[list[list[str]], dict[str, Any]],
) -> None:
    loaded = {m.split(".")[0] for m in in_process[1]["modules"]}
    assert "fastapi" in loaded  # (the probe did reach the hub in-process)
    assert not loaded & set(MODEL_RUNTIMES), sorted(loaded & set(MODEL_RUNTIMES))


def test_in_process_commands_on_a_current_database_do_no_schema_work(
    in_process: tuple[list[list[str]], dict[str, Any]],
) -> None:
    """The first command makes the database (the whole schema check: ``create_all``); each
    later one finds the schema's fingerprint and checks it with one query: no table checks,
    no catalogue scan, no DDL (~0.2 s of each start on SQLite, more on PostgreSQL)."""
    commands, found = in_process
    first, *later = found["statements"]
    assert any(s.lstrip().upper().startswith("CREATE TABLE") for s in first)
    schema_work = ("CREATE ", "ALTER ", "DROP ", "PRAGMA", "INFORMATION_SCHEMA", "SQLITE_MASTER")
    for command, statements in zip(commands[1:], later, strict=True):
        checks = [s for s in statements if "edgeloop_schema" in s]
        assert checks == ["SELECT fingerprint FROM edgeloop_schema WHERE id = 1"], command
        work = [s for s in statements if any(w in s.upper() for w in schema_work)]
        assert not work, (command, work)


def test_every_table_builds_its_pydantic_model_on_first_use() -> None:
    """Each of the hub's tables (and so their API families) defers its validator and
    serializer (``HubModel``): built at import, all of them cost each command ~0.08 s."""
    from sqlmodel import SQLModel

    from hub.tables.columns import HubModel

    tables = [m.class_ for m in SQLModel._sa_registry.mappers]
    assert len(tables) >= 30
    eager = [t.__name__ for t in tables if not issubclass(t, HubModel)]
    assert not eager, eager


def test_help_and_hub_commands_load_no_hub_server_either() -> None:
    # --hub at a closed port: the command fails (unreachable) after doing all its imports
    codes, loaded = _loaded(["--help"], ["--hub", "http://127.0.0.1:9", "model", "list"])
    assert codes == [0, 1]
    heavy = loaded & {*MODEL_RUNTIMES, *WEB_AND_DATABASE}
    assert not heavy, sorted(heavy)


def test_serves_names_the_modules_of_every_route() -> None:
    """The in-process API includes route modules by a request's first path segment
    (``hub.api.SERVES``): each module's operations must sit under segments that name it, and
    an app built on demand must end with the same OpenAPI document as the whole one."""
    from hub.api import (
        API_PREFIX,
        COLLECTIONS,
        ROUTE_MODULES,
        SERVES,
        create_app,
        include_routes,
        routes_for,
    )
    from hub.core.settings import HubSettings

    settings = HubSettings(data_dir=Path("/nonexistent"), admin_token="t" * 40)

    def paths(app: Any) -> dict[str, Any]:
        found: dict[str, Any] = app.openapi()["paths"]
        return found

    for name in ROUTE_MODULES:
        only = paths(create_app(settings, dashboard=False, routes=[name]))
        assert only, name
        for path in only:
            if path.startswith(API_PREFIX):
                first, _, deeper = path.removeprefix(API_PREFIX).lstrip("/").partition("/")
                assert name in SERVES.get(first, ()), (name, path)
                if not deeper:  # the collection itself
                    assert name in COLLECTIONS.get(first, SERVES[first]), (name, path)
    lazy = create_app(settings, dashboard=False, routes=())
    for first in SERVES:
        include_routes(lazy, routes_for(f"{API_PREFIX}/{first}/x"))
    assert paths(lazy) == paths(create_app(settings, dashboard=False))
    assert routes_for("/nothing-known") == ROUTE_MODULES
    assert routes_for(f"{API_PREFIX}/models?limit=5") == ("models",)
    assert routes_for("/devices/cam-1/enroll") == SERVES["devices"]
