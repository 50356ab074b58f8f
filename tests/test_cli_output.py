"""The CLI's output for people: real tables, whole ids and digests, no JSON text in cells."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from edgeloop_cli import main, output
from hub.core.artifacts import FileArtifactStore
from hub.core.db import make_engine, session_scope
from hub.datasets import service as datasets
from hub.registry import models as registry
from hub.rollouts import service as rollouts
from hub.tables import Device, create_all

JSON_TEXT = ('{"', '["', "{'", "['")  # what a dict or list printed as JSON (or repr) starts with


def human(capsys: pytest.CaptureFixture[str], data_dir: Path, *args: str) -> str:
    assert main(["--data-dir", str(data_dir), *args]) == 0
    out = capsys.readouterr().out
    assert "…" not in out, out  # nothing cut
    assert not any(mark in out for mark in JSON_TEXT), out
    return out


def test_tables_keep_ids_whole_and_nested_data_readable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    create_all(engine)
    store = FileArtifactStore(root=tmp_path / "artifacts")
    with session_scope(engine) as s:
        data, _ = datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
        digests = [data.digest, data.artifact_digest]
        for blob in (b"v1", b"v2"):
            model = registry.register_version(s, store, model_name="cnn", data=blob)
        model_digest = model.artifact_digest
        s.add(Device(id="cam-1", tags={"site": "berlin", "hw": "pi5"}))
        rollout_id = rollouts.create_rollout(
            s,
            model="cnn",
            version="2",
            selector="site=berlin",
            phases="1,100%",
            bundle_digest="sha256:" + "ab" * 32,
            bundle_size=10,
        ).id
    engine.dispose()

    out = human(capsys, tmp_path, "dataset", "show", "digits@1")
    assert all(digest in out for digest in digests)
    assert "train: 1246" in out  # splits as key: value lines
    assert "unique_ids" in out and "1797 ids, all unique" in out  # the checks as a table

    out = human(capsys, tmp_path, "model", "lineage", "cnn@2")
    assert "cnn@2" in out and "└──" in out and model_digest in out  # a tree
    out = human(capsys, tmp_path, "model", "list")
    assert "latest" in out

    out = human(capsys, tmp_path, "rollout", "list")
    assert rollout_id in out  # whole: it is what the next command takes
    out = human(capsys, tmp_path, "rollout", "show", rollout_id)
    assert rollout_id in out and "sha256:" + "ab" * 32 in out and "100%" in out
    out = human(capsys, tmp_path, "device", "list")
    assert "site: berlin" in out


def test_a_narrow_terminal_folds_long_values_and_never_cuts_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = io.StringIO()
    terminal = Console(file=screen, width=60, force_terminal=True, color_system=None)
    monkeypatch.setattr(output, "stdout", terminal)
    rows = [
        {"id": "ro-" + "7" * 12, "digest": "sha256:" + "c" * 64, "note": "a few words " * 4},
        {"id": "ro-" + "8" * 12, "digest": "sha256:" + "d" * 64, "note": None},
    ]
    output.emit(rows, as_json=False, key="rows")
    text = screen.getvalue()
    assert "…" not in text
    cells = "".join(line.split("│")[2] for line in text.splitlines() if line.count("│") > 2)
    assert "c" * 64 in cells.replace(" ", "")  # folded over lines, every character there
    assert "ro-" + "7" * 12 in text  # an id that fits stays on one line


def test_values_for_people() -> None:
    assert output.number(92.80575539568345) == "92.8058"
    assert output.number(1600640.3) == "1,600,640"
    assert output.metric_label("val_accuracy") == "validation accuracy"
    assert output.metric_label("test_anomaly_decision_accuracy") == (
        "test anomaly decision accuracy"
    )
    assert output.label("best_value", {"best_value": "best validation accuracy"}) == (
        "best validation accuracy"
    )
    assert output.label("num_records") == "num records"
