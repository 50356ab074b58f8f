"""A rollout of a bundle signed before a key rotation is refused up front (409, "re-package").

Real parts: the hub trains and packages digits-mlp over the admin API, rotates its key
(``POST /api/v1/keys/rotate``), and the same API, the CLI and the retraining follow-up
(``PackageAndCanary``) refuse to roll out what the retired key signed; a bundle
re-packaged with the current key is accepted.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edgeloop_cli import main as cli_main
from hub.api import create_app
from hub.core.errors import Conflict
from hub.core.settings import HubSettings
from hub.packaging.service import package
from hub.security.keys import bundle_signing_key, retired_key_ids
from hub.triggers.followup import PackageAndCanary
from model_packager.bundle import BundleError, signer_key_id
from model_packager.signing import Ed25519PrivateKey, generate_private_key, key_id
from tests.fixtures.bundles import BuiltBundle

ADMIN = "r" * 40
MODEL = "digits-mlp"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[TestClient, HubSettings]]:
    """A hub with digits-mlp@1 trained (3 epochs) and a device to roll out to."""
    settings = HubSettings(data_dir=tmp_path / "hub", admin_token=ADMIN)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    with TestClient(create_app(settings), headers=headers) as client:
        made = client.post("/api/v1/datasets/digits/versions", json={"source": "sklearn:digits"})
        assert made.status_code == 201, made.text
        run = client.post(
            "/api/v1/training-runs",
            json={"spec": MODEL, "dataset": "digits@1", "params": {"epochs": 3}},
        )
        assert run.status_code == 201, run.text
        assert client.post("/api/v1/devices", json={"id": "d1"}).status_code == 201
        yield client, settings


def _package(client: TestClient) -> str:
    made = client.post(f"/api/v1/models/{MODEL}/versions/1/package", json={"formats": ["onnx"]})
    assert made.status_code == 201, made.text
    digest: str = made.json()["digest"]
    return digest


def _rollout(client: TestClient, **extra: Any) -> Any:
    body = {"model": MODEL, "version": "1", "selector": "all", "phases": "100%", **extra}
    return client.post("/api/v1/rollouts", json=body)


def test_signer_key_id_reads_the_key_a_bundle_names(digits_bundle: BuiltBundle) -> None:
    from model_packager.signing import load_public_key

    with digits_bundle.path.open("rb") as fh:
        assert signer_key_id(fh) == key_id(load_public_key(digits_bundle.public_key))
    for junk in (b"", b"not a zip file at all, just some bytes"):
        with pytest.raises(BundleError):
            signer_key_id(io.BytesIO(junk))


def test_rollout_of_a_bundle_signed_before_rotation_is_refused_until_repackaged(
    hub: tuple[TestClient, HubSettings], capsys: pytest.CaptureFixture[str]
) -> None:
    client, settings = hub
    old_digest = _package(client)
    # signed with the current key: accepted
    first = _rollout(client)
    assert first.status_code == 201, first.text
    assert first.json()["bundle_digest"] == old_digest
    assert client.post(f"/api/v1/rollouts/{first.json()['id']}/cancel").status_code == 200

    rotated = client.post("/api/v1/keys/rotate")
    assert rotated.status_code == 200, rotated.text
    old_key = rotated.json()["retired_key_id"]
    assert retired_key_ids(settings.data_dir) == [old_key]

    for refused in (_rollout(client), _rollout(client, bundle_digest=old_digest)):
        assert refused.status_code == 409, refused.text
        body = refused.json()
        assert body["code"] == "conflict"
        assert body["error"] == (
            f"bundle {old_digest} is signed with key {old_key} which was retired on rotation; "
            f"devices that rotated refuse it — re-package it: edgeloop package {MODEL}@1"
        )
        assert body["details"]["key_id"] == old_key and body["details"]["retired_key"] is True
        assert body["details"]["current_key_id"] == rotated.json()["key_id"]
    assert [r["id"] for r in client.get("/api/v1/rollouts").json()] == [first.json()["id"]]

    # the CLI goes through the same API: exit 1, the same error
    code = cli_main(
        ["--data-dir", str(settings.data_dir), "rollout", "create", "--model", f"{MODEL}@1",
         "--selector", "all", "--json"]
    )  # fmt: skip
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and out["code"] == "conflict"
    assert f"edgeloop package {MODEL}@1" in out["error"]

    new_digest = _package(client)
    assert new_digest != old_digest
    accepted = _rollout(client)
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["bundle_digest"] == new_digest
    # naming the old bundle explicitly is still refused
    assert _rollout(client, bundle_digest=old_digest).status_code == 409


def test_bundle_signed_by_a_foreign_key_is_refused(hub: tuple[TestClient, HubSettings]) -> None:
    """A key this hub never had (another hub's, say): none of its devices trusts it."""
    client, settings = hub
    stranger = generate_private_key()
    context = client.app.state.hub  # type: ignore[attr-defined]
    foreign = package(context.engine, context.store, ref=f"{MODEL}@1", signing_key=stranger)
    refused = _rollout(client)  # the version's newest bundle: the foreign one
    assert refused.status_code == 409, refused.text
    current = key_id(bundle_signing_key(settings))
    assert refused.json()["error"] == (
        f"bundle {foreign.bundle.digest} is signed with key {key_id(stranger)}, not with this "
        f"hub's key {current}; devices refuse it — re-package it: edgeloop package {MODEL}@1"
    )
    assert refused.json()["details"]["retired_key"] is False


def test_followup_refuses_a_canary_when_the_key_rotates_while_packaging(
    hub: tuple[TestClient, HubSettings],
) -> None:
    client, settings = hub
    context = client.app.state.hub  # type: ignore[attr-defined]
    calls = 0

    def rotating_key() -> Ed25519PrivateKey:
        """The hub's key, rotated right after packaging took it (a concurrent rotate)."""
        nonlocal calls
        calls += 1
        key = bundle_signing_key(settings)
        if calls == 1:
            client.post("/api/v1/keys/rotate").raise_for_status()
        return key

    with pytest.raises(Conflict, match=f"re-package it: edgeloop package {MODEL}@1"):
        PackageAndCanary(signing_key=rotating_key)(
            context.engine, context.store, model=MODEL, version=1, canary={"selector": "all"}
        )
    assert calls == 2
    done = PackageAndCanary(signing_key=lambda: bundle_signing_key(settings))(
        context.engine,
        context.store,
        model=MODEL,
        version=1,
        canary={"selector": "all", "phases": "100%"},
    )
    assert done.rollout_id is not None and done.bundle_digest is not None
    shown = client.get(f"/api/v1/rollouts/{done.rollout_id}").json()
    assert shown["bundle_digest"] == done.bundle_digest
