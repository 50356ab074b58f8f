"""The admin API over HTTP (in-process ASGI): auth, error bodies, datasets, registry, devices."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from hub.api import create_app
from hub.core.artifacts import sha256_digest
from hub.core.settings import HubSettings

TOKEN = "t" * 40


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = HubSettings(data_dir=tmp_path, admin_token=TOKEN)  # type: ignore[arg-type]
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def _error(response: object, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body: dict[str, object] = response.json()
    assert body["code"] == code and isinstance(body["error"], str) and body["error"]
    return body


def test_docs_and_openapi_are_public(client: TestClient) -> None:
    assert client.get("/docs", headers={"Authorization": ""}).status_code == 200
    schema = client.get("/openapi.json").json()
    for path in ("/api/v1/datasets", "/api/v1/models", "/api/v1/runs", "/api/v1/devices"):
        assert path in schema["paths"]
    assert client.get("/healthz").json()["status"] == "ok"


def test_every_api_route_needs_the_admin_token(client: TestClient) -> None:
    bare = {"Authorization": ""}
    _error(client.get("/api/v1/datasets", headers=bare), 401, "unauthorized")
    _error(client.post("/api/v1/devices", json={"id": "a"}, headers=bare), 401, "unauthorized")
    wrong = {"Authorization": "Bearer " + "x" * 40}
    _error(client.get("/api/v1/models", headers=wrong), 401, "unauthorized")
    assert client.get("/api/v1/models").status_code == 200


def test_bad_requests_get_4xx_json_never_500(client: TestClient) -> None:
    _error(client.get("/api/v1/datasets/none/versions/1"), 404, "not_found")
    _error(client.get("/api/v1/datasets/none/versions/abc"), 422, "invalid_request")
    _error(client.post("/api/v1/datasets/x/versions", json={}), 422, "invalid_request")
    _error(client.post("/api/v1/datasets/x/versions", content=b"{not json"), 422, "invalid_request")
    _error(
        client.post("/api/v1/datasets/x/versions", json={"source": "sklearn:nope"}),
        422,
        "invalid_input",
    )
    _error(
        client.post("/api/v1/datasets/x/versions", json={"source": "/etc/passwd"}),
        422,
        "invalid_input",
    )
    _error(client.post("/api/v1/devices", json={"id": "bad/id"}), 422, "invalid_request")
    _error(client.get("/api/v1/models/m/versions/1/lineage"), 404, "not_found")
    _error(client.put("/api/v1/models/m/aliases/prod", json={"version": 0}), 422, "invalid_request")
    _error(
        client.post("/api/v1/runs", json={"spec": "s", "code_version": "c", "dataset": "x"}),
        422,
        "invalid_request",
    )
    _error(client.get("/api/v1/bundles/sha256:00/file"), 404, "not_found")
    _error(client.delete("/api/v1/datasets"), 405, "method_not_allowed")
    # concrete paths win over templated ones, and Allow names exactly the documented methods
    wrong = client.put("/api/v1/models/m/aliases/history", json={"version": 1})
    assert _error(wrong, 405, "method_not_allowed") and wrong.headers["Allow"] == "GET"
    wrong = client.get("/api/v1/datasets/d/versions/upload")
    assert _error(wrong, 405, "method_not_allowed") and wrong.headers["Allow"] == "POST"
    assert client.options("/api/v1/devices").headers["Allow"] == "GET, POST"
    _error(client.get("/api/v1/devices", params={"grup": "lab"}), 422, "invalid_input")
    _error(client.post("/api/v1/tokens/99999999999999999999/revoke"), 422, "invalid_request")
    _error(client.post("/api/v1/enrollment-tokens/2147483647/revoke"), 404, "not_found")


def test_405_table_is_the_openapi_document(client: TestClient) -> None:
    """405s come from the routes as declared (the document costs ~1 s to build per process)."""
    from hub.api.errors import _documented_paths

    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    table = _documented_paths(client.app)  # type: ignore[arg-type]
    assert len(table) == len(paths)
    for template, operations in paths.items():
        concrete = template.replace("{", "").replace("}", "")
        found = [
            p
            for p in table
            if p.pattern.match(concrete)
            and p.concreteness == tuple(int("{" in part) for part in template.strip("/").split("/"))
        ]
        assert [p.methods for p in found] == [frozenset(m.upper() for m in operations)]


def test_dataset_import_show_export_and_reimport(client: TestClient) -> None:
    created = client.post("/api/v1/datasets/digits/versions", json={"source": "sklearn:digits"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["name"], body["version"], body["created"]) == ("digits", 1, True)
    assert body["num_records"] == 1797 and sum(body["splits"].values()) == 1797
    again = client.post(
        "/api/v1/datasets/digits/versions", json={"source": "sklearn:digits"}
    ).json()
    assert again["created"] is False and again["digest"] == body["digest"]
    shown = client.get("/api/v1/datasets/digits/versions/latest").json()
    assert shown["parent"] is None and shown["validation"]["passed"] is True
    data = client.get("/api/v1/datasets/digits/versions/1/data")
    assert (
        data.headers["X-Edgeloop-Digest"] == sha256_digest(data.content) == body["artifact_digest"]
    )


def test_upload_grows_a_dataset_and_validation_can_be_overridden(client: TestClient) -> None:
    rng = np.random.default_rng(1)
    base = pd.DataFrame({"a": rng.normal(0, 1, 400), "b": rng.normal(5, 1, 400)})
    base["label"] = (base["a"] > 0).astype(int)
    csv = base.to_csv(index=False).encode()
    first = client.post(
        "/api/v1/datasets/sensors/versions/upload", files={"file": ("s.csv", io.BytesIO(csv))}
    )
    assert first.status_code == 201, first.text
    drifted = pd.DataFrame({"a": rng.normal(3, 1, 400), "b": rng.normal(5, 1, 400)})
    drifted["label"] = 1
    dry = client.post(
        "/api/v1/datasets/sensors/validate",
        files={"file": ("d.csv", io.BytesIO(drifted.to_csv(index=False).encode()))},
    ).json()
    assert dry["passed"] is False and "a" in dry["text"]
    assert len(client.get("/api/v1/datasets", params={"name": "sensors"}).json()) == 1
    second = client.post(
        "/api/v1/datasets/sensors/versions/upload",
        files={"file": ("d.csv", io.BytesIO(drifted.to_csv(index=False).encode()))},
        data={"append": "true"},
    ).json()
    assert second["version"] == 2 and second["parent"] == "sensors@1"
    assert second["validation_status"] == "failed"
    other = pd.DataFrame({"c": rng.normal(0, 1, 10), "label": 0}).to_csv(index=False).encode()
    mismatch = client.post(
        "/api/v1/datasets/sensors/versions/upload",
        files={"file": ("o.csv", io.BytesIO(other))},
        data={"append": "true"},
    )
    assert "cannot append to sensors@2" in _error(mismatch, 422, "invalid_input")["error"]
    run = {"spec": "mlp", "code_version": "c", "dataset": "sensors@2"}
    _error(client.post("/api/v1/runs", json=run), 409, "dataset_invalid")
    _error(
        client.post("/api/v1/datasets/sensors/versions/2/override", json={"reason": ""}),
        422,
        "invalid_request",
    )
    ok = client.post(
        "/api/v1/datasets/sensors/versions/2/override", json={"reason": "recalibrated"}
    )
    assert ok.json()["validation_status"] == "overridden"
    assert client.post("/api/v1/runs", json=run).status_code == 201


def test_run_to_registry_to_lineage_over_http(client: TestClient) -> None:
    client.post("/api/v1/datasets/digits/versions", json={"source": "sklearn:digits"})
    run = client.post(
        "/api/v1/runs",
        json={
            "spec": "digits-cnn",
            "code_version": "sha256:c0de",
            "dataset": "digits@latest",
            "params": {"lr": 0.1},
        },
    ).json()
    points = [{"key": "loss", "value": 1.0 / (i + 1), "step": i} for i in range(3)]
    assert client.post(f"/api/v1/runs/{run['id']}/metrics", json=points).status_code == 204
    put = client.put(f"/api/v1/runs/{run['id']}/artifacts/model", content=b"weights")
    assert put.status_code == 201 and put.json()["digest"] == sha256_digest(b"weights")
    empty = client.put(f"/api/v1/runs/{run['id']}/artifacts/none", content=b"")
    _error(empty, 422, "invalid_input")
    many = [{"key": "acc", "value": 0.5, "step": i} for i in range(10_000)]  # one flush
    assert client.post(f"/api/v1/runs/{run['id']}/metrics", json=many).status_code == 204
    assert (
        len(client.get(f"/api/v1/runs/{run['id']}/metrics", params={"key": "acc"}).json()) == 10_000
    )
    _error(client.post("/api/v1/models/cnn/versions", json={"run_id": run["id"]}), 409, "conflict")
    client.post(f"/api/v1/runs/{run['id']}/finish", json={"metrics": {"accuracy": 0.98}})
    version = client.post("/api/v1/models/cnn/versions", json={"run_id": run["id"]}).json()
    assert version["ref"] == "cnn@1" and version["metrics"] == {"accuracy": 0.98}
    moved = client.put("/api/v1/models/cnn/aliases/production", json={"version": 1}).json()
    assert moved["aliases"] == ["production"]
    lineage = client.get("/api/v1/models/cnn/versions/production/lineage").json()
    assert lineage["dataset_version"]["ref"] == "digits@1"
    assert lineage["code_version"] == "sha256:c0de"
    assert [m["ref"] for m in client.get("/api/v1/datasets/digits/versions/1/models").json()] == [
        "cnn@1"
    ]
    listed = client.get("/api/v1/models").json()
    assert listed[0]["aliases"] == {"production": 1} and listed[0]["latest_version"] == 1


def test_devices_crud_and_filters(client: TestClient) -> None:
    for i, site in enumerate(["berlin", "berlin", "paris"]):
        body = {"id": f"dev-{i}", "group": "g1" if i < 2 else "g2", "tags": {"site": site}}
        assert client.post("/api/v1/devices", json=body).status_code == 201
    _error(client.post("/api/v1/devices", json={"id": "dev-0"}), 409, "conflict")
    ids = lambda r: [d["id"] for d in r.json()]  # noqa: E731
    assert ids(client.get("/api/v1/devices", params={"tag": "site=berlin"})) == ["dev-0", "dev-1"]
    assert ids(client.get("/api/v1/devices", params={"group": "g2"})) == ["dev-2"]
    _error(client.get("/api/v1/devices", params={"tag": "nonsense"}), 422, "invalid_request")
    patched = client.patch("/api/v1/devices/dev-2", json={"tags": {"site": "berlin"}}).json()
    assert patched["tags"] == {"site": "berlin"}
    assert client.delete("/api/v1/devices/dev-1").status_code == 204
    _error(client.get("/api/v1/devices/dev-1"), 404, "not_found")


def test_inputs_the_database_cannot_hold_are_4xx_on_both_databases(
    tmp_path: Path, database_url: str
) -> None:
    """Found by schemathesis: ids past the column's range (SQLite: OverflowError; PostgreSQL:
    integer out of range) and NUL in text (PostgreSQL) were 500s."""
    settings = HubSettings(data_dir=tmp_path, database_url=database_url, admin_token=TOKEN)  # type: ignore[arg-type]
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        for path in (
            "/api/v1/tokens/251533017807521284853071872/revoke",
            "/api/v1/enrollment-tokens/2147483648/revoke",
        ):
            _error(c.post(path), 422, "invalid_request")
        _error(c.get("/api/v1/models/m/versions/9999999999"), 422, "invalid_request")
        _error(c.get("/api/v1/datasets/d/versions/2147483648/models"), 422, "invalid_request")
        _error(c.put("/api/v1/models/m/aliases/a", json={"version": 2**31}), 422, "invalid_request")
        nul = c.get("/api/v1/rollouts", params={"state": "a\x00"})
        if database_url.startswith("postgresql"):
            _error(nul, 422, "invalid_input")
        else:
            assert nul.status_code == 200 and nul.json() == []  # SQLite stores NUL
