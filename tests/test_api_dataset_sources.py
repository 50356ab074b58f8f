"""Datasets over the API come from named built-in sources or uploads, never from a path on
the hub: ``file:``, absolute and relative paths and ``..`` are refused with one message that
says nothing about what exists there. The CLI uploads a local file's bytes instead, in
process (``--data-dir``) and over HTTP (``--hub``) alike."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from edgeloop_cli import main
from hub.api import create_app
from hub.core.settings import HubSettings
from tests.fixtures.live_api import live_api

TOKEN = "s" * 40


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = HubSettings(data_dir=tmp_path / "hub", admin_token=TOKEN)  # type: ignore[arg-type]
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def _csv(path: Path, rows: int = 60) -> Path:
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"a": rng.normal(0, 1, rows), "b": rng.normal(5, 1, rows)})
    frame["label"] = (frame["a"] > 0).astype(int)
    frame.to_csv(path, index=False)
    return path


def test_paths_are_refused_alike_whether_or_not_they_exist(
    client: TestClient, tmp_path: Path
) -> None:
    real = _csv(tmp_path / "field.csv")
    (tmp_path / "notes.txt").write_text("x")
    sources = [
        f"file:{real}",  # exists, readable, right suffix: was imported before
        f"file://{real}",
        str(real),
        f"file:{tmp_path / 'missing.csv'}",
        f"file:{tmp_path / 'notes.txt'}",  # exists, wrong suffix
        f"file:{tmp_path}",  # a directory
        "file:/etc/passwd",
        "/etc/passwd",
        "field.csv",
        "./field.csv",
        f"file:{tmp_path}/../{tmp_path.name}/field.csv",
        "../../../../etc/hostname",
        "sklearn:../../etc/passwd",
        "sklearn:nope",
        "~/.ssh/id_rsa",
    ]
    messages = set()
    for source in sources:
        answer = client.post("/api/v1/datasets/x/versions", json={"source": source})
        assert answer.status_code == 422, (source, answer.text)
        body = answer.json()
        assert body["code"] == "invalid_input", (source, body)
        messages.add(body["error"].replace(repr(source), "<SOURCE>"))
    assert len(messages) == 1, messages  # one message: nothing depends on the filesystem
    (message,) = messages
    assert "built-in" in message and "upload" in message
    for leak in ("no such file", "exist", "unsupported file type", "cannot read", "directory"):
        assert leak not in message.lower()
    assert client.get("/api/v1/datasets").json() == []


def test_the_schema_lists_the_builtin_sources(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    source = spec["components"]["schemas"]["DatasetImport"]["properties"]["source"]
    assert "sklearn:digits" in source["enum"] and all(":" in s for s in source["enum"])
    ok = client.post("/api/v1/datasets/iris/versions", json={"source": "sklearn:iris"})
    assert ok.status_code == 201 and ok.json()["source"] == "sklearn:iris"


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(list(args))
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def test_cli_uploads_files_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _csv(tmp_path / "field.csv")
    dd = ["--data-dir", str(tmp_path / "hub")]
    code, made = _cli(capsys, *dd, "dataset", "import", "field.csv", "--name", "digits", "--json")
    assert code == 0 and made["version"] == 1 and made["source"] == "upload:field.csv", made
    code, same = _cli(
        capsys, *dd, "dataset", "import", f"file:{tmp_path / 'field.csv'}", "--name", "digits",
        "--json",
    )  # fmt: skip
    assert code == 0 and same["created"] is False and same["digest"] == made["digest"]
    code, err = _cli(capsys, *dd, "dataset", "import", "file:gone.csv", "--name", "d", "--json")
    assert code == 1 and err["code"] == "invalid_input"


def test_cli_uploads_files_over_http(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = HubSettings(data_dir=tmp_path / "hub", admin_token=TOKEN)  # type: ignore[arg-type]
    with live_api(settings) as url:
        monkeypatch.chdir(tmp_path)
        _csv(tmp_path / "field.csv")
        hub = ["--hub", url, "--token", TOKEN]
        code, made = _cli(
            capsys, *hub, "dataset", "import", "field.csv", "--name", "digits", "--json"
        )
        assert code == 0 and made["num_records"] == 60 and made["source"] == "upload:field.csv"
        code, made = _cli(
            capsys, *hub, "dataset", "import", "sklearn:iris", "--name", "iris", "--json"
        )
        assert code == 0 and made["source"] == "sklearn:iris"
