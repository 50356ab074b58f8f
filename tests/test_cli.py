"""The ``edgeloop`` CLI: the JSON contract, errors, and both ways of reaching a hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeloop_cli import main

EDGELOOP = [sys.executable, "-m", "edgeloop_cli"]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(list(args))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, f"stdout must be exactly one JSON object, got {out!r}"
    return code, json.loads(out[0])


def test_dataset_commands_follow_the_json_contract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dd = ["--data-dir", str(tmp_path)]
    code, made = run(
        capsys, *dd, "dataset", "import", "sklearn:digits", "--name", "digits", "--json"
    )
    assert code == 0
    for key in ("name", "version", "digest", "num_records", "splits"):
        assert key in made
    assert made["num_records"] == 1797
    code, shown = run(capsys, *dd, "dataset", "show", "digits@1", "--json")
    assert code == 0 and shown["digest"] == made["digest"]
    assert "parent" in shown and shown["validation"]["passed"] is True  # type: ignore[index]
    code, listed = run(capsys, *dd, "dataset", "list", "--json")
    assert [d["ref"] for d in listed["datasets"]] == ["digits@1"]  # type: ignore[index]
    out = tmp_path / "digits.npz"
    code, exported = run(capsys, *dd, "dataset", "export", "digits@latest", str(out), "--json")
    assert code == 0 and out.stat().st_size == exported["size"]


def test_file_import_validate_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dd = ["--data-dir", str(tmp_path / "hub")]
    rng = np.random.default_rng(3)
    good, shifted = tmp_path / "good.npz", tmp_path / "shifted.npz"
    np.savez(good, X=rng.normal(0, 1, (500, 4)).astype(np.float32), y=rng.integers(0, 2, 500))
    np.savez(shifted, X=rng.normal(2, 1, (500, 4)).astype(np.float32), y=rng.integers(0, 2, 500))
    assert run(capsys, *dd, "dataset", "import", str(good), "--name", "s", "--json")[0] == 0
    code, report = run(capsys, *dd, "dataset", "validate", str(shifted), "--name", "s", "--json")
    assert code == 1 and report["passed"] is False
    code, made = run(
        capsys, *dd, "dataset", "import", str(shifted), "--name", "s", "--append", "--json"
    )
    assert code == 1 and made["validation_status"] == "failed" and made["version"] == 2
    code, fixed = run(capsys, *dd, "dataset", "override", "s@2", "--reason", "ok", "--json")
    assert code == 0 and fixed["validation_status"] == "overridden"


def test_errors_are_json_with_a_code_and_nonzero_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dd = ["--data-dir", str(tmp_path)]
    code, err = run(capsys, *dd, "dataset", "show", "nope@1", "--json")
    assert code == 1 and err["code"] == "not_found" and "nope@1" in str(err["error"])
    code, err = run(capsys, *dd, "dataset", "show", "nope", "--json")
    assert code == 1 and err["code"] == "usage"
    code, err = run(capsys, *dd, "dataset", "import", "missing.csv", "--name", "x", "--json")
    assert code == 1 and err["code"] == "invalid_input"
    code, err = run(capsys, *dd, "model", "alias", "m", "Bad Alias", "1", "--json")
    assert code == 1 and err["code"] == "invalid_request"  # the path pattern refuses it
    code, err = run(capsys, *dd, "dataset", "frobnicate", "--json")
    assert code == 2 and err["code"] == "usage"
    code, err = run(capsys, "--hub", "http://127.0.0.1:9", "model", "list", "--json")
    assert code == 1 and err["code"] == "unreachable"


def test_registry_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hub.core.artifacts import FileArtifactStore
    from hub.core.db import make_engine, session_scope
    from hub.registry import models as registry
    from hub.tables import create_all

    dd = ["--data-dir", str(tmp_path)]
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    create_all(engine)
    store = FileArtifactStore(root=tmp_path / "artifacts")
    with session_scope(engine) as s:
        for blob in (b"v1", b"v2"):
            registry.register_version(s, store, model_name="cnn", data=blob)
    code, moved = run(capsys, *dd, "model", "alias", "cnn", "production", "2", "--json")
    assert code == 0 and moved["aliases"] == ["production"] and moved["version"] == 2
    code, shown = run(capsys, *dd, "model", "show", "cnn@production", "--json")
    assert shown["version"] == 2
    code, listed = run(capsys, *dd, "model", "list", "--json")
    assert listed["models"][0]["aliases"] == {"production": 2}  # type: ignore[index]
    code, lineage = run(capsys, *dd, "model", "lineage", "cnn@1", "--json")
    assert lineage["run"] is None and lineage["model_version"]["ref"] == "cnn@1"  # type: ignore[index]


def test_console_script_runs_as_a_process(tmp_path: Path) -> None:
    env = {**os.environ, "EDGELOOP_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [*EDGELOOP, "device", "add", "cam-1", "--group", "lab", "--tag", "site=berlin", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tags"] == {"site": "berlin"}
    proc = subprocess.run(
        [*EDGELOOP, "device", "list", "--tag", "site=berlin", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert [d["id"] for d in json.loads(proc.stdout)["devices"]] == ["cam-1"]
