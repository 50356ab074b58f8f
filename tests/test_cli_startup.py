"""In-process commands that need no model runtime start without importing one (the start-up
time itself is measured by ``make bench-cli``, bench/cli.py: a wall-time assertion here
would be flaky on a shared machine; which modules load is not)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

# seconds each at import: torch ~2, scipy.stats ~1, pandas ~0.4, ...
MODEL_RUNTIMES = [
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

codes = []
for args in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        codes.append(main(args))
print(json.dumps({"codes": codes, "modules": sorted(sys.modules)}))
"""


def _loaded(*commands: list[str]) -> tuple[list[int], set[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(commands))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    return found["codes"], {m.split(".")[0] for m in found["modules"]}


def test_in_process_commands_load_no_model_runtime(tmp_path: Path) -> None:
    dd = ["--data-dir", str(tmp_path)]
    commands = [
        [*dd, "model", "list", "--json"],
        [*dd, "dataset", "list"],
        [*dd, "rollout", "list"],
        [*dd, "device", "list", "--json"],
        [*dd, "monitor", "status"],
        [*dd, "run", "list", "--json"],
    ]
    codes, loaded = _loaded(*commands)
    assert codes == [0] * len(commands)
    assert "fastapi" in loaded  # (the probe did reach the hub in-process)
    assert not loaded & set(MODEL_RUNTIMES), sorted(loaded & set(MODEL_RUNTIMES))


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
    from hub.api import API_PREFIX, ROUTE_MODULES, SERVES, create_app, include_routes, routes_for
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
                first = path.removeprefix(API_PREFIX).lstrip("/").split("/", 1)[0]
                assert name in SERVES.get(first, ()), (name, path)
    lazy = create_app(settings, dashboard=False, routes=())
    for first in SERVES:
        include_routes(lazy, routes_for(f"{API_PREFIX}/{first}/x"))
    assert paths(lazy) == paths(create_app(settings, dashboard=False))
    assert routes_for("/nothing-known") == ROUTE_MODULES
