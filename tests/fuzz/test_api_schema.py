"""Property-based API testing with schemathesis: every operation of the hub's OpenAPI schema,
fed generated (mostly invalid) requests, answers without a server error and as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from hub.api import create_app
from hub.db import create_all
from hub.settings import HubSettings

TOKEN = "fuzz-admin-token-0123456789abcdef"


def _app(root: Path):  # type: ignore[no-untyped-def]
    settings = HubSettings(data_dir=root, admin_token=TOKEN, trigger_interval_s=0)
    app = create_app(settings)
    create_all(app.state.hub.engine)
    return app


_ROOT = Path(__import__("tempfile").mkdtemp(prefix="edgeloop-fuzz-"))
schema = schemathesis.openapi.from_asgi("/openapi.json", _app(_ROOT))


@pytest.mark.timeout(600)
@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_api_never_errors_and_answers_as_documented(case: schemathesis.Case) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=[not_a_server_error, response_schema_conformance],
    )
