"""CLI start-up: wall time of ``edgeloop`` commands that need no model runtime, as a user
runs them (a fresh process each time), in-process on a data dir and through ``--hub``.

Target: every in-process command at most 1 s (median of RUNS). Each run also records the
child's CPU time (user + system, from ``getrusage(RUSAGE_CHILDREN)``), which other processes'
load changes less than wall time, and the load average at the start and the end. Measured in
the same run: the interpreter alone and the import floor of the in-process path (FastAPI +
sqlmodel + the test client), which no command can go below.
``EDGELOOP_BENCH_CLI_BEFORE=/path/to/older/tree`` measures that source tree the same way,
interleaved, for a before/after table (``git archive COMMIT | tar -x -C DIR``).
"""

from __future__ import annotations

import compileall
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._result import BenchResult

RUNS = 7
TARGET_S = 1.0
ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [
    ["model", "list"],
    ["dataset", "list"],
    ["rollout", "list"],
    ["device", "list"],
    ["monitor", "status"],
]
FLOOR = "import fastapi, sqlmodel, starlette.testclient"
FLOOR_CASE = "import floor (in-process)"
SERVE = """
import sys, uvicorn
from hub.api import create_app
from hub.core.settings import load_settings
app = create_app(load_settings(data_dir=sys.argv[1]))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def _seed(data_dir: Path) -> None:
    """A dataset, two model versions, a device and a rollout: lists with rows in them."""
    from hub.core.artifacts import FileArtifactStore
    from hub.core.db import make_engine, session_scope
    from hub.datasets import service as datasets
    from hub.registry import models as registry
    from hub.rollouts import service as rollouts
    from hub.tables import Device, create_all

    engine = make_engine(f"sqlite:///{data_dir / 'hub.db'}")
    create_all(engine)
    store = FileArtifactStore(root=data_dir / "artifacts")
    with session_scope(engine) as s:
        datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
        for blob in (b"v1", b"v2"):
            registry.register_version(s, store, model_name="cnn", data=blob)
        s.add(Device(id="cam-1", tags={"site": "berlin"}))
        rollouts.create_rollout(
            s,
            model="cnn",
            version="2",
            selector="site=berlin",
            phases="1,100%",
            bundle_digest="sha256:" + "0" * 64,
            bundle_size=10,
        )
    engine.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(argv: list[str], *, tree: Path, token: str) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one fresh process running ``argv``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "EDGELOOP_ADMIN_TOKEN": token}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=tree, env=env, capture_output=True, timeout=120)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv}: exit {proc.returncode}: {proc.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def _cases(data_dir: Path, hub_url: str, token: str) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "edgeloop_cli"]
    cases = {"--help": [*cli, "--help"]}
    for command in COMMANDS:
        name = " ".join(command)
        cases[f"{name} (in-process)"] = [*cli, "--data-dir", str(data_dir), *command]
        cases[f"{name} (--hub)"] = [*cli, "--hub", hub_url, "--token", token, *command]
    cases["python -c pass"] = [sys.executable, "-c", "pass"]
    cases[FLOOR_CASE] = [sys.executable, "-c", FLOOR]
    return cases


def _measure(
    cases: dict[str, list[str]], trees: dict[str, Path], *, token: str
) -> dict[str, dict[str, Any]]:
    """Each case RUNS times, the trees interleaved (machine load hits both alike): wall time
    and the child's CPU time (user + system: less sensitive to other processes' load)."""
    walls: dict[str, dict[str, list[float]]] = {t: {c: [] for c in cases} for t in trees}
    cpus: dict[str, dict[str, list[float]]] = {t: {c: [] for c in cases} for t in trees}
    for _ in range(RUNS):
        for case, argv in cases.items():
            for tree_name, tree in trees.items():
                if tree_name != "after" and case in ("python -c pass", FLOOR_CASE):
                    continue
                wall, cpu = _run(argv, tree=tree, token=token)
                walls[tree_name][case].append(wall)
                cpus[tree_name][case].append(cpu)
    return {
        tree_name: {
            case: {
                "median_s": round(statistics.median(v), 3),
                "cpu_median_s": round(statistics.median(cpus[tree_name][case]), 3),
                "runs_s": [round(x, 3) for x in v],
                "cpu_runs_s": [round(x, 3) for x in cpus[tree_name][case]],
            }
            for case, v in by_case.items()
            if v
        }
        for tree_name, by_case in walls.items()
    }


def _compile(tree: Path) -> None:
    """Byte-code for the tree's modules, as an installed package has it (with
    PYTHONDONTWRITEBYTECODE set, or a fresh ``git archive``, every run would compile them)."""
    compileall.compile_dir(tree, quiet=1, rx=re.compile(r"/\.|/tests/|/bench/results/"))


def run() -> BenchResult:
    trees = {"after": ROOT}
    before = os.environ.get("EDGELOOP_BENCH_CLI_BEFORE")
    if before:
        trees["before"] = Path(before).resolve()
    for tree in trees.values():
        _compile(tree)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        _seed(data_dir)
        token = "b" * 40  # the hub's and the in-process commands' admin token
        port = _free_port()
        env = {**os.environ, "EDGELOOP_ADMIN_TOKEN": token, "PYTHONPATH": str(ROOT)}
        server = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(data_dir), str(port)], cwd=ROOT, env=env
        )
        hub_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{hub_url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the benchmark's hub did not start")
                time.sleep(0.2)
            load_start = os.getloadavg()
            measured = _measure(_cases(data_dir, hub_url, token), trees, token=token)
        finally:
            server.terminate()
            server.wait(timeout=30)
    after = measured["after"]
    in_process = {c: r["median_s"] for c, r in after.items() if c.endswith("(in-process)")}
    in_process.pop(FLOOR_CASE)
    worst = max(in_process.values())
    cpu = {c: after[c]["cpu_median_s"] for c in in_process}
    details: dict[str, Any] = {
        "worst_in_process_s": worst,
        "worst_in_process": max(in_process, key=in_process.__getitem__),
        "worst_in_process_cpu_s": max(cpu.values()),
        "import_floor_cpu_s": after[FLOOR_CASE]["cpu_median_s"],
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "help_s": after["--help"]["median_s"],
        "model_list_in_process_s": after["model list (in-process)"]["median_s"],
        "model_list_hub_s": after["model list (--hub)"]["median_s"],
        "import_floor_s": after[FLOOR_CASE]["median_s"],
        "python_s": after["python -c pass"]["median_s"],
        "runs": RUNS,
        "after": after,
    }
    if "before" in measured:
        details["before_tree"] = str(trees["before"])
        details["before"] = measured["before"]
        before_in_process = [r for c, r in measured["before"].items() if c.endswith("(in-process)")]
        details["before_worst_in_process_s"] = max(r["median_s"] for r in before_in_process)
        details["before_worst_in_process_cpu_s"] = max(r["cpu_median_s"] for r in before_in_process)
    return BenchResult(
        name="cli",
        baseline=f"the {TARGET_S:g} s target (import floor {details['import_floor_s']} s, "
        "same run)",
        ratio=worst / TARGET_S,
        target="<= 1.0 (every in-process command, median)",
        met=worst <= TARGET_S,
        details=details,
    )


if __name__ == "__main__":
    result = run()
    print(result.line(), "->", result.write())
