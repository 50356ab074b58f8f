"""Which devices exist and their groups, cached so that the receive path never waits on SQL
for a known device.

The whole registry is reloaded every ``refresh_s``; an id not in the cache is looked up
once (a device registered a moment ago) and, if still unknown, not asked again for
``negative_s`` (a flood from an unregistered id costs one query per ``negative_s``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.engine import Engine

from hub.ingest._sql import table
from hub.tables.devices import Device

_DEVICES = table(Device)


class DeviceCache:
    def __init__(
        self,
        *,
        engine: Engine,
        refresh_s: float = 10.0,
        negative_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine, self._refresh_s, self._negative_s = engine, refresh_s, negative_s
        self._clock = clock
        self.groups: dict[str, str] = {}
        self._unknown: dict[str, float] = {}
        self._loaded_at = -float("inf")

    def _reload(self) -> None:
        table = _DEVICES
        with self._engine.connect() as conn:
            rows = conn.execute(select(table.c.id, table.c.group)).all()
        self.groups = {device_id: group for device_id, group in rows}
        self._unknown.clear()
        self._loaded_at = self._clock()

    def known(self, device_id: str) -> bool:
        """Whether ``device_id`` is registered (may query the database; see the module doc)."""
        now = self._clock()
        if now - self._loaded_at > self._refresh_s:
            self._reload()
        if device_id in self.groups:
            return True
        if now - self._unknown.get(device_id, -float("inf")) < self._negative_s:
            return False
        table = _DEVICES
        with self._engine.connect() as conn:
            group = conn.execute(select(table.c.group).where(table.c.id == device_id)).scalar()
        if group is None:
            self._unknown[device_id] = now
            return False
        self.groups[device_id] = group
        return True
