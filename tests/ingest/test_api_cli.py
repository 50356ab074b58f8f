"""``GET /api/v1/ingest/stats`` with a live worker, and ``edgeloop ingest stats --json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edgeloop_cli import main
from hub.api import create_app
from hub.core.db import make_engine
from hub.core.settings import HubSettings
from hub.ingest import IngestWorker
from hub.mqtt.broker import EmbeddedBroker
from hub.tables import create_all
from tests.ingest import helpers as h

TOKEN = "t" * 40


def test_api_reports_worker_counters_and_gaps(tmp_path: Path, mosquitto: EmbeddedBroker) -> None:
    settings = HubSettings(data_dir=tmp_path, admin_token=TOKEN)  # type: ignore[arg-type]
    engine = make_engine(settings.resolved_database_url)
    create_all(engine)
    h.register(engine, "cam-1")
    topics = h.fleet_topics()
    app = create_app(settings)
    worker = IngestWorker(
        engine=engine, mqtt_url=mosquitto.url, fleet=topics.fleet, client_id=f"api-{topics.fleet}"
    )
    app.state.ingest = worker
    with worker, TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        with h.publisher(mosquitto.port) as publish:
            for seq in (1, 2, 5):
                publish(topics.telemetry("cam-1"), h.window("cam-1", seq, dropped=1))
            publish(topics.telemetry("cam-1"), b"junk")
            h.wait_until(lambda: worker.stats().received == 4, what="4 messages")
        worker.flush()
        body = client.get("/api/v1/ingest/stats").json()
        assert client.get("/api/v1/ingest/stats", headers={"Authorization": ""}).status_code == 401
    assert body["worker"]["stored"] == 3 and body["worker"]["rejected"] == {"malformed": 1}
    assert body["missing"] == 2 and body["dropped_windows"] == 3 and body["devices"] == 1
    [stream] = body["streams"]
    assert stream["missing"] == [[3, 4]] and stream["max_seq"] == 5
    engine.dispose()


def test_cli_ingest_stats_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = HubSettings(data_dir=tmp_path)
    engine = make_engine(settings.resolved_database_url)
    create_all(engine)
    from datetime import UTC, datetime

    from hub.ingest._decode import decode
    from hub.ingest._store import write_batch

    items = [
        decode(
            topics=h.Topics(),
            topic=h.Topics().telemetry(d),
            payload=h.window(d, s),
            max_bytes=1 << 20,
        )
        for d, s in (("a", 1), ("a", 3), ("b", 1))
    ]
    write_batch(engine, items, groups={}, now=datetime.now(UTC), create_unknown=False)
    engine.dispose()
    code = main(["--data-dir", str(tmp_path), "ingest", "stats", "--only-gaps", "--json"])
    body = json.loads(capsys.readouterr().out)
    assert code == 0 and body["worker"] is None and body["missing"] == 1
    assert [(s["device_id"], s["missing"]) for s in body["streams"]] == [("a", [[2, 2]])]
    code = main(["--data-dir", str(tmp_path), "ingest", "stats", "--device", "b", "--json"])
    body = json.loads(capsys.readouterr().out)
    assert code == 0 and [s["device_id"] for s in body["streams"]] == ["b"]
