"""The monitoring reads a window's sketches from the packed column the ingest writes (the
device's protobuf, no JSON), and rows from before that column (sketches in the JSON column
``features``, ``packed`` NULL, the column added by ``add_missing_columns``) the same way."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import Column, MetaData, Table, select, text
from sqlalchemy.engine import Engine

from hub.ingest._decode import decode
from hub.ingest._store import pack, write_batch
from hub.monitoring._drift import COLUMNS
from hub.monitoring._reference import VersionReference
from hub.monitoring._windows import BadRow, Layout
from hub.tables import TelemetryWindowRow, add_missing_columns
from hub.tables.packed import feature_counts, feature_dicts, pack_window
from proto import messages_pb2 as pb
from proto.topics import Topics

TOPICS = Topics()
T0 = datetime(2026, 5, 1, tzinfo=UTC)
SKETCHES = [
    {"name": "a", "index": 0, "counts": [3, 0, 7], "min": -1.0, "max": 2.5, "sum": 4.0,
     "sum_sq": 9.5, "count": 10, "non_finite": 0},
    {"name": "b", "index": 1, "counts": [1, 8, 1], "min": 0.0, "max": 1.0, "sum": 5.0,
     "sum_sq": 3.0, "count": 10, "non_finite": 1},
]  # fmt: skip
REFERENCE = VersionReference(
    model="m", version="1", bundle_digest="", profile={}, accuracy=None,
    feature_bins={0: 3, 1: 3}, classes=2, confidence_bins=3,
)  # fmt: skip


def _old_row(engine: Engine, table: Table | None = None) -> None:
    """A window as hubs before the packed column stored it."""
    table = TelemetryWindowRow.__table__ if table is None else table  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            {
                "device_id": "old-1", "seq": 1, "model": "m", "version": "1",
                "window_start": T0, "window_end": T0, "count": 10, "errors": 0,
                "latency": {}, "output_counts": [6, 4],
                "confidence": {"edges": [0.5, 0.9], "counts": [1, 2, 7]},
                "features": SKETCHES, "shadow": {}, "received_at": T0, "dropped_windows": 0,
                "num_samples": 0, "group": "default", "bundle_digest": "",
            },
        )  # fmt: skip


def _new_row(engine: Engine) -> None:
    """The same window through the ingest, as a device sends it (with samples)."""
    window = pb.TelemetryWindow(
        device_id="new-1", seq=1, model="m", version="1", count=10, output_counts=[6, 4],
        confidence=pb.Histogram(edges=[0.5, 0.9], counts=[1, 2, 7]),
        features=[pb.FeatureSketch(**s) for s in SKETCHES],  # type: ignore[arg-type]
        samples=[pb.Sample(prediction_id="p-1", values=[0.5, 1.5], shape=[2])],
    )  # fmt: skip
    item = decode(
        topics=TOPICS, topic=TOPICS.telemetry("new-1"), payload=window.SerializeToString(),
        max_bytes=1 << 20,
    )  # fmt: skip
    result = write_batch(engine, [pack(item)], groups={}, now=T0, create_unknown=True)
    assert result.stored == 1


def _read(engine: Engine) -> dict[str, object]:
    with engine.connect() as conn:
        return {r.device_id: r for r in conn.execute(select(*COLUMNS)).all()}


def test_packed_and_json_rows_give_the_same_counts(engine: Engine) -> None:
    _old_row(engine)
    _new_row(engine)
    rows = _read(engine)
    old, new = rows["old-1"], rows["new-1"]
    assert old.packed is None and new.packed and new.features == []  # type: ignore[attr-defined]
    assert feature_dicts(old) == feature_dicts(new) == SKETCHES
    assert [(i, list(c)) for i, c in feature_counts(new)] == [(0, [3, 0, 7]), (1, [1, 8, 1])]
    layout = Layout(REFERENCE)
    want = np.array([3, 0, 7, 1, 8, 1, 6, 4, 1, 2, 7])
    assert np.array_equal(layout.row_vector(old), want)
    assert np.array_equal(layout.row_vector(new), want)


def test_a_database_from_before_the_packed_column_gets_it_and_reads_on(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE telemetry_window DROP COLUMN packed"))
    columns = TelemetryWindowRow.__table__.c  # type: ignore[attr-defined]
    before = Table(  # the table as an older hub knew it
        "telemetry_window",
        MetaData(),
        *(Column(c.name, c.type, primary_key=c.primary_key) for c in columns if c.name != "packed"),
    )
    _old_row(engine, before)
    assert "telemetry_window.packed" in add_missing_columns(engine)
    _new_row(engine)
    rows = _read(engine)
    layout = Layout(REFERENCE)
    assert np.array_equal(layout.row_vector(rows["old-1"]), layout.row_vector(rows["new-1"]))


@pytest.mark.parametrize("packed", [b"\x07junk", b"\x01\xff\xff"])
def test_a_packed_column_that_does_not_read_is_a_bad_row(packed: bytes) -> None:
    row = TelemetryWindowRow(
        device_id="d", seq=1, window_start=T0, window_end=T0, count=1, errors=0, packed=packed
    )
    with pytest.raises(BadRow, match="malformed feature sketch"):
        Layout(REFERENCE).row_vector(row)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _unpacked_sketch(index: int, counts: list[int]) -> bytes:
    """A ``FeatureSketch`` whose counts are sent unpacked (one tag per value): legal proto3."""
    body = pb.FeatureSketch(index=index).SerializeToString()
    body += b"".join(b"\x18" + _varint(c) for c in counts)
    return b"\x6a" + _varint(len(body)) + body  # TelemetryWindow.features (field 13)


@pytest.mark.parametrize(
    "sketches",
    [
        [(0, [3, 0, 7]), (1, [1, 8, 1])],  # one byte per count
        [(0, [127, 128, 300]), (1, [2**40, 0, 16384])],  # multi-byte varints
        [(1, [1, 8, 1]), (0, [3, 0, 7])],  # out of order
        [(1, [1, 8, 1])],  # a sketch missing: zeros
        [(0, [3, 0]), (1, [1, 8, 1])],  # wrong size: bad row
        [(0, [3, 0, 7]), (5, [1, 8, 1])],  # not in the reference: bad row
        [(0, [2**63, 0, 0]), (1, [1, 8, 1])],  # beyond int64: bad row
    ],
)
def test_the_vectorised_packed_path_reads_what_the_sketch_by_sketch_path_reads(
    sketches: list[tuple[int, list[int]]],
) -> None:
    layout = Layout(REFERENCE)
    window = pb.TelemetryWindow(features=[pb.FeatureSketch(index=i, counts=c) for i, c in sketches])
    unpacked = b"".join(_unpacked_sketch(i, c) for i, c in sketches)
    rows = [
        TelemetryWindowRow(
            device_id="d",
            seq=1,
            window_start=T0,
            window_end=T0,
            count=1,
            errors=0,
            output_counts=[6, 4],
            packed=packed,
            features=[{"index": i, "counts": c} for i, c in sketches] if packed is None else [],
        )
        for packed in (None, pack_window(window, window.SerializeToString()), b"\x01" + unpacked)
    ]
    results = []
    for row in rows:
        try:
            results.append(layout.row_vector(row).tolist())
        except BadRow:
            results.append("bad row")
    assert results[0] == results[1] == results[2]
