"""``edgeloop rollout ...`` through the admin API (in-process on a data dir)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgeloop_cli import main
from hub.core.db import make_engine, session_scope
from hub.rollouts import service
from hub.tables import Device, create_all


def run(
    capsys: pytest.CaptureFixture[str], data_dir: Path, *args: str
) -> tuple[int, dict[str, Any]]:
    code = main(["--data-dir", str(data_dir), "rollout", *args, "--json"])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_rollout_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    create_all(engine)
    with session_scope(engine) as s:
        s.add(Device(id="d1", tags={"site": "berlin"}))
        rid = service.create_rollout(
            s,
            model="m",
            version="1",
            selector="site=berlin",
            phases="1,100%",
            bundle_digest="sha256:" + "0" * 64,
            bundle_size=10,
        ).id
    engine.dispose()
    code, out = run(capsys, tmp_path, "list")
    assert code == 0 and [r["id"] for r in out["rollouts"]] == [rid]
    code, out = run(capsys, tmp_path, "show", rid)
    assert code == 0 and out["id"] == rid and out["state"] == "running"
    assert [p["state"] for p in out["phases"]] == ["commanding", "pending"]
    assert all({"state", "devices", "gates"} <= set(p) for p in out["phases"])
    assert out["queue"]["waiting_for_slot"] == 0 and out["queue"]["admission_wait"]["devices"] == 0
    code, out = run(capsys, tmp_path, "pause", rid, "--reason", "lunch")
    assert code == 0 and out["state"] == "paused" and out["reason"] == "lunch"
    code, out = run(capsys, tmp_path, "approve", rid)
    assert code == 1 and out["code"] == "conflict"
    code, out = run(capsys, tmp_path, "cancel", rid)
    assert code == 0 and out["state"] == "cancelled"
    code, out = run(capsys, tmp_path, "create", "--model", "nope@1", "--selector", "all")
    assert code == 1 and out["code"] == "not_found"
    code, out = run(capsys, tmp_path, "create", "--model", "m@1", "--selector", "site=")
    assert code == 1 and out["code"] == "invalid_input" and "selector" in out["error"]
