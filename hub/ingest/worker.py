"""The hub's MQTT ingest worker: device messages in, rows out, acks only after the commit.

One paho-mqtt 2.x client (MQTT 5, ``manual_ack``, persistent session under a fixed client
id) driven by this worker's own thread. Messages are decoded in the receive callback and
collected; the batch is committed when it holds ``batch_size`` messages or is
``batch_interval_s`` old, and only then is every message of it acknowledged. A crash before
the commit leaves the messages un-acked: the broker redelivers them to the session (or to
another worker of the shared subscription) and the dedupe keys drop what was stored twice.

After each commit the worker also tells devices what it has handled (stored, duplicate or
rejected for good): a coalesced ``DeliveryAck`` per device on ``devices/<id>/ack``, at most
one per ``ack_interval_s`` (``hub.ingest._acks``), so agents with ``delivery = "hub_ack"``
keep an item until the hub has it, not only until the broker has it.

With ``decode_process=True`` the receive thread only collects the messages; decoding and
storing run in a child process (``hub.ingest._split``) with the same code and guarantees,
on a second core.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy.engine import Engine

from hub.core.service import ServiceHealth
from hub.ingest._acks import AckKey, AckPublisher
from hub.ingest._batch import DatabaseUnavailable, Decoder, Message, retry_delay, store_items
from hub.ingest._decode import Item
from hub.ingest._devices import DeviceCache
from hub.ingest._split import ChildConfig, DecodeProcess, database_url
from hub.ingest._stats import IngestStats, RateLimitedLog
from hub.mqtt.target import MqttTarget
from proto.topics import TopicKind, Topics

log = logging.getLogger("edgeloop.ingest")
SHARED_KINDS = (TopicKind.EVENTS, TopicKind.TELEMETRY, TopicKind.FEEDBACK)
RETENTION_EVERY_S = 3600.0
READ_BURST = 64
MAX_IN_FLIGHT = 6  # batches handed to the decode process and not yet committed


class IngestWorker:
    """Subscribes to a fleet's device topics and stores what arrives; see the module doc.

    ``device_refresh_s``: how often the registry of devices is reloaded for the device check
    (a deleted device is still accepted for up to that long).
    """

    name = "ingest"

    def __init__(
        self,
        *,
        engine: Engine,
        mqtt_url: str,
        fleet: str = "default",
        topic_prefix: str = "edgeloop/v1",
        shared: bool = False,
        client_id: str = "edgeloop-hub-ingest",
        batch_size: int = 1000,
        batch_interval_s: float = 0.2,
        max_payload_bytes: int = 1_048_576,
        accept_unknown_devices: bool = False,
        session_expiry_s: int = 7 * 24 * 3600,
        retention_s: float | None = None,
        mqtt_protocol: Literal["5", "3.1.1"] = "5",
        ack_interval_s: float | None = 0.5,
        decode_process: bool = False,
        device_refresh_s: float = 10.0,
    ) -> None:
        if batch_size < 1 or batch_interval_s <= 0:
            raise ValueError("batch_size must be >= 1 and batch_interval_s > 0")
        self._engine, self._target = engine, MqttTarget.from_url(mqtt_url)
        self._topics = Topics(prefix=topic_prefix, fleet=fleet)
        self._shared, self._batch_size, self._interval = shared, batch_size, batch_interval_s
        self._max_bytes, self._accept_unknown = max_payload_bytes, accept_unknown_devices
        self._retention_s, self._v5 = retention_s, mqtt_protocol == "5"
        self._devices = DeviceCache(engine=engine, refresh_s=device_refresh_s)
        self._stats = IngestStats()
        self._warn = RateLimitedLog(log)
        self._decoder = Decoder(
            topics=self._topics,
            max_bytes=max_payload_bytes,
            devices=self._devices,
            accept_unknown=accept_unknown_devices,
            keys=bool(ack_interval_s),
            reject=self._reject,
        )
        self._lock = threading.RLock()
        self._items: list[Item] = []
        self._handled: list[AckKey] = []  # the batch's (device, stream, seq), for the acks
        # messages received while the device check could not reach the database: decoded
        # at the commit (after the back-off), in order, before the batch is stored
        self._undecoded: deque[Message] = deque()
        self._acker = (
            AckPublisher(self._topics, interval_s=ack_interval_s) if ack_interval_s else None
        )
        self._acks: list[tuple[int, int, int]] = []  # (mid, qos, connection generation)
        self._batch_started = 0.0
        self._retry_at = 0.0
        self._outages = 0  # database failures since the last commit (the back-off)
        self._generation = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ingest-{client_id}", daemon=True)
        self._raw: list[tuple[str, bytes]] = []  # decode process: the batch's messages
        self._split: DecodeProcess | None = None
        if decode_process:  # started now (a second or two), so start() only connects
            config = ChildConfig(
                database_url=database_url(engine),
                topic_prefix=topic_prefix,
                fleet=fleet,
                max_payload_bytes=max_payload_bytes,
                accept_unknown_devices=accept_unknown_devices,
                device_refresh_s=device_refresh_s,
                log_level=log.getEffectiveLevel(),
            )
            self._split = DecodeProcess(config)
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
        if self._split is not None:
            self._split.close()

    @property
    def decode_process(self) -> DecodeProcess | None:
        """The child that decodes and stores (``decode_process=True``), else None."""
        return self._split

    def flush(self) -> None:
        """Commit (and then ack) every message received so far."""
        with self._lock:
            self._commit(force=True)

    @property
    def shared(self) -> bool:
        """Whether it subscribes through ``$share`` (hub/mqtt/features.py)."""
        return self._shared

    def health(self) -> ServiceHealth:
        stats = self.stats()
        return {
            "running": self._thread.is_alive(),
            "connected": stats.connected,
            "shared": self._shared,  # $share subscriptions (hub/mqtt/features.py)
            "received": stats.received,
            "stored": stats.stored,
            "duplicates": stats.duplicates,
            "rejected": stats.rejected_total,
            "pending": stats.pending,
        }

    def stats(self) -> IngestStats:
        with self._lock:
            snapshot = self._stats.copy()
            snapshot.pending = len(self._acks)
            if self._split is not None:
                snapshot.pending += self._split.in_flight_messages
            snapshot.acks_published = self._acker.published if self._acker else 0
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
        # With a decode process, several batches are in flight at once.
        if self._split is None:
            self._connect_props.ReceiveMaximum = min(65535, max(1024, 2 * self._batch_size))
        else:
            self._connect_props.ReceiveMaximum = min(65535, max(2048, 8 * self._batch_size))
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
            if self._split is not None:
                self._raw.append((message.topic, bytes(message.payload)))
            elif self._undecoded:  # the database is unavailable: wait with the others
                self._undecoded.append((message.topic, bytes(message.payload)))
            else:
                try:
                    self._decoder.add(
                        message.topic, bytes(message.payload), self._items, self._handled
                    )
                except DatabaseUnavailable as exc:  # never a rejection: decode it later
                    self._undecoded.append((message.topic, bytes(message.payload)))
                    self._database_unavailable(exc)
            if len(self._acks) >= self._batch_size:
                self._commit(force=False)

    def _reject(self, reason: str, detail: str) -> None:
        self._stats.rejected[reason] = self._stats.rejected.get(reason, 0) + 1
        self._warn.warning(reason, "ingest rejected a message (%s): %s", reason, detail)

    # Batches ------------------------------------------------------------------------------

    def _commit(self, *, force: bool) -> None:
        """Store the batch, then ack it; on a database outage keep it and retry later."""
        if self._split is not None:
            self._submit(force=force)
            return
        if not self._acks or (not force and time.monotonic() < self._retry_at):
            return
        try:
            self._decoder.add_all(self._undecoded, self._items, self._handled)
            result = store_items(
                self._engine,
                self._items,
                groups=self._devices.groups,
                now=datetime.now(UTC),
                create_unknown=self._accept_unknown,
            )
        except DatabaseUnavailable as exc:  # keep everything, ack nothing, back off
            self._database_unavailable(exc)
            return
        for reason, detail in result.rejected:
            self._reject(reason, detail)
        self._stats.stored += result.stored
        self._stats.duplicates += result.duplicates
        self._stats.batches += 1
        self._retry_at = 0.0
        self._outages = 0
        for mid, qos, generation in self._acks:
            # After a reconnect old packet ids mean nothing: the broker redelivers those.
            if qos > 0 and generation == self._generation:
                self._client.ack(mid, qos)
        if self._acker is not None:
            self._acker.add(self._handled)
        self._items, self._acks, self._handled = [], [], []

    def _database_unavailable(self, exc: DatabaseUnavailable) -> None:
        self._stats.store_retries += 1
        self._outages += 1
        self._retry_at = time.monotonic() + retry_delay(self._outages)
        self._warn.warning("db", "ingest cannot store a batch (will retry): %s", exc)

    def _submit(self, *, force: bool) -> None:
        """Decode process: hand it the batch (unless ``MAX_IN_FLIGHT`` are in flight: the
        batch grows until one is committed); ``force``: also wait for every result."""
        assert self._split is not None
        if self._acks and (force or self._split.in_flight_batches < MAX_IN_FLIGHT):
            self._split.submit(self._raw, self._acks)
            self._raw, self._acks = [], []
        self._collect(wait_for=0 if force else None)

    def _pump(self) -> None:
        """Decode process: submit a full or old batch, count and ack what was committed."""
        if self._acks and (
            len(self._acks) >= self._batch_size
            or time.monotonic() - self._batch_started >= self._interval
        ):
            self._submit(force=False)
        else:
            self._collect(wait_for=None)

    def _collect(self, *, wait_for: int | None, timeout: float = 30.0) -> None:
        """Count the decode process's committed batches, then ack their messages."""
        assert self._split is not None
        for result, acks in self._split.results(wait_for=wait_for, timeout=timeout):
            self._stats.stored += result.stored
            self._stats.duplicates += result.duplicates
            for reason, count in result.rejected.items():
                self._stats.rejected[reason] = self._stats.rejected.get(reason, 0) + count
            self._stats.batches += 1
            self._stats.store_retries += result.retries
            for mid, qos, generation in acks:
                if qos > 0 and generation == self._generation:
                    self._client.ack(mid, qos)
            if self._acker is not None:
                self._acker.add(result.handled)
        self._stats.decode_restarts = self._split.restarts

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
                if self._split is not None:
                    self._pump()
                elif self._acks and time.monotonic() - self._batch_started >= self._interval:
                    self._commit(force=False)
                self._publish_acks(force=False)
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

    def _publish_acks(self, *, force: bool) -> None:
        if self._acker is None:
            return
        try:
            self._acker.publish_due(self._client, force=force)
        except Exception:  # acks are an optimisation of resends: never stop ingest for them
            log.exception("publishing delivery acks failed")

    def _shutdown(self) -> None:
        with self._lock:
            if self._split is not None:  # drain: submit, wait for every commit, ack
                if self._acks:
                    self._split.submit(self._raw, self._acks)
                    self._raw, self._acks = [], []
                self._collect(wait_for=0, timeout=8.0)
            else:
                self._commit(force=True)
            self._publish_acks(force=True)
        if self._client.is_connected():
            self._client.loop(timeout=0.1)  # send the acks
            self._client.disconnect()
            self._client.loop(timeout=0.1)
        with self._lock:
            self._stats.connected = False
