"""Deploy commands with presigned bundle URLs: the controller, a real database and the hub's
S3 store on a real S3 server process (tests/fixtures/s3.py); a recording publisher."""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine

from hub.core.artifacts import DownloadLinks, open_store
from hub.core.db import make_engine, session_scope
from hub.rollouts import service
from hub.rollouts.controller import RolloutController
from hub.tables import Device, create_all, drop_all
from tests.rollouts.test_rollout_controller import RecordingPublisher

BUNDLE = os.urandom(50_000)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    create_all(eng)
    yield eng
    drop_all(eng)
    eng.dispose()


def _rollout(engine: Engine, digest: str, devices: int) -> None:
    with session_scope(engine) as s:
        for i in range(devices):
            s.add(
                Device(
                    id=f"p{i:02d}",
                    group="default",
                    tags={},
                    online=True,
                    state={"online": True, "updatedAt": "0"},
                    last_seen_at=datetime.now(UTC) - timedelta(seconds=5),
                )
            )
    with session_scope(engine) as s:
        service.create_rollout(
            s,
            model="m",
            version="2",
            bundle_digest=digest,
            bundle_size=len(BUNDLE),
            selector="all",
            phases="100%",
            bake_s=0,
            probation_s=0,
            max_commands_per_s=100000,
        )


def _controller(engine: Engine, links: DownloadLinks | None) -> RolloutController:
    return RolloutController(
        engine=engine,
        mqtt_url="mqtt://127.0.0.1:1",
        artifact_endpoint="127.0.0.1:1",
        max_commands_per_s=100000,
        publisher=RecordingPublisher(),  # type: ignore[arg-type]
        bundle_links=links,
    )


def test_deploy_commands_carry_one_presigned_url_that_serves_the_bundle(
    engine: Engine, s3_url: str
) -> None:
    store = open_store(s3_url)
    ref = store.put_bytes(BUNDLE)
    _rollout(engine, ref.digest, devices=5)
    ctl = _controller(engine, DownloadLinks(store, ttl_s=600))
    ctl.tick()
    sent = ctl.publisher.sent  # type: ignore[attr-defined]
    assert len(sent) == 5
    deploys = [c.deploy for c in sent]
    assert {d.artifact_endpoint for d in deploys} == {"127.0.0.1:1"}  # the fallback stays
    assert len({d.bundle_url for d in deploys}) == 1  # signed once, not per device
    url, expires = deploys[0].bundle_url, deploys[0].bundle_url_expires_at
    assert 590 < expires / 1000 - time.time() <= 600
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == BUNDLE


def test_without_links_deploy_commands_name_grpc_only(engine: Engine) -> None:
    _rollout(engine, "sha256:" + "cd" * 32, devices=2)
    ctl = _controller(engine, None)
    ctl.tick()
    deploys = [c.deploy for c in ctl.publisher.sent]  # type: ignore[attr-defined]
    assert len(deploys) == 2
    assert all(not d.bundle_url and not d.bundle_url_expires_at for d in deploys)
