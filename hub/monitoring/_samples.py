"""A drift window's raw inputs for multivariate detectors (MMD): the reservoir samples the
ingest stores as ``FieldSample`` rows in the same transaction as their telemetry window.

Per batch of telemetry rows one query reads the version's new samples (ids, devices and
times, past the ``sample`` cursor; a batch cut short by its row limit reads only samples
received up to its last row's commit, the rest wait for the next batch); each row takes its
device's samples up to its window's end (the device's last row in the batch takes the
rest; a sample whose device has no row in the batch, only possible for a commit split
between two batches, is not tested), and every scope the row counts in
keeps a seeded reservoir of at most :data:`MAX_SAMPLES` sample *ids* in its partial window.
Only a completed window reads values, by primary key, in one query. Cost per batch: one
query; per window: one query of at most ``MAX_SAMPLES`` rows.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Text, cast, func
from sqlmodel import Session, col, select

from hub.monitoring._cursors import head
from hub.tables.fleet import FieldSample

MAX_SAMPLES = 200  # per window: what the MMD detector tests (it subsamples to max_window=200)
STREAM = "sample"
_GOLDEN = 2654435761  # Knuth's multiplicative hash: a sample id's reservoir slot


def aware(at: datetime) -> datetime:
    """SQLite hands datetimes back naive; every time the hub stores is UTC."""
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def epoch_ms(at: datetime) -> int:
    return int(aware(at).timestamp() * 1000)


class NewSamples:
    """The version's samples that arrived since the last batch, per device, oldest first."""

    def __init__(self, by_device: dict[str, deque[tuple[int, int]]], *, start: int = 0) -> None:
        self._by_device = by_device
        self.start = start  # the cursor before this batch: samples up to it were read before
        self._last_row: dict[str, int] = {}

    @classmethod
    def read(
        cls,
        session: Session,
        *,
        model: str,
        version: str,
        limit: int,
        until: datetime | None = None,
        wanted: bool = True,
    ) -> NewSamples:
        """Samples past the version's ``sample`` cursor (which moves past them, in the
        caller's transaction), received up to ``until`` if given. ``wanted=False`` (no
        detector reads samples): the cursor skips to the newest sample, nothing is read."""
        cursor = head(session, stream=STREAM, model=model, version=version)
        start = int(cursor.last_id)
        by_device: dict[str, deque[tuple[int, int]]] = {}
        where = (FieldSample.model == model, FieldSample.version == version)
        if not wanted:
            newest = session.exec(select(func.max(FieldSample.id)).where(*where)).one()
            if newest is not None and newest > cursor.last_id:
                cursor.last_id = int(newest)
                session.add(cursor)
            return cls(by_device, start=start)
        query = select(FieldSample.id, FieldSample.device_id, FieldSample.at).where(
            *where, col(FieldSample.id) > cursor.last_id
        )
        if until is not None:
            query = query.where(col(FieldSample.received_at) <= until)
        rows = session.exec(query.order_by(col(FieldSample.id)).limit(limit)).all()
        for sample_id, device_id, at in rows:
            by_device.setdefault(device_id, deque()).append((int(sample_id or 0), epoch_ms(at)))
        if rows:
            cursor.last_id = int(rows[-1][0] or 0)
            session.add(cursor)
        return cls(by_device, start=start)

    def plan(self, rows: Iterable[Any]) -> None:
        """Note each device's last row in the batch (it takes the device's remaining samples)."""
        for row in rows:
            self._last_row[row.device_id] = int(row.id or 0)

    def of_row(self, row: Any) -> list[int]:
        """The sample ids ``row`` (a telemetry row's ``id``, ``device_id``, ``window_end``)
        carries: its device's samples up to the row's window end."""
        queue = self._by_device.get(row.device_id)
        if not queue:
            return []
        if self._last_row.get(row.device_id) == row.id:
            out = [i for i, _ in queue]
            queue.clear()
            return out
        end = epoch_ms(row.window_end)
        out = []
        while queue and queue[0][1] <= end:
            out.append(queue.popleft()[0])
        return out


def reservoir_add(ids: list[int], seen: int, new: Iterable[int]) -> int:
    """Add ``new`` sample ids to the reservoir ``ids`` (at most :data:`MAX_SAMPLES`, each
    id seen kept with equal chance; the slot is a hash of the id, so deterministic); returns
    how many ids the reservoir has seen."""
    for sample_id in new:
        seen += 1
        if len(ids) < MAX_SAMPLES:
            ids.append(sample_id)
            continue
        slot = (sample_id * _GOLDEN) % (1 << 32) % seen
        if slot < MAX_SAMPLES:
            ids[slot] = sample_id
    return seen


def sample_values(session: Session, ids: list[int], *, dims: int) -> Any:
    """``(k, dims)`` float64 of the samples ``ids`` with ``dims`` values, or None if < 2;
    the JSON texts are parsed in one call."""
    if len(ids) < 2:
        return None
    texts = session.exec(
        select(cast(FieldSample.values, Text)).where(col(FieldSample.id).in_(ids))
    ).all()
    parsed = json.loads("[" + ",".join(t for t in texts if t) + "]")
    rows = [v for v in parsed if isinstance(v, list) and len(v) == dims]
    if len(rows) < 2:
        return None
    return np.asarray(rows, dtype=np.float64)
