"""CPU per telemetry window by ingest stage, without MQTT: decode, ``_store.pack`` and
``write_batch`` of the ingest bench's windows, in batches as the worker makes them.

``python -m bench.ingest_stages [sqlite|postgresql] [--batch N] [--profile]`` prints process
CPU µs per window of each stage (``--profile``: the top of a cProfile by own time). Not a
``make bench`` benchmark (no baseline): the before/after profile of issue #18
(docs/MONITORING.md, "Ingest cost per window")."""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from bench.ingest import DEVICES, PG_ADMIN_URL, _payloads
from hub.core.db import make_engine, session_scope
from hub.ingest._decode import decode
from hub.ingest._store import pack, write_batch
from hub.tables import Device, create_all
from proto.topics import Topics


@contextmanager
def _url(kind: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/stages.db"
        return
    import psycopg

    name = f"edgeloop_stages_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stages(kind: str, *, batch: int, profile: bool = False) -> dict[str, float]:
    """CPU µs per window of each stage over the bench's windows into a fresh database."""
    topics = Topics(fleet="stages")
    messages = _payloads(topics)
    groups = {f"bench-{d}": "default" for d in range(DEVICES)}
    spent = {"decode": 0.0, "pack": 0.0, "store": 0.0}
    profiler = cProfile.Profile() if profile else None
    with _url(kind) as url:
        engine = make_engine(url)
        create_all(engine)
        with session_scope(engine) as session:
            for d in range(DEVICES):
                session.add(Device(id=f"bench-{d}"))
        if profiler:
            profiler.enable()
        clock = time.process_time
        for start in range(0, len(messages), batch):
            t0 = clock()
            items = [
                decode(topics=topics, topic=topic, payload=payload, max_bytes=1 << 20)
                for topic, payload in messages[start : start + batch]
            ]
            t1 = clock()
            for item in items:
                pack(item)
            t2 = clock()
            write_batch(engine, items, groups=groups, now=datetime.now(UTC), create_unknown=False)
            t3 = clock()
            spent["decode"] += t1 - t0
            spent["pack"] += t2 - t1
            spent["store"] += t3 - t2
        if profiler:
            profiler.disable()
        engine.dispose()
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    out = {stage: s / len(messages) * 1e6 for stage, s in spent.items()}
    out["total"] = sum(out.values())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("database", choices=["sqlite", "postgresql"], nargs="?", default="sqlite")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    result = stages(args.database, batch=args.batch, profile=args.profile)
    print(
        f"{args.database}, batches of {args.batch}: "
        + ", ".join(f"{k} {v:.1f}" for k, v in result.items())
        + " CPU us per window"
    )


if __name__ == "__main__":
    main()
