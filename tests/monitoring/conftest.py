"""The monitoring tests' hub database: SQLite and PostgreSQL (``database_url``), tables made."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from hub.core.db import make_engine
from hub.tables import create_all


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    create_all(engine)
    yield engine
    engine.dispose()
