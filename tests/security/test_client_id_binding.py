"""One device cannot knock another offline by connecting with its client id.

The hub's embedded Mosquitto ties client id to login on the device listener
(``use_username_as_clientid``); the hub's own clients, which share one login under several
client ids, use a second listener on loopback (``EmbeddedBroker.internal_url``). Real
Mosquitto, the hub-generated passwd + ACL, passwords and client certificates.
"""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from hub.core.errors import InvalidInput
from hub.mqtt.auth import HUB_MQTT_USER, hub_mqtt_url
from hub.mqtt.target import MqttTarget
from tests.security.conftest import Client, SecuredHub, connect
from tests.security.test_mtls import WAIT_S, MtlsHub, _connect, _enrol, _hub_conn, mtls_hub

__all__ = ["mtls_hub"]  # the fixture, shared with test_mtls


def _internal(secured: SecuredHub, client_id: str) -> Client:
    """A hub client the way ``hub serve`` makes one: its login on the internal listener."""
    target = MqttTarget.from_url(
        hub_mqtt_url(secured.settings, broker_url=secured.broker.internal_url)
    )
    assert (target.host, target.tls, target.username) == ("127.0.0.1", False, HUB_MQTT_USER)
    assert target.port != secured.broker.port and target.password
    return connect(target.port, user=HUB_MQTT_USER, password=target.password, client_id=client_id)


def test_a_device_cannot_take_over_another_devices_client_id(secured: SecuredHub) -> None:
    pw_a = secured.security.enroll(device_id="dev-a", token=None, wait=True).mqtt_password
    pw_b = secured.security.enroll(device_id="dev-b", token=None, wait=True).mqtt_password
    t, port = secured.topics, secured.broker.port
    hub = _internal(secured, "edgeloop-test-hub")
    hub.subscribe(t.wildcard("telemetry"))
    b = connect(port, user="dev-b", password=pw_b)  # (clean session: a new one forgets this)
    assert not b.subscribe(t.command("dev-b"))[0].is_failure

    # A's valid login with B's client id: the broker renames the connection to "dev-a".
    a = connect(port, user="dev-a", password=pw_a, client_id="dev-b")
    try:
        hub.paho.publish(t.command("dev-b"), b"for b", qos=1).wait_for_publish(WAIT_S)
        assert b.next_message() == (t.command("dev-b"), b"for b")  # same session, still on
        assert not b.disconnected.is_set(), "device a's connect knocked device b offline"
        b.publish(t.telemetry("dev-b"), b"b still publishes")
        assert hub.next_message() == (t.telemetry("dev-b"), b"b still publishes")
        # A works under its own id (its own topics only, as before).
        assert not a.subscribe(t.command("dev-a"))[0].is_failure
        a.publish(t.telemetry("dev-a"), b"a's own")
        assert hub.next_message() == (t.telemetry("dev-a"), b"a's own")
        hub.paho.publish(t.command("dev-a"), b"for a", qos=1).wait_for_publish(WAIT_S)
        assert a.next_message() == (t.command("dev-a"), b"for a")
        assert b.inbox.empty() and not b.disconnected.is_set()
    finally:
        for client in (a, b, hub):
            client.close()


def test_hub_clients_share_one_login_on_the_internal_listener(secured: SecuredHub) -> None:
    password = secured.security.enroll(device_id="dev-c", token=None, wait=True).mqtt_password
    t = secured.topics
    first, second = _internal(secured, "edgeloop-one"), _internal(secured, "edgeloop-two")
    device = connect(secured.broker.port, user="dev-c", password=password)
    try:
        for hub in (first, second):
            hub.subscribe(t.telemetry("dev-c"))
        device.publish(t.telemetry("dev-c"), b"to both")
        for hub in (first, second):
            assert hub.next_message() == (t.telemetry("dev-c"), b"to both")
            assert not hub.disconnected.is_set(), "two hub clients kicked each other off"
        # The internal listener takes the same logins and ACL: a device stays in its lane.
        with pytest.raises(ConnectionRefusedError):
            connect(secured.broker.internal_port, user="dev-c", password="wrong")
    finally:
        for client in (first, second, device):
            client.close()


def test_device_ids_like_the_hubs_client_ids_are_reserved(secured: SecuredHub) -> None:
    # as a login (= client id on the device listener) it could take over the hub's session
    for device_id in ("edgeloop-hub", "edgeloop-hub-ingest", "edgeloop-rollouts-1"):
        with pytest.raises(InvalidInput, match="reserved"):
            secured.security.enroll(device_id=device_id, token=None)


def _telemetry(inbox: queue.Queue[tuple[str, bytes]]) -> tuple[str, bytes]:
    """The next telemetry message (the hub's client reads ``devices/#``, its commands too)."""
    while not (message := inbox.get(timeout=WAIT_S))[0].endswith("/telemetry"):
        pass
    return message


def test_a_device_certificate_cannot_take_over_another_client_id(
    mtls_hub: MtlsHub, tmp_path: Path
) -> None:
    cert_a = _enrol(mtls_hub, "dev-a", tmp_path / "agent")
    cert_b = _enrol(mtls_hub, "dev-b", tmp_path / "agent")
    t = mtls_hub.topics
    hub = _hub_conn(mtls_hub)
    b = _connect(mtls_hub, client_id="dev-b", cert=cert_b)
    assert not b.subscribe(t.command("dev-b"))[0].is_failure
    a = _connect(mtls_hub, client_id="dev-b", cert=cert_a)  # A's certificate, B's client id
    try:
        hub.publish(t.command("dev-b"), b"for b")
        assert b.inbox.get(timeout=WAIT_S) == (t.command("dev-b"), b"for b")
        assert not b.gone.is_set(), "device a's connect knocked device b offline"
        a.publish(t.telemetry("dev-a"), b"a's own")
        assert _telemetry(hub.inbox) == (t.telemetry("dev-a"), b"a's own")
        b.publish(t.telemetry("dev-b"), b"b's own")
        assert _telemetry(hub.inbox) == (t.telemetry("dev-b"), b"b's own")
        with pytest.raises(queue.Empty):
            b.inbox.get_nowait()
        assert not b.gone.is_set()
    finally:
        for conn in (a, b, hub):
            conn.close()
