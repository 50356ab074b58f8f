"""``edgeloop rollout create --shadow ... --promote-alias ...`` through the admin API, and the
shadow settings' validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgeloop_cli import main
from hub.core.artifacts import FileArtifactStore
from hub.core.db import make_engine, session_scope
from hub.core.errors import InvalidInput
from hub.registry import models as registry
from hub.rollouts._shadow import parse_shadow
from hub.tables import Bundle, Device, create_all


def run(
    capsys: pytest.CaptureFixture[str], data_dir: Path, *args: str
) -> tuple[int, dict[str, Any]]:
    code = main(["--data-dir", str(data_dir), "rollout", *args, "--json"])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_parse_shadow_fills_defaults_and_refuses_nonsense() -> None:
    assert parse_shadow(None) == {} and parse_shadow({}) == {}
    cfg = parse_shadow({"fraction_of_devices": 0.25})
    assert cfg == {
        "fraction_of_devices": 0.25,
        "sample_fraction": 1.0,
        "bake_s": 60.0,
        "min_agreement": 0.9,
    }
    for bad in ({"fraction_of_devices": 0}, {"sample_fraction": 1.5}, {"min_agreement": 2}):
        with pytest.raises(InvalidInput):
            parse_shadow(bad)
    with pytest.raises(InvalidInput, match="unknown shadow settings"):
        parse_shadow({"fraction": 0.1})


def test_rollout_cli_shadow_and_promotion_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    create_all(engine)
    store = FileArtifactStore(root=tmp_path / "artifacts")
    with session_scope(engine) as s:
        s.add(Device(id="d1"))
        mv = registry.register_version(s, store, model_name="m", data=b"model")
        s.add(Bundle(model_version_id=mv.id or 0, digest="sha256:" + "1" * 64, size=10))
    engine.dispose()
    code, out = run(
        capsys,
        tmp_path,
        "create",
        "--model",
        "m@1",
        "--selector",
        "all",
        "--phases",
        "1,100%",
        "--shadow",
        "50%",
        "--min-agreement",
        "0.8",
        "--shadow-bake-s",
        "5",
        "--promote-alias",
        "staging",
    )
    assert code == 0, out
    assert out["state"] == "shadowing" and out["promote_alias"] == "staging"
    assert out["shadow"]["config"] == {
        "fraction_of_devices": 0.5,
        "sample_fraction": 1.0,
        "bake_s": 5.0,
        "min_agreement": 0.8,
    }
    assert out["shadow"]["state"] == "pending"
    assert [p["state"] for p in out["phases"]] == ["pending", "pending"]
    code, out = run(capsys, tmp_path, "advance", out["id"])  # skips the shadow phase
    assert code == 0 and out["state"] == "running" and out["shadow"]["state"] == "advanced"
    assert out["phase"] == 0
    code, out = run(capsys, tmp_path, "create", "--model", "m@1", "--selector", "all")
    assert code == 0 and out["shadow"] is None and out["promote_alias"] == "production"
    code, out = run(
        capsys, tmp_path, "create", "--model", "m@1", "--selector", "all", "--shadow", "150%"
    )
    assert code == 1 and out["code"] == "invalid_input" and "fraction_of_devices" in out["error"]
    code, out = run(
        capsys, tmp_path, "create", "--model", "m@1", "--selector", "all", "--promote-alias", "X"
    )
    assert code == 1 and out["code"] == "invalid_request"  # the schema's alias pattern
