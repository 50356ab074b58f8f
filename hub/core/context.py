"""What every admin request and dashboard page may need, built once per app."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from hub.core.artifacts import ArtifactStore
from hub.core.settings import HubSettings

__all__ = ["HubContext"]


@dataclass(frozen=True, slots=True)
class HubContext:
    """What every request may need; built once per app."""

    settings: HubSettings
    engine: Engine
    store: ArtifactStore
    admin_token: str
