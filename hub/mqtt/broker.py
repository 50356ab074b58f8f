"""The hub's embedded MQTT broker: Mosquitto as a child process, or amqtt in-process.

``kind="auto"`` runs Mosquitto when its binary is found, else amqtt. Mosquitto is the real
thing: MQTT 5 and 3.1.1, ``$share``, persistent sessions, queued QoS 1 and retained
messages on disk across restarts (``kill()`` loses at most ``autosave_interval`` seconds;
``save()`` writes now). ``mosquitto_config()`` renders data_dir/broker/mosquitto.conf.

amqtt 0.12 runs in a thread with its own event loop and is **demo only, not for production**:
MQTT 3.1.1 only (MQTT 5 is refused; a CONNECT with properties gets no CONNACK at all, the
client hangs), so no ``$share``; persistent sessions only for authenticated clients (so
none with the anonymous access we configure) and nothing survives its restart (its
persistence plugin needs aiosqlite and even then loses part of the queued QoS 1 messages);
about 0.3-0.4x Mosquitto's message rate, on the hub's CPU; unbounded queues
(``max_queued_messages`` is ignored); ``kill()`` is a plain ``stop()``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self
from urllib.parse import quote

from hub.mqtt.mosquitto import BrokerAuthFiles, MosquittoConf
from hub.mqtt.net import BrokerError, claim_port, port_free, wait_for_connack, wait_for_mqtt

if TYPE_CHECKING:
    from hub.core.tls import TlsFiles
    from hub.mqtt.amqtt import AmqttThread as _Amqtt

BrokerKind = Literal["auto", "mosquitto", "amqtt"]
_SBIN_DIRS = os.pathsep.join(["/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin"])
_RUNNING: set[EmbeddedBroker] = set()
__all__ = [
    "BrokerAuthFiles",
    "BrokerError",
    "BrokerKind",
    "EmbeddedBroker",
    "find_mosquitto",
    "wait_for_mqtt",
]


def find_mosquitto() -> str | None:
    """The mosquitto binary: on PATH, or in the sbin folders Debian/Homebrew use."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path=_SBIN_DIRS)


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedBroker:
    """One broker on loopback, owned by this process; see the module docstring."""

    name = "broker"

    def __init__(
        self,
        *,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        kind: BrokerKind = "auto",
        max_queued_messages: int = 100_000,
        max_inflight_messages: int = 100,
        autosave_interval: int = 1,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        auth: BrokerAuthFiles | None = None,
        tls: TlsFiles | None = None,
        internal_port: int = 0,
    ) -> None:
        self._dir = Path(data_dir) / "broker"
        self._auth = auth
        self._tls = tls
        self.config_file = self._dir / "mosquitto.conf"
        self.pid_file = self._dir / "mosquitto.pid"
        self.log_file = self._dir / "mosquitto.log"
        self.persistence_file = self._dir / "mosquitto.db"
        self._host = host
        self._port = port
        self._internal_port = internal_port  # 0: picked on the first start, then kept
        self._max_queued = max_queued_messages
        self._max_inflight = max_inflight_messages
        self._autosave = autosave_interval
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._binary = find_mosquitto()
        if kind == "mosquitto" and self._binary is None:
            raise BrokerError(
                "embedded_broker='mosquitto' but no mosquitto binary was found "
                "(apt-get install mosquitto / brew install mosquitto), or use 'auto'"
            )
        self.kind_in_use: Literal["mosquitto", "amqtt"] = (
            "mosquitto" if kind == "mosquitto" or (kind == "auto" and self._binary) else "amqtt"
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._amqtt: _Amqtt | None = None
        self._lock = threading.RLock()

    @property
    def port(self) -> int:
        """The listening port; with ``port=0`` the one picked on the first start."""
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://host:port``; with TLS ``mqtts://host:port?ca_file=CA`` (for ``MqttTarget``)."""
        if self._tls is not None:
            return f"mqtts://{self._host}:{self._port}?ca_file={quote(str(self._tls.ca_file))}"
        return f"mqtt://{self._host}:{self._port}"

    @property
    def internal_port(self) -> int:
        """The hub's loopback listener's port (0 until picked; see :attr:`internal_url`)."""
        return self._internal_port if self.has_internal_listener else self._port

    @property
    def has_internal_listener(self) -> bool:
        """Mosquitto with logins: devices on :attr:`url`, the hub's clients on loopback."""
        return self.kind_in_use == "mosquitto" and self._auth is not None

    @property
    def internal_url(self) -> str:
        """Where the hub's own clients connect: ``mqtt://127.0.0.1:PORT`` (no TLS on loopback).

        The device listener ties the client id to the login (``use_username_as_clientid``),
        which the hub's several clients sharing one login cannot live with; this one does not.
        Without logins (or on amqtt) it is :attr:`url`.
        """
        if not self.has_internal_listener:
            return self.url
        return f"mqtt://127.0.0.1:{self._internal_port}"

    @property
    def pid(self) -> int | None:
        """The Mosquitto child's pid (None for amqtt, which runs in-process)."""
        return self._proc.pid if self._proc is not None else None

    def health(self) -> dict[str, object]:
        """For ``/healthz`` (a Service): running, kind, ports."""
        return {
            "running": self.is_running(),
            "kind": self.kind_in_use,
            "port": self._port,
            "internal_port": self.internal_port,
        }

    def is_running(self) -> bool:
        if self.kind_in_use == "mosquitto":
            return self._proc is not None and self._proc.poll() is None
        return self._amqtt is not None and self._amqtt.is_alive()

    def start(self) -> None:
        """Start and return once the broker answers an MQTT CONNECT; raises BrokerError."""
        with self._lock:
            if self.is_running():
                return
            self._stop_quietly()  # reap a crashed child
            picked, internal_picked = self._port == 0, self._internal_port == 0
            launch = self._start_mosquitto if self.kind_in_use == "mosquitto" else self._start_amqtt
            for attempt in range(3):  # a picked port may get taken before use: pick again
                self._port = claim_port(self._host, 0 if picked else self._port)
                if self.has_internal_listener:
                    self._internal_port = self._claim_internal(internal_picked)
                try:
                    launch()
                    break
                except BrokerError:
                    self._stop_quietly()
                    taken = (picked and not port_free(self._host, self._port)) or (
                        internal_picked and not port_free("127.0.0.1", self._internal_port)
                    )
                    if attempt == 2 or not taken:
                        raise
            _RUNNING.add(self)

    def _claim_internal(self, picked: bool) -> int:
        """The hub's loopback port: the one given (or kept), else a free one not ours."""
        while True:
            try:
                port = claim_port("127.0.0.1", 0 if picked else self._internal_port)
            except BrokerError as exc:
                raise BrokerError(
                    f"{exc} (the hub's internal MQTT port: EDGELOOP_EMBEDDED_MQTT_INTERNAL_PORT)"
                ) from None
            if not picked or port != self._port:
                return port

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully (Mosquitto saves its persistence), killing after a timeout."""
        with self._lock:
            wait = self._stop_timeout if timeout is None else timeout
            if self._proc is not None:
                self._proc.terminate()  # (a no-op once the child is reaped)
                try:
                    self._proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if self._amqtt is not None:
                self._amqtt.stop(wait)
            self._proc = None
            self._amqtt = None
            _RUNNING.discard(self)

    def kill(self) -> None:
        """Crash the broker (SIGKILL for Mosquitto: no final save); for fault tests."""
        with self._lock:
            if self._proc is not None:
                self._proc.kill()
            self.stop(timeout=5.0)

    def restart(self) -> None:
        """Stop (if running) and start again on the same port with the same persistence."""
        with self._lock:
            self.stop()
            self.start()

    def save(self, timeout: float = 5.0) -> None:
        """Make Mosquitto write its persistence file now (SIGUSR1) and wait until it has."""
        if self.kind_in_use != "mosquitto" or self._proc is None or self._proc.poll() is not None:
            return
        before = self._db_stamp()
        self._proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while self._db_stamp() == before:
            if time.monotonic() > deadline:
                raise BrokerError(f"mosquitto did not save {self.persistence_file} in {timeout:g}s")
            time.sleep(0.005)  # polling the file for the rename, bounded by the deadline

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def mosquitto_config(self) -> str:
        """The generated ``mosquitto.conf`` (rendered by :mod:`hub.mqtt.mosquitto`)."""

        return MosquittoConf(
            host=self._host,
            port=self._port,
            folder=self._dir,
            persistence_file=self.persistence_file,
            log_file=self.log_file,
            autosave_interval=self._autosave,
            max_queued=self._max_queued,
            max_inflight=self._max_inflight,
            auth=self._auth,
            tls=self._tls,
            internal_port=self._internal_port if self.has_internal_listener else None,
        ).render()

    def reload(self) -> bool:
        """Make Mosquitto re-read its password and ACL files (SIGHUP); False if not running.

        Mosquitto 2.0 disconnects clients whose credentials are no longer valid on reload.
        """
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                return False
            self._proc.send_signal(signal.SIGHUP)
            return True

    def _start_mosquitto(self) -> None:
        assert self._binary is not None
        self._dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.mosquitto_config())
        in_main = threading.current_thread() is threading.main_thread()
        # No -d: a foreground child whose pid we own, in its own session so that a Ctrl-C
        # reaches the hub, which stops it in order; PR_SET_PDEATHSIG covers a hub crash.
        with self.log_file.open("ab") as log:  # the child keeps its own copy of the fd
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                [self._binary, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent if in_main and sys.platform == "linux" else None,
            )
        try:
            wait_for_connack(
                self._host,
                self._port,
                timeout=self._start_timeout,
                failed=self._child_failed,
                auth=self._auth.probe if self._auth else None,
                tls_ca=self._tls.ca_file if self._tls else None,
                client_cert=self._auth.probe_cert if self._auth else None,
            )
            if self.has_internal_listener and self._auth is not None:
                wait_for_connack(  # the hub's own listener: its login, no TLS
                    "127.0.0.1",
                    self._internal_port,
                    timeout=self._start_timeout,
                    failed=self._child_failed,
                    auth=self._auth.probe,
                )
        except BrokerError as exc:
            raise BrokerError(f"mosquitto did not start: {exc}\n{self._log_tail()}") from None
        if why := self._child_failed():  # someone else answered on our port
            raise BrokerError(f"mosquitto did not start: {why}\n{self._log_tail()}")
        self.pid_file.write_text(f"{self._proc.pid}\n")  # for hub.mqtt.auth's reloads

    def _child_failed(self) -> str | None:
        code = self._proc.poll() if self._proc is not None else None
        return None if code is None else f"mosquitto exited with status {code}"

    def _log_tail(self) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(self._log_offset)
                lines = log.read().decode(errors="replace").splitlines()[-20:]
        except OSError as exc:
            return f"(no log: {exc})"
        return f"--- {self.log_file} (tail) ---\n" + "\n".join(lines)

    def _db_stamp(self) -> tuple[int, int] | None:
        stat = self.persistence_file.stat() if self.persistence_file.exists() else None
        return (stat.st_ino, stat.st_mtime_ns) if stat else None

    def _start_amqtt(self) -> None:
        from hub.mqtt.amqtt import AmqttThread

        if self._tls is not None:
            raise BrokerError("TLS needs the Mosquitto broker (amqtt is demo only, no TLS)")
        self._amqtt = AmqttThread(host=self._host, port=self._port)
        self._amqtt.start(self._start_timeout)
        wait_for_connack(self._host, self._port, timeout=self._start_timeout)

    def _stop_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.stop(timeout=2.0)


@atexit.register
def _stop_all() -> None:
    for broker in list(_RUNNING):
        with contextlib.suppress(Exception):
            broker.stop(timeout=5.0)
