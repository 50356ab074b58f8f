"""The ingest hot path's pre-serialised JSON columns read back exactly like plain ones,
on SQLite and PostgreSQL, and the engines' serializer keeps ``json.dumps``' output where
orjson would differ."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

from sqlmodel import Session, select

from hub.core.db import json_dumps, json_fragment, make_engine
from hub.ingest._decode import decode
from hub.ingest._store import pack, write_batch
from hub.tables import FieldSample, TelemetryWindowRow, create_all
from hub.tables.packed import feature_counts, feature_dicts
from proto.topics import Topics
from tests.ingest import helpers as h

TOPICS = Topics()
JSON_COLUMNS = ("latency", "output_counts", "confidence", "features", "shadow")


def test_json_dumps_matches_the_stdlib_where_orjson_differs() -> None:
    assert json.loads(json_dumps({"a": [1, 2.5, "é"], 3: True})) == {"a": [1, 2.5, "é"], "3": True}
    assert json_dumps([math.nan, math.inf]) == json.dumps([math.nan, math.inf])  # not null
    assert json_dumps({"x": None}) == json.dumps({"x": None})
    assert json_dumps(2**70) == str(2**70)  # beyond orjson's 64-bit ints
    assert json_dumps(json_fragment({"b": [math.inf]})) == json.dumps({"b": [math.inf]})


def test_packed_rows_read_back_like_plain_ones(database_url: str) -> None:
    engine = make_engine(database_url)
    create_all(engine)
    plain = decode(
        topics=TOPICS, topic=TOPICS.telemetry("p-1"), payload=h.window("p-1", 1), max_bytes=1 << 20
    )
    packed = pack(
        decode(
            topics=TOPICS,
            topic=TOPICS.telemetry("p-2"),
            payload=h.window("p-2", 1, samples=2),
            max_bytes=1 << 20,
        )
    )
    assert packed.window is not None and plain.window is not None
    assert all(not isinstance(packed.window[k], dict | list) for k in JSON_COLUMNS)
    now = datetime.now(UTC)
    result = write_batch(engine, [plain, packed], groups={}, now=now, create_unknown=True)
    assert result.stored == 2
    with Session(engine) as session:
        rows = {r.device_id: r for r in session.exec(select(TelemetryWindowRow)).all()}
        samples = session.exec(select(FieldSample).where(FieldSample.device_id == "p-2")).all()
    for column in JSON_COLUMNS:
        assert getattr(rows["p-2"], column) == getattr(rows["p-1"], column) == plain.window[column]
    for device in ("p-1", "p-2"):
        assert feature_dicts(rows[device]) == [
            {"name": "f0", "index": 0, "counts": [1, 2], "min": 0.0, "max": 0.0, "sum": 1.5,
             "sum_sq": 0.0, "count": 3, "non_finite": 0}
        ]  # fmt: skip
        assert feature_counts(rows[device]) == [(0, [1, 2])]
    assert len(samples) == 2 and all(isinstance(s.values, list) and s.shape for s in samples)
    engine.dispose()
