"""Dashboard test fixtures: a real hub app (uvicorn on a loopback port, in a thread) over a
small real world, headless Chromium from the Debian packages driven by Selenium, and a
rollout the real controller has started against a real Mosquitto."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.services import missing_service
from tests.ui._world import FIELD_DEVICES, World, build_world

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ADMIN_TOKEN = "ui-admin-" + "x" * 32


@dataclass(frozen=True, kw_only=True)
class Hub:
    url: str
    world: World
    engine: Any  # sqlalchemy Engine on the hub's database, for setup and checks


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Screenshots go here: $EDGELOOP_UI_ARTIFACTS or tests/ui/artifacts (gitignored)."""
    path = Path(os.environ.get("EDGELOOP_UI_ARTIFACTS") or Path(__file__).parent / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def ui_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("ui-world"))


def _serve(app: Any) -> tuple[str, Any, threading.Thread]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the hub app did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


@pytest.fixture(scope="session")
def hub_server(ui_world: World) -> Iterator[Hub]:
    from hub.api import create_app
    from hub.core.db import make_engine
    from hub.core.settings import HubSettings

    settings = HubSettings(
        data_dir=ui_world.data_dir,
        database_url=ui_world.database_url,
        admin_token=ADMIN_TOKEN,
    )
    url, server, thread = _serve(create_app(settings))
    engine = make_engine(ui_world.database_url)
    try:
        yield Hub(url=url, world=ui_world, engine=engine)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.dispose()


@dataclass(frozen=True, kw_only=True)
class StartedRollout:
    id: str
    controller: Any  # RolloutController (publisher connected; ticked by the tests)
    fleet: str


@pytest.fixture(scope="session")
def rollout(hub_server: Hub, mosquitto: Any) -> Iterator[StartedRollout]:
    """digits-mlp@1 to the field group in three phases; the controller's first tick chose
    and commanded phase 1 (commands really published to the broker)."""
    from hub.core.db import session_scope
    from hub.rollouts import service
    from hub.rollouts.controller import RolloutController

    fleet = f"ui-{uuid.uuid4().hex[:8]}"
    with session_scope(hub_server.engine) as s:
        created = service.create_rollout(
            s,
            model=hub_server.world.model,
            version=str(hub_server.world.version),
            selector="group:field",
            phases="1,50%,100%",
            bake_s=3600.0,
            min_reporting=1,
        )
        rollout_id = created.id
    controller = RolloutController(
        engine=hub_server.engine,
        mqtt_url=mosquitto.url,
        artifact_endpoint="127.0.0.1:1",
        fleet=fleet,
    )
    controller.publisher.start()
    try:
        controller.tick()
        controller.tick()
        yield StartedRollout(id=rollout_id, controller=controller, fleet=fleet)
    finally:
        controller.publisher.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()) or shutil.which("chromium") is None:
        missing_service("headless Chromium (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        missing_service(f"selenium ({exc})")
        raise
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1366,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


__all__ = ["ADMIN_TOKEN", "FIELD_DEVICES", "Hub", "StartedRollout"]
