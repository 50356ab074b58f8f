"""The hub's MQTT ingest worker: device messages in, rows out, acks only after the commit.

One paho-mqtt 2.x client (MQTT 5, ``manual_ack``, persistent session under a fixed client
id) driven by this worker's own thread. Messages are decoded in the receive callback and
collected; the batch is committed when it holds ``batch_size`` messages or is
``batch_interval_s`` old, and only then is every message of it acknowledged. A crash before
the commit leaves the messages un-acked: the broker redelivers them to the session (or to
another worker of the shared subscription) and the dedupe keys drop what was stored twice.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from hub.ingest._decode import STORE_ERROR, UNKNOWN_DEVICE, Item, Rejected, decode
from hub.ingest._devices import DeviceCache
from hub.ingest._stats import IngestStats, RateLimitedLog
from hub.ingest._store import pack, write_batch
from hub.mqtt import MqttTarget
from proto.topics import TopicKind, Topics

log = logging.getLogger("edgeloop.ingest")
SHARED_KINDS = (TopicKind.EVENTS, TopicKind.TELEMETRY, TopicKind.FEEDBACK)
RETENTION_EVERY_S = 3600.0
READ_BURST = 64


class IngestWorker:
    """Subscribes to a fleet's device topics and stores what arrives; see the module doc."""

    def __init__(
        self,
        *,
        engine: Engine,
        mqtt_url: str,
        fleet: str = "default",
        topic_prefix: str = "edgeloop/v1",
        shared: bool = False,
        client_id: str = "edgeloop-hub-ingest",
        batch_size: int = 200,
        batch_interval_s: float = 0.2,
        max_payload_bytes: int = 1_048_576,
        accept_unknown_devices: bool = False,
        session_expiry_s: int = 7 * 24 * 3600,
        retention_s: float | None = None,
        mqtt_protocol: Literal["5", "3.1.1"] = "5",
    ) -> None:
        if batch_size < 1 or batch_interval_s <= 0:
            raise ValueError("batch_size must be >= 1 and batch_interval_s > 0")
        self._engine, self._target = engine, MqttTarget.from_url(mqtt_url)
        self._topics = Topics(prefix=topic_prefix, fleet=fleet)
        self._shared, self._batch_size, self._interval = shared, batch_size, batch_interval_s
        self._max_bytes, self._accept_unknown = max_payload_bytes, accept_unknown_devices
        self._retention_s, self._v5 = retention_s, mqtt_protocol == "5"
        self._devices = DeviceCache(engine=engine)
        self._stats = IngestStats()
        self._warn = RateLimitedLog(log)
        self._lock = threading.RLock()
        self._items: list[Item] = []
        self._acks: list[tuple[int, int, int]] = []  # (mid, qos, connection generation)
        self._batch_started = 0.0
        self._retry_at = 0.0
        self._generation = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ingest-{client_id}", daemon=True)
        self._client = self._make_client(client_id, session_expiry_s)

    # Public -------------------------------------------------------------------------------

    @property
    def filters(self) -> list[str]:
        """The subscriptions: events/telemetry/feedback (shared or plain) and plain state."""
        kinds = [
            self._topics.shared(k) if self._shared else self._topics.wildcard(k)
            for k in SHARED_KINDS
        ]
        return [*kinds, self._topics.wildcard(TopicKind.STATE)]

    def start(self, wait_s: float = 10.0) -> bool:
        """Start the worker thread; True once subscribed (it keeps retrying after ``wait_s``)."""
        self._thread.start()
        ready = self._ready.wait(wait_s)
        if not ready:
            log.warning("ingest not subscribed after %.0fs; still trying %r", wait_s, self._target)
        return ready

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what is pending, ack it, disconnect (the session stays for the next start)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def flush(self) -> None:
        """Commit (and then ack) every message received so far."""
        with self._lock:
            self._commit(force=True)

    def stats(self) -> IngestStats:
        with self._lock:
            snapshot = self._stats.copy()
            snapshot.pending = len(self._acks)
            return snapshot

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()

    # MQTT ---------------------------------------------------------------------------------

    def _make_client(self, client_id: str, session_expiry_s: int) -> mqtt.Client:
        # MQTT 3.1.1 only for amqtt (no MQTT 5 there): clean session off, no properties.
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else False,
            manual_ack=True,
        )
        self._target.configure(client)  # login, and TLS for mqtts://
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._connect_props = Properties(PacketTypes.CONNECT)
        self._connect_props.SessionExpiryInterval = session_expiry_s
        # Without it Mosquitto caps un-acked deliveries at max_inflight_messages (e.g. 100),
        # and a batch larger than that could only ever fill up by the interval.
        self._connect_props.ReceiveMaximum = min(65535, max(1024, 2 * self._batch_size))
        return client

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None
    ) -> None:
        if reason.is_failure:
            self._warn.warning("connect", "broker refused the ingest connection: %s", reason)
            return
        with self._lock:
            self._generation += 1
            self._stats.connects += 1
            self._stats.connected = True
        client.subscribe([(f, 1) for f in self.filters])

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        failed = [str(code) for code in codes if code.is_failure]
        if failed:
            log.error("ingest subscriptions refused: %s (filters %s)", failed, self.filters)
            return
        self._ready.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        with self._lock:
            self._stats.connected = False
        if not self._stop.is_set():
            self._warn.warning("disconnect", "ingest lost the broker: %s", reason)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._stats.received += 1
            if not self._acks:
                self._batch_started = time.monotonic()
            self._acks.append((message.mid, message.qos, self._generation))
            try:
                item = decode(
                    topics=self._topics,
                    topic=message.topic,
                    payload=bytes(message.payload),
                    max_bytes=self._max_bytes,
                )
                pack(item)
                if not self._accept_unknown and not self._devices.known(item.device_id):
                    raise Rejected(UNKNOWN_DEVICE, f"device {item.device_id!r} is not registered")
            except Rejected as rejected:
                self._reject(rejected.reason, f"{message.topic}: {rejected.detail}")
            except Exception as exc:  # never let one message stop the loop
                self._reject(STORE_ERROR, f"{message.topic}: {type(exc).__name__}: {exc}")
            else:
                self._items.append(item)
            if len(self._acks) >= self._batch_size:
                self._commit(force=False)

    def _reject(self, reason: str, detail: str) -> None:
        self._stats.rejected[reason] = self._stats.rejected.get(reason, 0) + 1
        self._warn.warning(reason, "ingest rejected a message (%s): %s", reason, detail)

    # Batches ------------------------------------------------------------------------------

    def _commit(self, *, force: bool) -> None:
        """Store the batch, then ack it; on a database outage keep it and retry later."""
        if not self._acks or (not force and time.monotonic() < self._retry_at):
            return
        items, now = self._items, datetime.now(UTC)
        try:
            stored, duplicates = self._write(items, now)
        except OperationalError as exc:  # database unreachable / locked: keep, back off
            self._stats.store_retries += 1
            self._retry_at = time.monotonic() + min(
                5.0, 0.1 * 2 ** min(self._stats.store_retries, 6)
            )
            self._warn.warning("db", "ingest cannot store a batch (will retry): %s", exc)
            return
        self._stats.stored += stored
        self._stats.duplicates += duplicates
        self._stats.batches += 1
        self._retry_at = 0.0
        for mid, qos, generation in self._acks:
            # After a reconnect old packet ids mean nothing: the broker redelivers those.
            if qos > 0 and generation == self._generation:
                self._client.ack(mid, qos)
        self._items, self._acks = [], []

    def _write(self, items: list[Item], now: datetime) -> tuple[int, int]:
        groups = self._devices.groups
        try:
            r = write_batch(
                self._engine, items, groups=groups, now=now, create_unknown=self._accept_unknown
            )
            return r.stored, r.duplicates
        except OperationalError:
            raise
        except SQLAlchemyError as exc:  # one bad row: store the others one by one
            log.warning(
                "ingest batch failed (%s); storing its %d messages one by one", exc, len(items)
            )
        stored = duplicates = 0
        for item in items:
            try:
                r = write_batch(
                    self._engine,
                    [item],
                    groups=groups,
                    now=now,
                    create_unknown=self._accept_unknown,
                )
                stored, duplicates = stored + r.stored, duplicates + r.duplicates
            except IntegrityError:  # a concurrent worker stored the same key first
                duplicates += 1
            except OperationalError:
                raise
            except SQLAlchemyError as exc:
                self._reject(STORE_ERROR, f"{item.kind} from {item.device_id}: {exc}")
        return stored, duplicates

    # Thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        delay, connected_once = 0.1, False
        next_retention = time.monotonic() + 60.0
        while not self._stop.is_set():
            try:
                if not connected_once:
                    if self._v5:
                        self._client.connect(
                            self._target.host,
                            self._target.port,
                            keepalive=30,
                            clean_start=False,
                            properties=self._connect_props,
                        )
                    else:
                        self._client.connect(self._target.host, self._target.port, keepalive=30)
                    connected_once = True
                rc = self._client.loop(timeout=min(0.05, self._interval))
                if rc == mqtt.MQTT_ERR_SUCCESS:
                    # Read what else is buffered without a select() per message (paho's loop
                    # reads one packet); stops at the first would-block.
                    rc = self._client.loop_read(max_packets=READ_BURST)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    self._stop.wait(delay)
                    delay = min(delay * 2, 5.0)
                    self._client.reconnect()
                else:
                    delay = 0.1
            except OSError as exc:  # broker down: back off and try again
                self._warn.warning("connect", "ingest cannot reach %r: %s", self._target, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
            with self._lock:
                if self._acks and time.monotonic() - self._batch_started >= self._interval:
                    self._commit(force=False)
            if self._retention_s and time.monotonic() >= next_retention:
                next_retention = time.monotonic() + RETENTION_EVERY_S
                self._run_retention(self._retention_s)
        self._shutdown()

    def _run_retention(self, retention_s: float) -> None:
        from hub.ingest.retention import rollup_and_prune

        try:
            older_than = datetime.now(UTC) - timedelta(seconds=retention_s)
            result = rollup_and_prune(self._engine, older_than=older_than)
            log.info("telemetry retention: %s", result)
        except Exception:  # a database hiccup: try again next time
            log.exception("telemetry roll-up failed")

    def _shutdown(self) -> None:
        with self._lock:
            self._commit(force=True)
        if self._client.is_connected():
            self._client.loop(timeout=0.1)  # send the acks
            self._client.disconnect()
            self._client.loop(timeout=0.1)
        with self._lock:
            self._stats.connected = False
