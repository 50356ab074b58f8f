"""The embedded broker against real brokers: delivery, shared subscriptions, persistence."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub.mqtt import broker as broker_module
from hub.mqtt.broker import BrokerError, EmbeddedBroker, wait_for_mqtt
from tests.fixtures.brokers import require_mosquitto

TIMEOUT = 5.0


class Client:
    """A paho client on its own network thread that records what it receives."""

    def __init__(
        self,
        broker: EmbeddedBroker,
        *,
        client_id: str | None = None,
        v5: bool = False,
        persistent: bool = False,
    ) -> None:
        self.broker = broker
        self.v5 = v5
        self.persistent = persistent
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.session_present: bool | None = None
        self.connack: Any = None
        self._connected = threading.Event()
        self._subacks: queue.Queue[Any] = queue.Queue()
        kwargs: dict[str, Any] = {} if v5 else {"clean_session": not persistent}
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"t-{uuid.uuid4().hex[:10]}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            reconnect_on_failure=False,
            **kwargs,
        )
        self.paho.on_connect = self._on_connect
        self.paho.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.paho.on_subscribe = lambda _c, _u, _mid, codes, _p: self._subacks.put(codes)

    def _on_connect(self, _c: Any, _u: Any, flags: Any, code: Any, _p: Any) -> None:
        self.connack = code
        self.session_present = bool(flags.session_present)
        self._connected.set()

    def connect(self, *, accept: bool = True) -> Client:
        props = None
        if self.v5 and self.persistent:  # (amqtt hangs on a CONNECT with properties)
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        clean_start = not self.persistent if self.v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY
        self.paho.connect("127.0.0.1", self.broker.port, clean_start=clean_start, properties=props)
        self.paho.loop_start()
        assert self._connected.wait(TIMEOUT), "no CONNACK"
        if accept:
            assert not self.connack.is_failure, f"CONNECT refused: {self.connack}"
        return self

    def subscribe(self, topic: str) -> None:
        self.paho.subscribe(topic, qos=1)
        codes = self._subacks.get(timeout=TIMEOUT)
        assert all(not code.is_failure for code in codes), codes

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.paho.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(TIMEOUT)  # PUBACK: the broker has it
        assert info.is_published()

    def receive(self, count: int) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + TIMEOUT
        got: list[mqtt.MQTTMessage] = []
        while len(got) < count:
            try:
                got.append(self.messages.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"received {len(got)} of {count} messages") from None
        return got

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def _topic() -> str:
    return f"edgeloop/test/{uuid.uuid4().hex[:10]}"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_qos1_round_trip(any_broker: EmbeddedBroker) -> None:
    topic = _topic()
    sub = Client(any_broker).connect()
    pub = Client(any_broker).connect()
    try:
        sub.subscribe(f"{topic}/#")
        payloads = [f"m{i}".encode() for i in range(50)]
        for payload in payloads:
            pub.publish(f"{topic}/telemetry", payload)
        got = sub.receive(len(payloads))
        assert [m.payload for m in got] == payloads  # in order, none lost
        assert {m.qos for m in got} == {1}
    finally:
        sub.close()
        pub.close()


def test_shared_subscription_splits_messages(mosquitto: EmbeddedBroker) -> None:
    topic = _topic()
    workers = [Client(mosquitto, v5=True).connect() for _ in range(2)]
    pub = Client(mosquitto, v5=True).connect()
    try:
        for worker in workers:
            worker.subscribe(f"$share/hub/{topic}/+/telemetry")
        sent = {f"m{i}".encode() for i in range(40)}
        for i, payload in enumerate(sorted(sent)):
            pub.publish(f"{topic}/dev{i}/telemetry", payload)
        got: list[list[bytes]] = [[], []]
        deadline = time.monotonic() + TIMEOUT
        while sum(map(len, got)) < len(sent) and time.monotonic() < deadline:
            for i, worker in enumerate(workers):
                while not worker.messages.empty():
                    got[i].append(bytes(worker.messages.get().payload))
            time.sleep(0.01)  # polling two queues, bounded by the deadline
        # a duplicate would arrive right behind the original: give it a moment to show up
        with pytest.raises(queue.Empty):
            got[0].append(bytes(workers[0].messages.get(timeout=0.2).payload))
        assert workers[1].messages.empty()
        assert sorted(got[0] + got[1]) == sorted(sent)  # each message exactly once
        assert got[0] and got[1]  # and the group split them
    finally:
        for client in (*workers, pub):
            client.close()


@pytest.mark.parametrize("v5", [False, True], ids=["mqtt311", "mqtt5"])
def test_persistent_session_survives_kill_and_restart(
    mosquitto_fresh: EmbeddedBroker, v5: bool
) -> None:
    broker, topic = mosquitto_fresh, _topic()
    device = f"dev-{uuid.uuid4().hex[:8]}"
    sub = Client(broker, client_id=device, v5=v5, persistent=True).connect()
    sub.subscribe(f"{topic}/cmd")
    sub.close()

    pub = Client(broker).connect()
    payloads = [f"cmd{i}".encode() for i in range(20)]
    for payload in payloads:
        pub.publish(f"{topic}/cmd", payload)
    pub.close()
    broker.save()  # what autosave would do within autosave_interval
    broker.kill()
    assert not broker.is_running()
    broker.restart()

    sub = Client(broker, client_id=device, v5=v5, persistent=True).connect()
    try:
        assert sub.session_present
        assert [m.payload for m in sub.receive(len(payloads))] == payloads
    finally:
        sub.close()


def test_autosave_keeps_queued_messages_across_kill(mosquitto_fresh: EmbeddedBroker) -> None:
    broker, topic, device = mosquitto_fresh, _topic(), f"dev-{uuid.uuid4().hex[:8]}"
    sub = Client(broker, client_id=device, persistent=True).connect()
    sub.subscribe(topic)
    sub.close()
    pub = Client(broker).connect()
    pub.publish(topic, b"queued")
    pub.close()
    acked = time.time_ns()
    deadline = time.monotonic() + 5.0  # autosave_interval is 1 s
    while not (
        broker.persistence_file.exists() and broker.persistence_file.stat().st_mtime_ns > acked
    ):
        assert time.monotonic() < deadline, "mosquitto never autosaved"
        time.sleep(0.05)  # waiting for the autosave, bounded by the deadline
    broker.kill()
    broker.start()
    sub = Client(broker, client_id=device, persistent=True).connect()
    try:
        assert [m.payload for m in sub.receive(1)] == [b"queued"]
    finally:
        sub.close()


@pytest.mark.parametrize("crash", [False, True], ids=["stop", "kill"])
def test_retained_message_survives_restart(mosquitto_fresh: EmbeddedBroker, crash: bool) -> None:
    broker, topic = mosquitto_fresh, f"{_topic()}/state"
    pub = Client(broker).connect()
    pub.publish(topic, b"online", retain=True)
    pub.close()
    if crash:
        broker.save()
        broker.kill()
    broker.restart()
    sub = Client(broker).connect()
    try:
        sub.subscribe(topic)
        [msg] = sub.receive(1)
        assert (msg.payload, msg.retain) == (b"online", True)
    finally:
        sub.close()


def test_auto_picks_mosquitto_when_present(tmp_path: Path) -> None:
    require_mosquitto()
    broker = EmbeddedBroker(kind="auto", port=0, data_dir=tmp_path)
    assert broker.kind_in_use == "mosquitto"


def test_auto_falls_back_to_amqtt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_module.shutil, "which", lambda *_a, **_k: None)
    assert EmbeddedBroker(kind="auto", port=0, data_dir=tmp_path).kind_in_use == "amqtt"
    with pytest.raises(BrokerError, match="no mosquitto binary"):
        EmbeddedBroker(kind="mosquitto", port=0, data_dir=tmp_path)


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
def test_port_in_use_fails_clearly(tmp_path: Path, kind: str) -> None:
    if kind == "mosquitto":
        require_mosquitto()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = EmbeddedBroker(kind=kind, port=port, data_dir=tmp_path)  # type: ignore[arg-type]
        started = time.monotonic()
        with pytest.raises(
            BrokerError, match=re.escape(f"127.0.0.1:{port}: Address already in use")
        ):
            broker.start()
        assert time.monotonic() - started < 2.0
        assert not broker.is_running()
        assert broker.pid is None


def test_failed_start_reports_the_log_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_mosquitto()
    broker = EmbeddedBroker(kind="mosquitto", port=0, data_dir=tmp_path)
    monkeypatch.setattr(broker, "mosquitto_config", lambda: "no_such_option 1\n")
    with pytest.raises(BrokerError, match=r"(?s)exited with status.*no_such_option"):
        broker.start()
    assert not broker.is_running()


def test_stop_is_idempotent_and_leaves_no_process(mosquitto_fresh: EmbeddedBroker) -> None:
    broker = mosquitto_fresh
    pid, port = broker.pid, broker.port
    assert pid is not None and broker.is_running()
    broker.stop()
    broker.stop()
    assert not broker.is_running() and broker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    assert not _listening(port)
    broker.start()  # and it comes back on the same port
    assert broker.port == port and broker.is_running()


def test_context_manager_and_amqtt_inside_event_loop(tmp_path: Path) -> None:
    async def main() -> None:
        with EmbeddedBroker(kind="amqtt", port=0, data_dir=tmp_path) as broker:
            await asyncio.to_thread(wait_for_mqtt, "127.0.0.1", broker.port, 5.0)
            assert broker.is_running() and broker.url == f"mqtt://127.0.0.1:{broker.port}"
        assert not broker.is_running()
        assert not _listening(broker.port)
        broker.stop()  # idempotent

    asyncio.run(main())


def test_amqtt_refuses_mqtt5(amqtt_broker: EmbeddedBroker) -> None:
    client = Client(amqtt_broker, v5=True).connect(accept=False)
    try:
        assert client.connack.is_failure
        assert "Unsupported protocol version" in str(client.connack)
    finally:
        client.close()


def test_wait_for_mqtt_times_out_on_a_silent_port() -> None:
    with socket.socket() as silent:  # accepts TCP, never answers MQTT
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(BrokerError, match="no MQTT broker answered"):
            wait_for_mqtt("127.0.0.1", silent.getsockname()[1], timeout=0.5)
        assert time.monotonic() - started < 3.0


def _gone(pid: int) -> bool:
    """Exited (a zombie left to an init that doesn't reap counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_no_orphan_when_the_hub_process_ends(tmp_path: Path, how: str) -> None:
    require_mosquitto()
    script = (
        "import sys, time; from pathlib import Path; from hub.mqtt.broker import EmbeddedBroker\n"
        f"b = EmbeddedBroker(kind='mosquitto', port=0, data_dir=Path({str(tmp_path)!r}))\n"
        "b.start(); print(b.pid, flush=True)\n"
        + ("sys.exit(0)\n" if how == "exit" else "time.sleep(60)\n")
    )
    hub = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path(__file__).parents[1]
    )
    assert hub.stdout is not None
    pid = int(hub.stdout.readline())
    if how == "sigkill":
        hub.kill()  # no atexit: the kernel's parent-death signal must do it
    hub.wait(TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while not _gone(pid):
        assert time.monotonic() < deadline, f"mosquitto {pid} outlived its hub ({how})"
        time.sleep(0.02)  # polling the pid, bounded by the deadline
