"""What ingest does with one message and with one batch, wherever it runs: in the worker's
receive thread (the default) or in its decode process (``hub.ingest._split``).

:class:`Decoder` turns a message into a packed :class:`Item` (or a counted rejection) and
collects the ``(device, stream, seq)`` keys the delivery acks need; :func:`store_items`
writes a batch in one transaction and, when that fails for a reason other than the database
being unavailable, stores it message by message (a row the database refuses is rejected as
``store_error``); :func:`retry_delay` is the back-off after a database outage.

The rule both paths keep: **a database error is never a rejection.** When the database is
unreachable, locked, restarting or drops the connection (:func:`unavailable`), the device
check and the store raise :class:`DatabaseUnavailable`; the caller keeps the whole batch
(undecoded messages included), acks nothing and tries again after :func:`retry_delay`.
Only what the message itself gets wrong is rejected (and acked, so it never loops).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from hub.core.errors import EdgeloopError
from hub.ingest._acks import ACKED_KINDS, AckKey, rejected_key
from hub.ingest._decode import MALFORMED, STORE_ERROR, UNKNOWN_DEVICE, Item, Rejected, decode
from hub.ingest._devices import DeviceCache
from hub.ingest._store import pack, write_batch
from proto.topics import Topics

log = logging.getLogger("edgeloop.ingest")

Reject = Callable[[str, str], None]  # (reason, detail): count it and log it
Message = tuple[str, bytes]  # (topic, payload)

# SQLSTATE classes PostgreSQL reports as OperationalError that are the data's doing (54:
# program limit exceeded, e.g. an index row too large): a row error, not an outage.
_ROW_SQLSTATE_CLASSES = ("54",)


class DatabaseUnavailable(EdgeloopError):
    """The database could not be used just now (down, restarting, locked, connection lost):
    keep the batch, ack nothing, retry after :func:`retry_delay`."""

    code = "database_unavailable"
    status = 503


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is unavailable (retry) rather than that a row is
    bad: ``OperationalError`` (refused / lost connections, ``pg_terminate_backend``, server
    shutdown, SQLite "database is locked"), ``InterfaceError`` (a closed connection), a
    pool timeout, or any DB-API error that invalidated its connection."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.OperationalError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return not sqlstate.startswith(_ROW_SQLSTATE_CLASSES)
    return isinstance(exc, sa_exc.InterfaceError | sa_exc.DisconnectionError | sa_exc.TimeoutError)


def retry_delay(retries: int) -> float:
    """Seconds to wait before storing a batch again after ``retries`` database outages."""
    return min(5.0, 0.1 * 2 ** min(retries, 6))


class Decoder:
    """Decode, pack and check the device of each message; ``keys``: also collect ack keys."""

    def __init__(
        self,
        *,
        topics: Topics,
        max_bytes: int,
        devices: DeviceCache,
        accept_unknown: bool,
        keys: bool,
        reject: Reject,
    ) -> None:
        self._topics, self._max_bytes, self._devices = topics, max_bytes, devices
        self._accept_unknown, self._keys, self._reject = accept_unknown, keys, reject

    def add(self, topic: str, payload: bytes, items: list[Item], handled: list[AckKey]) -> None:
        """Append the message's item to ``items`` (and its ack key to ``handled``), or count
        its rejection (a rejection is final: its key, when readable, is acked too).

        Raises :class:`DatabaseUnavailable` when the device check cannot reach the database:
        then nothing was appended or counted, and the caller keeps the message for later."""
        try:
            item = decode(
                topics=self._topics, topic=topic, payload=payload, max_bytes=self._max_bytes
            )
            pack(item)
        except Rejected as rejected:
            self._reject(rejected.reason, f"{topic}: {rejected.detail}")
            self._rejected(topic, payload, handled)
            return
        except Exception as exc:  # odd input a decoder rule missed: this message only
            self._reject(MALFORMED, f"{topic}: {type(exc).__name__}: {exc}")
            self._rejected(topic, payload, handled)
            return
        if not self._accept_unknown:
            try:
                known = self._devices.known(item.device_id)
            except sa_exc.SQLAlchemyError as exc:  # never the message's fault (its id is valid)
                raise DatabaseUnavailable(f"cannot check device {item.device_id!r}: {exc}") from exc
            if not known:
                detail = f"{topic}: device {item.device_id!r} is not registered"
                self._reject(UNKNOWN_DEVICE, detail)
                self._rejected(topic, payload, handled)
                return
        items.append(item)
        if item.seq and item.kind in ACKED_KINDS:  # events from old agents: no seq
            handled.append((item.device_id, item.kind.value, item.seq))

    def add_all(self, pending: deque[Message], items: list[Item], handled: list[AckKey]) -> None:
        """:meth:`add` every message of ``pending``, oldest first, removing each once it is
        decoded or rejected; on :class:`DatabaseUnavailable` the rest stays in ``pending``."""
        while pending:
            topic, payload = pending[0]
            self.add(topic, payload, items, handled)
            pending.popleft()

    def _rejected(self, topic: str, payload: bytes, handled: list[AckKey]) -> None:
        if self._keys and (key := rejected_key(self._topics, topic, payload)):
            handled.append(key)


@dataclass(slots=True)
class StoreResult:
    stored: int = 0
    duplicates: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (reason, detail) per row


def store_items(
    engine: Engine,
    items: list[Item],
    *,
    groups: Mapping[str, str],
    now: datetime,
    create_unknown: bool,
) -> StoreResult:
    """``items`` written in one transaction, or one by one when that fails for a row's sake
    (a row the database still refuses comes back in ``rejected`` as ``store_error``: count
    those once this returns). Raises :class:`DatabaseUnavailable` (:func:`unavailable`),
    with nothing counted: the caller keeps the batch and retries it whole."""
    try:
        r = write_batch(engine, items, groups=groups, now=now, create_unknown=create_unknown)
        return StoreResult(r.stored, r.duplicates)
    except sa_exc.SQLAlchemyError as exc:
        if unavailable(exc):
            raise DatabaseUnavailable(f"cannot store a batch: {exc}") from exc
        log.warning("ingest batch failed (%s); storing its %d messages one by one", exc, len(items))
    result = StoreResult()
    for item in items:
        try:
            r = write_batch(engine, [item], groups=groups, now=now, create_unknown=create_unknown)
            result.stored += r.stored
            result.duplicates += r.duplicates
        except sa_exc.SQLAlchemyError as exc:
            if unavailable(exc):
                raise DatabaseUnavailable(f"cannot store a batch: {exc}") from exc
            if isinstance(exc, sa_exc.IntegrityError):  # a concurrent worker stored it first
                result.duplicates += 1
            else:
                result.rejected.append((STORE_ERROR, f"{item.kind} from {item.device_id}: {exc}"))
    return result
