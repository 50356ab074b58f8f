"""CLI commands a newcomer runs against a live hub (``--hub``): ``rollout wait`` /
``rollout create --wait``, ``bundle public-key`` from the hub, ``token create -q``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeloop_cli import main
from hub.core.db import make_engine, session_scope
from hub.core.settings import HubSettings
from hub.rollouts import service
from hub.security.keys import bundle_signing_key
from hub.tables import Device, create_all
from model_packager.signing import key_id
from tests.fixtures.live_api import live_api

TOKEN = "t" * 40


@pytest.fixture
def live_hub(tmp_path: Path) -> Iterator[tuple[list[str], HubSettings]]:
    """The admin API on a real socket (no rollout controller: rollouts stay where they are)."""
    settings = HubSettings(data_dir=tmp_path / "hub", admin_token=TOKEN)
    with live_api(settings) as url:
        yield ["--hub", url, "--token", TOKEN], settings


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_rollout_wait_exit_codes(
    live_hub: tuple[list[str], HubSettings], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    hub, settings = live_hub
    engine = make_engine(settings.resolved_database_url)
    create_all(engine)
    with session_scope(engine) as s:
        s.add(Device(id="d1", tags={"site": "berlin"}))
        rid = service.create_rollout(
            s,
            model="m",
            version="1",
            selector="site=berlin",
            phases="100%",
            bundle_digest="sha256:" + "0" * 64,
            bundle_size=10,
        ).id
    engine.dispose()
    started = time.monotonic()
    code, out = _json(capsys, *hub, "rollout", "wait", rid, "--timeout", "1.5")
    assert code == 3 and out["code"] == "timeout" and rid in out["error"]
    assert 1.5 <= time.monotonic() - started < 15
    # in-process there is no controller: waiting could never end, so it is refused at once
    code, out = _json(capsys, "--data-dir", str(tmp_path / "hub"), "rollout", "wait", rid)
    assert code == 2 and out["code"] == "needs_hub"
    assert _json(capsys, *hub, "rollout", "cancel", rid)[0] == 0
    code, out = _json(capsys, *hub, "rollout", "wait", rid)
    assert code == 1 and out["state"] == "cancelled" and out["id"] == rid  # the rollout, printed
    # human mode: the rollout, then why it is not a success, on stderr
    assert main([*hub, "rollout", "wait", rid]) == 1
    captured = capsys.readouterr()
    assert rid in captured.out and "rollout_cancelled" in captured.err


def test_public_key_and_tokens_under_hub_come_from_the_hub(
    live_hub: tuple[list[str], HubSettings],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub, settings = live_hub
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("EDGELOOP_DATA_DIR", raising=False)
    pem = tmp_path / "hub.pub"
    code, out = _json(capsys, *hub, "bundle", "public-key", "--out", str(pem))
    assert code == 0 and out["key_id"] == key_id(bundle_signing_key(settings))
    assert pem.read_text() == out["pem"]
    assert not home.exists()  # no key of this machine's own was made (it was, before #21)
    # verify with no --public-key under --hub: the hub's key, not a local one
    code, out = _json(capsys, *hub, "bundle", "verify", str(pem))
    assert code == 1 and out["key_id"] == key_id(bundle_signing_key(settings))
    assert not home.exists()
    # -q: the secret alone on stdout, for TOKEN=$(edgeloop device token create -q)
    assert main([*hub, "device", "token", "create", "--tag", "site=berlin", "-q"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and printed[0].startswith("elt_")
    assert main([*hub, "token", "create", "--name", "ci", "-q"]) == 0
    assert len(capsys.readouterr().out.split()) == 1
