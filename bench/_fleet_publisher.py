"""The light device side of ``bench-fleet``: one process holding an MQTT connection per
enrolled device, with that device's own login (client id = username = device id, as the
embedded broker requires), publishing the telemetry an agent would: one protobuf
``TelemetryWindow`` every 10 s per device (QoS 1), of a Poisson(10) number of predictions
(1 call/s) sketched over the registered version's reference edges, with 2 reservoir
samples. Devices come online over the first ``ramp_s`` seconds and each keeps its own phase.

Why not agents: 10,000 full agents beside the hub need more than this 2-core machine
(``bench-scale``); this sends the same bytes on the same topics with the same logins.
The MQTT side is paho (one ``Client`` per device) driven by one ``selectors`` loop instead
of a thread or an asyncio task per client (aiomqtt wakes every client each second: 0.05
CPU-ms per device-second, half a core at 10,000).

Windows are built from a pool of pre-sketched windows (clean and rotated digits): a
protobuf message is the concatenation of its fields, so a window's bytes are the pool
entry's (counts, histograms, sketches) followed by its own header (device, seq, times,
samples). Delivery is the agents' ``hub_ack``: each device subscribes to its
``devices/<id>/ack`` topic, a window stays pending after the broker's PUBACK until the hub's
``DeliveryAck`` covers its seq, and is sent again after 30 s without one (the hub drops the
repeat by seq). ``SIGUSR1``: the drifted devices switch to the rotated pool. ``SIGTERM``: stop,
wait (<= 60 s) for outstanding PUBACKs and hub acks, write the stats (which (device, seq) the broker
acknowledged) and exit.

Run by ``bench/fleet.py`` as ``python -m bench._fleet_publisher CONFIG.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench._digits import MODEL, VERSION, Registered, sketch
from edge_agent import AckTimeout
from proto import messages_pb2 as pb
from proto.topics import Topics

WINDOW_S = 10.0
PREDICTIONS = 10.0  # mean per window
SAMPLES = 2
POOL = 3000  # pre-sketched windows per pool
LATENCY_EDGES = [1.0, 2.0, 5.0, 10.0, 20.0]
HUB_ACK_TIMEOUT_S = 30.0  # the agent's default hub_ack_timeout_s: AckTimeout's floor
HUB_ACK_MAX_TIMEOUT_S = 600.0  # the agent's default hub_ack_max_timeout_s


def _pool(reg: Registered, x_all: np.ndarray, *, drifted: bool, seed: int) -> list[Any]:
    """``POOL`` windows: (template bytes, sample rows (2, 64), their predicted classes)."""
    from model_packager.profile import CONFIDENCE_EDGES
    from simulators.sensors import rotate

    rng = np.random.default_rng(seed)
    counts = np.maximum(rng.poisson(PREDICTIONS, size=POOL), SAMPLES)
    out: list[Any] = [None] * POOL
    for c in np.unique(counts):
        idx = np.flatnonzero(counts == c)
        x = x_all[rng.integers(0, len(x_all), size=len(idx) * int(c))].reshape(len(idx), c, 64)
        if drifted:
            x = rotate(x.reshape(-1, 64), degrees=22.5, fill=0.0, shape=(8, 8)).reshape(x.shape)
        classes, confidence, features, top = sketch(reg, x)
        for k, i in enumerate(idx):
            lat = [int(c), 0, 0, 0, 0, 0]
            w = pb.TelemetryWindow(
                count=int(c),
                errors=0,
                latency=pb.Histogram(edges=LATENCY_EDGES, counts=lat),
                output_counts=classes[k].tolist(),
                confidence=pb.Histogram(edges=CONFIDENCE_EDGES, counts=confidence[k].tolist()),
                features=[
                    pb.FeatureSketch(index=j, counts=features[j][k].tolist(), count=int(c))
                    for j in range(64)
                ],
            )
            out[i] = (w.SerializeToString(), x[k, :SAMPLES].astype(np.float32), top[k, :SAMPLES])
    return out


class Publisher:
    def __init__(self, config: dict[str, Any]) -> None:
        self.topics = Topics(prefix=config["topic_prefix"], fleet=config["fleet"])
        self.host, self.port = config["host"], int(config["port"])
        logins: list[list[str]] = json.loads(Path(config["logins"]).read_text())
        self.devices = [d for d, _ in logins]
        self.passwords = [p for _, p in logins]
        n = len(self.devices)
        self.drifted = np.zeros(n, bool)
        self.drifted[config["drifted"]] = True
        self.drift_on = False
        rng = np.random.default_rng(config.get("seed", 7))
        self.next_at = time.time() + rng.uniform(0, config["ramp_s"], size=n)
        self.seq = np.zeros(n, np.int64)
        self.picks = rng
        self.sel = selectors.DefaultSelector()
        self.clients: list[mqtt.Client] = []
        self.inflight: dict[tuple[int, int], tuple[int, int]] = {}  # (client, mid) -> key
        self.acked: list[tuple[int, int]] = []
        self.published = 0
        self.connected = np.zeros(n, bool)
        self.lost_connections = 0
        self.dirty: set[int] = set()
        self.down: set[int] = set()
        self.opened: set[int] = set()
        self.stop = False
        # per device: seq -> (payload, last sent, sends) until the hub's DeliveryAck covers it
        self.awaiting: list[dict[int, tuple[bytes, float, int]]] = [{} for _ in range(n)]
        # per device: the agent's adaptive hub-ack timeout (edge_agent.AckTimeout), mirrored
        self.timers = [
            AckTimeout(floor_s=HUB_ACK_TIMEOUT_S, max_s=HUB_ACK_MAX_TIMEOUT_S) for _ in range(n)
        ]
        self.backed_off_at = np.zeros(n)
        self.timeout_rounds = 0
        self.hub_acked = 0
        self.resent = 0

    # --- paho callbacks -------------------------------------------------------------
    def _on_connect(self, c: mqtt.Client, i: int, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            self.connected[i] = True
            c.subscribe(self.topics.ack(self.devices[i]), qos=1)
            self.dirty.add(i)

    def _on_message(self, _c: mqtt.Client, i: int, message: mqtt.MQTTMessage) -> None:
        ack = pb.DeliveryAck()
        ack.ParseFromString(bytes(message.payload))
        waiting = self.awaiting[i]
        oldest_once: float | None = None
        for r in ack.ranges:
            if r.stream == "telemetry":
                for seq in range(r.first, r.last + 1):
                    entry = waiting.pop(seq, None)
                    if entry is not None:
                        self.hub_acked += 1
                        if entry[2] == 1:  # Karn: only items sent once are timed
                            oldest_once = min(entry[1], oldest_once or entry[1])
        if oldest_once is not None:
            self.timers[i].sample(time.time() - oldest_once)

    def _on_disconnect(self, _c: mqtt.Client, i: int, _f: Any, _rc: Any, _p: Any) -> None:
        if self.connected[i]:
            self.lost_connections += 1
        self.connected[i] = False
        self.down.add(i)

    def _on_publish(self, _c: mqtt.Client, i: int, mid: int, _rc: Any, _p: Any) -> None:
        key = self.inflight.pop((i, mid), None)
        if key is not None:
            self.acked.append(key)

    # --- connections --------------------------------------------------------------
    def connect_all(self) -> None:
        for i, (device, password) in enumerate(zip(self.devices, self.passwords, strict=True)):
            c = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=device,
                userdata=i,
                protocol=mqtt.MQTTv311,
                clean_session=False,
            )
            c.username_pw_set(device, password)
            c.max_inflight_messages_set(100)
            c.on_connect, c.on_disconnect = self._on_connect, self._on_disconnect
            c.on_publish, c.on_message = self._on_publish, self._on_message
            self.clients.append(c)
            self._open(i)
            if i % 200 == 199:
                self._pump(0.0)
        deadline = time.monotonic() + 120
        while not self.connected.all() and time.monotonic() < deadline:
            self._pump(0.2)
            self._misc()

    def _open(self, i: int) -> None:
        c = self.clients[i]
        try:
            if i in self.opened:
                c.reconnect()
            else:
                c.connect(self.host, self.port, keepalive=60)
                self.opened.add(i)
        except OSError:
            self.down.add(i)
            return
        self.down.discard(i)
        sock = c.socket()
        if sock is not None:
            self.sel.register(sock, selectors.EVENT_READ, i)

    def _pump(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            i = key.data
            c = self.clients[i]
            sock = key.fileobj
            c.loop_read()
            if c.socket() is not sock:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(sock)
        for i in list(self.dirty):
            c = self.clients[i]
            if c.want_write():
                c.loop_write()
            else:
                self.dirty.discard(i)

    def _misc(self) -> None:
        for c in self.clients:
            c.loop_misc()
        self._resend(time.time())
        for i in list(self.down):
            c = self.clients[i]
            old = c.socket()
            if old is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(old)
            self._open(i)

    # --- telemetry ----------------------------------------------------------------
    def run(self, clean: list[Any], rotated: list[Any]) -> None:
        misc_at = time.monotonic() + 5
        while not self.stop:
            now = time.time()
            due = np.flatnonzero(self.next_at <= now)
            for i in due:
                self._send(int(i), now, rotated if (self.drift_on and self.drifted[i]) else clean)
            self.next_at[due] += WINDOW_S
            self._pump(0.05)
            if time.monotonic() >= misc_at:
                self._misc()
                misc_at = time.monotonic() + 5

    def _send(self, i: int, now: float, pool: list[Any]) -> None:
        template, rows, top = pool[int(self.picks.integers(0, POOL))]
        self.seq[i] += 1
        seq = int(self.seq[i])
        end = int(now * 1000)
        device = self.devices[i]
        header = pb.TelemetryWindow(
            device_id=device,
            seq=seq,
            model=MODEL,
            version=VERSION,
            bundle_digest=self.digest,
            window_start=end - int(WINDOW_S * 1000),
            window_end=end,
            samples=[
                pb.Sample(
                    prediction_id=f"{device}-{seq}-{k}",
                    values=rows[k].tolist(),
                    shape=[8, 8],
                    predicted_label=int(top[k]),
                    at=end - (SAMPLES - k) * 1000,
                )
                for k in range(SAMPLES)
            ],
        )
        payload = template + header.SerializeToString()
        info = self.clients[i].publish(self.topics.telemetry(device), payload, qos=1)
        self.awaiting[i][seq] = (payload, now, 1)
        self.published += 1
        self.inflight[(i, info.mid)] = (i, seq)
        self.dirty.add(i)

    def _resend(self, now: float) -> None:
        for i, waiting in enumerate(self.awaiting):
            if not waiting or not self.connected[i]:
                continue
            timeout = self.timers[i].seconds
            timed_out = False
            for seq, (payload, sent, sends) in list(waiting.items()):
                if now - sent >= timeout:
                    info = self.clients[i].publish(
                        self.topics.telemetry(self.devices[i]), payload, qos=1
                    )
                    self.inflight[(i, info.mid)] = (i, seq)
                    waiting[seq] = (payload, now, sends + 1)
                    self.resent += 1
                    self.dirty.add(i)
                    timed_out = True
            if timed_out and now - self.backed_off_at[i] >= timeout:
                self.backed_off_at[i] = now
                self.timers[i].timed_out()
                self.timeout_rounds += 1

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (self.inflight or any(self.awaiting)) and time.monotonic() < deadline:
            self._pump(0.1)
            self._misc()

    digest = ""


def main(path: str) -> int:
    config = json.loads(Path(path).read_text())
    reg = _registered(config)
    x_all = np.load(config["digits"])
    pub = Publisher(config)
    pub.digest = reg.digest
    clean = _pool(reg, x_all, drifted=False, seed=1)
    rotated = _pool(reg, x_all, drifted=True, seed=2)

    def on_drift(*_: object) -> None:
        pub.drift_on = True

    def on_stop(*_: object) -> None:
        pub.stop = True

    signal.signal(signal.SIGUSR1, on_drift)
    signal.signal(signal.SIGTERM, on_stop)
    started = time.monotonic()
    pub.connect_all()
    connect_s = time.monotonic() - started
    Path(config["ready"]).write_text(
        json.dumps({"connected": int(pub.connected.sum()), "connect_s": connect_s})
    )
    pub.run(clean, rotated)
    pub.drain(float(config.get("drain_s", 60.0)))  # the hub acks what it stored
    acked = np.unique(np.asarray(pub.acked, np.int64).reshape(-1, 2), axis=0)
    np.save(config["acked"], acked)
    Path(config["stats"]).write_text(
        json.dumps(
            {
                "published": pub.published,
                "acked": len(acked),
                "unacked": len(pub.inflight),
                "hub_acked": pub.hub_acked,
                "awaiting_hub_ack": sum(len(w) for w in pub.awaiting),
                "resent": pub.resent,
                "timeout_rounds": pub.timeout_rounds,
                "ack_timeout_s_p50": float(np.median([t.seconds for t in pub.timers])),
                "ack_timeout_s_max": max(t.seconds for t in pub.timers),
                "connected": int(pub.connected.sum()),
                "connect_s": connect_s,
                "lost_connections": pub.lost_connections,
                "cpu_s": sum(os.times()[:2]),
            }
        )
    )
    return 0


def _registered(config: dict[str, Any]) -> Registered:
    """The registered version as the hub has it (weights and edges from the config file)."""
    data = np.load(config["model"])
    profile = json.loads(Path(config["profile"]).read_text())
    edges = [np.asarray(f["edges"], np.float64) for f in profile["features"]]
    return Registered(
        weights=data["weights"], profile=profile, edges=edges, digest=config["digest"]
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
