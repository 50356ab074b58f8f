"""A drift window's raw inputs for multivariate detectors (MMD): the reservoir samples the
ingest stored as ``FieldSample`` rows, from the window's devices and time span."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlmodel import Session, col, select

from hub.monitoring._windows import Partial
from hub.tables.fleet import FieldSample, TelemetryWindowRow

MAX_SAMPLES = 1000  # newest rows per window (the MMD detector subsamples to its max_window)


def epoch_ms(at: datetime) -> int:
    """SQLite hands datetimes back naive; every time the hub stores is UTC."""
    return int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() * 1000)


def span_of(row: TelemetryWindowRow) -> tuple[int, int]:
    return epoch_ms(row.window_start), epoch_ms(row.window_end)


def window_samples(
    session: Session, partial: Partial, *, model: str, version: str, dims: int
) -> Any:
    """``(k, dims)`` float64 of the window's samples with ``dims`` values, or None if < 2."""
    if not partial.devices or not partial.end_ms:
        return None
    start = datetime.fromtimestamp(partial.start_ms / 1000, UTC)
    end = datetime.fromtimestamp(partial.end_ms / 1000, UTC)
    found = session.exec(
        select(FieldSample.values)
        .where(
            FieldSample.model == model,
            FieldSample.version == version,
            col(FieldSample.device_id).in_(partial.devices),
            FieldSample.at >= start,
            FieldSample.at <= end,
        )
        .order_by(col(FieldSample.id).desc())
        .limit(MAX_SAMPLES)
    ).all()
    rows = [v for v in found if isinstance(v, list) and len(v) == dims]
    if len(rows) < 2:
        return None
    return np.asarray(rows, dtype=np.float64)
