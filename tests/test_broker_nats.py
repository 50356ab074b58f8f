"""The hub and the agent through a broker other than Mosquitto: NATS's MQTT support.

NATS 2.9 speaks MQTT 3.1.1 only, QoS 0/1, has no ``$share``, refuses ``.`` in topics, and
keeps sessions and retained messages in JetStream. The first test measures each of those on
a private ``nats-server`` (the rows of docs/BROKERS.md); the second runs a real ``hub serve``
on it with ``$share`` ingest asked for, which the hub finds the broker lacks and answers with
one ingest worker on plain persistent subscriptions, and a real agent that is not enrolled
(a device added by the admin API, the hub's public key given): every prediction it makes is
stored once, and a rollout's deploy command reaches it and is applied.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings
from hub.core.db import make_engine
from hub.core.settings import HubSettings
from hub.datasets.sources import load_source
from hub.mqtt.broker import EmbeddedBroker
from hub.mqtt.features import KNOWN, probe_features
from hub.security.keys import bundle_public_key
from tests.faults._telemetry import Stored, stored
from tests.fixtures.brokers import NatsMqtt
from tests.fixtures.hub_procs import prepare_hub
from tests.test_hub_serve import _serve, _stop

pytestmark = pytest.mark.timeout(180)
DIGITS = load_source("sklearn:digits").features
WAIT_S = 60.0  # an upper bound for each step on a loaded box, never a measurement


class _Client:
    """A paho 3.1.1 client on a thread loop, collecting what it receives."""

    def __init__(self, port: int, client_id: str, *, clean: bool = True) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean
        )
        self.client.on_message = lambda _c, _u, m: self.got.append(
            (m.topic, bytes(m.payload), bool(m.retain))
        )
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def wait(self, condition: Callable[[], bool], within: float = 5.0) -> bool:
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_what_nats_mqtt_has_and_lacks(nats_mqtt: NatsMqtt, mosquitto: EmbeddedBroker) -> None:
    base = f"edgeloop/v1/t{uuid.uuid4().hex[:8]}"
    found = probe_features(nats_mqtt.url, topic_base=base)
    assert (found.mqtt5, found.shared_subscriptions) == (False, False)
    assert (KNOWN["nats"].mqtt5, KNOWN["nats"].shared_subscriptions) == (False, False)
    on_mosquitto = probe_features(mosquitto.url, topic_base=base)
    assert (on_mosquitto.mqtt5, on_mosquitto.shared_subscriptions) == (True, True)

    port = nats_mqtt.port
    pub = _Client(port, "pub")
    try:
        # retained messages reach a later wildcard subscription (the hub's devices/+/state)
        pub.client.publish(f"{base}/devices/d1/state", b"on", qos=1, retain=True).wait_for_publish(
            5
        )
        sub = _Client(port, "hub-like", clean=False)
        sub.client.subscribe(f"{base}/devices/+/state", qos=1)
        sub.client.subscribe(f"$share/hub/{base}/devices/+/telemetry", qos=1)
        assert sub.wait(lambda: (f"{base}/devices/d1/state", b"on", True) in sub.got)
        # a persistent session keeps what arrives while its client is away
        sub.close()
        for i in range(3):
            pub.client.publish(f"{base}/devices/d{i}/state", b"%d" % i, qos=1).wait_for_publish(5)
            # ... and $share is a literal topic: a SUBACK, then nothing ever
            pub.client.publish(f"{base}/devices/d{i}/telemetry", b"w", qos=1).wait_for_publish(5)
        back = _Client(port, "hub-like", clean=False)
        assert back.wait(lambda: len(back.got) >= 3), back.got
        time.sleep(0.3)
        assert sorted(p for _t, p, _r in back.got) == [b"0", b"1", b"2"], back.got
        back.close()
    finally:
        pub.close()
    # a "." in a topic level: NATS closes the connection (so fleet names and device ids
    # must not have one on NATS 2.9)
    dotted = _Client(port, "dotted")
    try:
        dotted.client.publish(f"{base}/devices/a.b/state", b"x", qos=1)
        assert dotted.wait(lambda: not dotted.client.is_connected())
    finally:
        dotted.close()


def hub_and_agent_through(broker_url: str, tmp_path: Path, log: Callable[[], str]) -> None:
    """A real ``hub serve`` and a not-enrolled agent on the broker at ``broker_url``: every
    prediction stored once, a rollout's deploy applied. (Also run by hand on RabbitMQ.)"""
    data = tmp_path / "data"
    prepare_hub(data)  # digits-mlp@1 packaged and signed by this hub's key
    key_file = tmp_path / "hub.pub"
    key_file.write_bytes(bundle_public_key(HubSettings(data_dir=data)).hex().encode())
    proc, url, hub_log = _serve(
        tmp_path,
        EDGELOOP_MQTT_URL=broker_url,
        EDGELOOP_INGEST_SHARED="1",  # asked for; a broker without $share must not get it
        EDGELOOP_ROLLOUT_TICK_S="0.2",
        EDGELOOP_INGEST_ACK_INTERVAL_S="0.2",
        EDGELOOP_TRIGGER_INTERVAL_S="0",
        EDGELOOP_MONITOR_INTERVAL_S="0",
    )

    def logs() -> str:
        return f"--- hub ---\n{hub_log.read_text()[-4000:]}\n--- broker ---\n{log()}"

    token = (data / "admin_token").read_text().strip()
    http = httpx.Client(
        base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    try:
        mqtt_health = httpx.get(f"{url}/healthz", timeout=5).json()["mqtt"]
        assert mqtt_health["features"]["source"] == "probed", mqtt_health
        assert mqtt_health["features"]["shared_subscriptions"] is False, mqtt_health
        assert mqtt_health["ingest_shared"] is False, mqtt_health
        assert "one ingest worker on plain persistent subscriptions" in hub_log.read_text()
        made = http.post("/devices", json={"id": "nd-1", "group": "nats"})
        assert made.status_code == 201, made.text
        settings = AgentSettings(
            device_id="nd-1",
            data_dir=tmp_path / "agent",
            mqtt_url=broker_url,
            public_key=key_file,
            probation_s=0.0,
            reconnect_initial_s=0.1,
            reconnect_max_s=0.5,
            telemetry_tick_s=0.1,
            telemetry_window_s=0.3,
            telemetry_max_predictions=7,
        )
        engine = make_engine(HubSettings(data_dir=data).resolved_database_url)
        try:
            asyncio.run(_agent_story(settings, http, lambda: stored(engine, "nd-1"), logs))
            got = stored(engine, "nd-1")
            assert got.predictions == PREDICTIONS, got
            assert got.seqs == list(range(1, len(got.seqs) + 1)), got.seqs
            assert len(got.seqs) >= 2 and got.missing == 0, got
        finally:
            engine.dispose()
    finally:
        http.close()
        _stop(proc)


PREDICTIONS = 60


async def _agent_story(
    settings: AgentSettings,
    http: httpx.Client,
    stored_now: Callable[[], Stored],
    logs: Callable[[], str],
) -> None:
    async def until(what: str, probe: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if found := await asyncio.to_thread(probe):
                return found
            await asyncio.sleep(0.1)
        pytest.fail(f"{what}: not within {WAIT_S:g}s\n{logs()}")

    async with Agent(settings=settings) as agent:
        await until(
            "the device online at the hub", lambda: http.get("/devices/nd-1").json()["online"]
        )
        made = await asyncio.to_thread(
            http.post,
            "/rollouts",
            json={
                "model": "digits-mlp",
                "version": "1",
                "selector": "group:nats",
                "phases": "100%",
                "bake_s": 0.5,
                "probation_s": 0,
                "gates": {},
            },
        )
        assert made.status_code == 201, made.text
        rollout = made.json()["id"]

        def completed() -> dict[str, Any] | None:
            view = dict(http.get(f"/rollouts/{rollout}").json())
            assert view["state"] not in {"failed", "rolled_back", "cancelled"}, view
            return view if view["state"] == "completed" else None

        done = await until("the rollout completed", completed)
        assert {d["id"]: d["state"] for d in done["devices"]} == {"nd-1": "healthy"}
        active = agent.slots.active()
        assert active is not None and active.version == "1", active
        for start in range(0, PREDICTIONS, 6):  # a few windows' worth, over a few ticks
            result = agent.predict(DIGITS[start : start + 6])
            assert len(result.ids) == 6
            await asyncio.sleep(0.05)
        await until(
            "every prediction in the stored telemetry",
            lambda: stored_now().predictions >= PREDICTIONS,
        )
        await asyncio.sleep(1.0)  # a window stored twice would show up now


def test_hub_and_agent_through_nats(nats_mqtt: NatsMqtt, tmp_path: Path) -> None:
    hub_and_agent_through(nats_mqtt.url, tmp_path, nats_mqtt.log)
