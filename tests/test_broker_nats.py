"""The hub and the agent through a broker other than Mosquitto: NATS's MQTT support.

NATS 2.9 speaks MQTT 3.1.1 only, QoS 0/1, has no ``$share``, refuses ``.`` in topics, and
keeps sessions and retained messages in JetStream. The first test measures each of those on
a private ``nats-server`` (the rows of docs/BROKERS.md). The second runs the hub's ingest
(built as ``hub serve`` builds it, with ``$share`` asked for: the hub finds the broker lacks
it and runs one worker on plain persistent subscriptions), its gRPC artifact server and its
rollout controller on that broker, and a real agent that is not enrolled (a device added to
the registry, the hub's public key given): every prediction it makes is stored once, and a
rollout's deploy command reaches it and is applied.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.engine import Engine

from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings
from hub.core.artifacts import open_store
from hub.core.db import make_engine, session_scope
from hub.core.settings import HubSettings
from hub.datasets.sources import load_source
from hub.ingest.__main__ import main as ingest_main
from hub.ingest.serve import broker_ingest_worker
from hub.mqtt.broker import EmbeddedBroker
from hub.mqtt.features import KNOWN, probe_features
from hub.rollouts import service
from hub.rollouts.controller import RolloutController
from hub.rollouts.views import rollout_view
from hub.rpc.server import start_grpc_server
from hub.security.keys import bundle_public_key
from hub.tables import Device
from tests.faults._telemetry import stored
from tests.fixtures.brokers import NatsMqtt

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
    # an extra ingest worker (python -m hub.ingest) would subscribe to nothing: it refuses
    extra = ["--database-url", "sqlite://", "--mqtt-url", nats_mqtt.url, "--fleet", "x"]
    assert ingest_main(extra) == 2

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


def hub_and_agent_through(broker_url: str, data: Path, tmp_path: Path) -> None:
    """The hub's ingest (built as ``hub serve`` builds it, ``$share`` asked for), gRPC and
    rollout controller on ``data`` (a prepared hub data dir) and a not-enrolled agent, all
    on the broker at ``broker_url``: every prediction stored once, a rollout's deploy
    applied. (Also run by hand on RabbitMQ: docs/BROKERS.md.)"""
    settings = HubSettings(
        data_dir=data,
        mqtt_url=broker_url,
        ingest_shared=True,  # asked for; a broker without $share must not get it
        ingest_batch_interval_s=0.1,
        ingest_ack_interval_s=0.2,
    )
    worker, features = broker_ingest_worker(settings, mqtt_url=broker_url, embedded=None)
    assert features.source == "probed" and not features.shared_subscriptions, features
    assert not worker.shared
    engine = make_engine(settings.resolved_database_url)
    server, port = start_grpc_server(
        store=open_store(settings.resolved_artifact_url), host="127.0.0.1", port=0
    )
    controller = RolloutController(
        engine=engine,
        mqtt_url=broker_url,
        fleet=settings.fleet,
        artifact_endpoint=f"127.0.0.1:{port}",
        tick_s=0.2,
    )
    with session_scope(engine) as s:
        s.add(Device(id="nd-1", group="nats"))  # added, never enrolled
    key_file = tmp_path / "hub.pub"
    key_file.write_bytes(bundle_public_key(settings).hex().encode())
    agent = AgentSettings(
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
    try:
        with worker, controller:
            asyncio.run(_agent_story(agent, engine))
        got = stored(engine, "nd-1")
        assert got.predictions == PREDICTIONS, got
        assert got.seqs == list(range(1, len(got.seqs) + 1)), got.seqs
        assert len(got.seqs) >= 2 and got.missing == 0, got
        assert worker.stats().duplicates >= 0  # (redeliveries, if any, were dropped)
    finally:
        server.stop(None)
        engine.dispose()


PREDICTIONS = 60


async def _until(what: str, probe: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if found := await asyncio.to_thread(probe):
            return found
        await asyncio.sleep(0.05)
    pytest.fail(f"{what}: not within {WAIT_S:g}s")


async def _agent_story(settings: AgentSettings, engine: Engine) -> None:
    def online() -> bool:
        with session_scope(engine) as s:
            device = s.get(Device, "nd-1")
            return device is not None and bool(device.online)

    async with Agent(settings=settings) as agent:
        await _until("the device online at the hub", online)
        with session_scope(engine) as s:
            rollout = service.create_rollout(
                s,
                model="digits-mlp",
                version="1",
                selector="group:nats",
                phases="100%",
                bake_s=0.5,
                probation_s=0,
                gates={},
            ).id

        def completed() -> dict[str, Any] | None:
            with session_scope(engine) as s:
                view = rollout_view(s, service.get_rollout(s, rollout_id=rollout))
            assert view["state"] not in {"failed", "rolled_back", "cancelled"}, view
            return view if view["state"] == "completed" else None

        done = await _until("the rollout completed", completed)
        assert {d["id"]: d["state"] for d in done["devices"]} == {"nd-1": "healthy"}
        active = agent.slots.active()
        assert active is not None and str(active.version) == "1", active
        for start in range(0, PREDICTIONS, 6):  # a few windows' worth, over a few ticks
            assert len(agent.predict(DIGITS[start : start + 6]).ids) == 6
            await asyncio.sleep(0.05)
        await _until(
            "every prediction in the stored telemetry",
            lambda: stored(engine, "nd-1").predictions >= PREDICTIONS,
        )
        await asyncio.sleep(1.0)  # a window stored twice would show up now


def test_hub_and_agent_through_nats(
    nats_mqtt: NatsMqtt, prepared_hub: Path, tmp_path: Path
) -> None:
    hub_and_agent_through(nats_mqtt.url, prepared_hub, tmp_path)


def test_a_broker_named_in_the_settings_is_not_probed_and_guards_its_topics() -> None:
    from hub.core.settings import SettingsError
    from hub.mqtt.features import broker_features

    told = broker_features(
        told="nats",
        embedded=None,
        hub_url="mqtt://127.0.0.1:1",  # never connected to: the settings said what it is
        topic_base="edgeloop/v1/site-a",
        ingest_shared=True,
    )
    assert (told.source, told.mqtt5, told.shared_subscriptions) == ("told", False, False)
    with pytest.raises(SettingsError, match="does not allow"):
        broker_features(
            told="rabbitmq",
            embedded=None,
            hub_url="mqtt://127.0.0.1:1",
            topic_base="edgeloop/v1/site.a",
            ingest_shared=False,
        )
    embedded = broker_features(
        told="auto", embedded="amqtt", hub_url="", topic_base="x", ingest_shared=True
    )
    assert (embedded.source, embedded.shared_subscriptions) == ("embedded", False)
