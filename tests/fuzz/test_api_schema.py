"""The OpenAPI document is the contract: schemathesis, with every check, feeds every operation
generated requests (valid and invalid) and walks the create -> get/update/delete links
statefully. Any server error, undocumented status code, body off its declared model, valid
request refused (except the few listed in schemathesis.toml, with why) or invalid request
accepted fails the test. Reproduce against a running hub with the ``st run`` line in
tests/fuzz/schemathesis.toml."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from sqlmodel import SQLModel

from hub.api import create_app
from hub.core.settings import HubSettings
from hub.tables import create_all

TOKEN = "fuzz-admin-token-0123456789abcdef"
CONFIG = Path(__file__).with_name("schemathesis.toml")


def _app(root: Path) -> Any:
    app = create_app(HubSettings(data_dir=root, admin_token=TOKEN, trigger_interval_s=0))
    create_all(app.state.hub.engine)
    return app


_ROOT = Path(tempfile.mkdtemp(prefix="edgeloop-fuzz-"))
_CONFIG = SchemathesisConfig.from_str(
    f'headers = {{ Authorization = "Bearer {TOKEN}" }}\n{CONFIG.read_text()}'
)
_APP = _app(_ROOT)
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP, config=_CONFIG)


@pytest.mark.timeout(300)
@schema.parametrize()
@settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case: schemathesis.Case) -> None:
    case.call_and_validate()


class APIWorkflow(schema.as_state_machine()):  # type: ignore[misc]
    """Each scenario starts from an empty hub: what one scenario created would otherwise change
    which links the next can follow, and hypothesis refuses such generation as flaky."""

    def setup(self) -> None:
        engine = _APP.state.hub.engine
        SQLModel.metadata.drop_all(engine)
        create_all(engine)


TestStatefulLinks = APIWorkflow.TestCase
TestStatefulLinks.settings = settings(
    max_examples=25,
    stateful_step_count=6,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
