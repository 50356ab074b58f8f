"""Fixtures of the cluster tests: a PostgreSQL database with an empty schema."""

from __future__ import annotations

import psycopg
import pytest


@pytest.fixture
def fresh_postgres(postgres_url: str) -> str:
    """The session's PostgreSQL database with its schema emptied (hub processes of an
    earlier test may have left tables)."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return postgres_url
