"""What ingest does with one message and with one batch, wherever it runs: in the worker's
receive thread (the default) or in its decode process (``hub.ingest._split``).

:class:`Decoder` turns a message into a packed :class:`Item` (or a counted rejection) and
collects the ``(device, stream, seq)`` keys the delivery acks need; :func:`store_items`
writes a batch in one transaction and, when that fails for a reason other than the database
being unreachable, stores it message by message (a bad one rejected as ``store_error``);
:func:`retry_delay` is the back-off after a database outage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from hub.ingest._acks import ACKED_KINDS, AckKey, rejected_key
from hub.ingest._decode import STORE_ERROR, UNKNOWN_DEVICE, Item, Rejected, decode
from hub.ingest._devices import DeviceCache
from hub.ingest._store import pack, write_batch
from proto.topics import Topics

log = logging.getLogger("edgeloop.ingest")

Reject = Callable[[str, str], None]  # (reason, detail): count it and log it


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
        its rejection (a rejection is final: its key, when readable, is acked too)."""
        try:
            item = decode(
                topics=self._topics, topic=topic, payload=payload, max_bytes=self._max_bytes
            )
            pack(item)
            if not self._accept_unknown and not self._devices.known(item.device_id):
                raise Rejected(UNKNOWN_DEVICE, f"device {item.device_id!r} is not registered")
        except Rejected as rejected:
            self._reject(rejected.reason, f"{topic}: {rejected.detail}")
            self._rejected(topic, payload, handled)
        except Exception as exc:  # never let one message stop the loop
            self._reject(STORE_ERROR, f"{topic}: {type(exc).__name__}: {exc}")
            self._rejected(topic, payload, handled)
        else:
            items.append(item)
            if item.seq and item.kind in ACKED_KINDS:  # events from old agents: no seq
                handled.append((item.device_id, item.kind.value, item.seq))

    def _rejected(self, topic: str, payload: bytes, handled: list[AckKey]) -> None:
        if self._keys and (key := rejected_key(self._topics, topic, payload)):
            handled.append(key)


def store_items(
    engine: Engine,
    items: list[Item],
    *,
    groups: Mapping[str, str],
    now: datetime,
    create_unknown: bool,
    reject: Reject,
) -> tuple[int, int]:
    """``(stored, duplicates)`` of ``items`` written in one transaction, or one by one when
    that fails (a row that still fails is rejected as ``store_error``). ``OperationalError``
    (database unreachable or locked) is raised: the caller keeps the batch and retries."""
    try:
        r = write_batch(engine, items, groups=groups, now=now, create_unknown=create_unknown)
        return r.stored, r.duplicates
    except OperationalError:
        raise
    except SQLAlchemyError as exc:  # one bad row: store the others one by one
        log.warning("ingest batch failed (%s); storing its %d messages one by one", exc, len(items))
    stored = duplicates = 0
    for item in items:
        try:
            r = write_batch(engine, [item], groups=groups, now=now, create_unknown=create_unknown)
            stored, duplicates = stored + r.stored, duplicates + r.duplicates
        except IntegrityError:  # a concurrent worker stored the same key first
            duplicates += 1
        except OperationalError:
            raise
        except SQLAlchemyError as exc:
            reject(STORE_ERROR, f"{item.kind} from {item.device_id}: {exc}")
    return stored, duplicates
