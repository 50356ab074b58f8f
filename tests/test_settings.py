from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from hub.core.settings import HubSettings


def test_defaults_are_embedded(tmp_path: Path) -> None:
    s = HubSettings(data_dir=tmp_path)
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'hub.db'}"
    assert s.resolved_artifact_url == (tmp_path / "artifacts").as_uri()
    assert s.mqtt_url is None and s.mode == "dev"


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGELOOP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("EDGELOOP_MQTT_URL", "mqtt://broker.local:1883")
    s = HubSettings()
    assert s.data_dir == tmp_path and s.mqtt_url == "mqtt://broker.local:1883"


def test_dev_token_is_generated_once_and_private(tmp_path: Path) -> None:
    s = HubSettings(data_dir=tmp_path)
    token = s.resolved_admin_token()
    assert len(token) >= 32 and token == HubSettings(data_dir=tmp_path).resolved_admin_token()
    assert (tmp_path / "admin_token").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"mode": "production"}, "EDGELOOP_ADMIN_TOKEN"),
        ({"mode": "production", "admin_token": "short"}, "EDGELOOP_ADMIN_TOKEN"),
        ({"mode": "production", "admin_token": "x" * 40}, "EDGELOOP_DATABASE_URL"),
        ({"database_url": "mysql://x/y"}, "not supported"),
        ({"mqtt_url": "http://x"}, "not a broker address"),
        ({"api_port": 70000}, "api_port"),
        ({"fleet": "a/b"}, "fleet"),
    ],
)
def test_unsafe_or_bad_settings_fail_fast(values: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        HubSettings(**values)  # type: ignore[arg-type]


def test_production_with_everything_set() -> None:
    s = HubSettings(
        mode="production",
        admin_token="x" * 40,  # type: ignore[arg-type]
        database_url="postgresql://u@db/edgeloop",
    )
    assert s.resolved_admin_token() == "x" * 40
