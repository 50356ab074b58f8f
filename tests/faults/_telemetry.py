"""Shared pieces for the telemetry faults: an in-process agent on v1, an ingest worker on a
SQLite hub DB, and what the DB says about one device's windows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.engine import Engine

from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings
from hub.core.db import session_scope
from hub.datasets.sources import load_source
from hub.ingest import gaps
from hub.mqtt.broker import EmbeddedBroker
from hub.tables import Device, TelemetryWindowRow
from proto import messages_pb2 as pb
from tests.agent.harness import Observer
from tests.faults._world import FaultHub

K = pb.EventKind
DIGITS = load_source("sklearn:digits").features


def agent_settings(
    *, device_id: str, broker: EmbeddedBroker, hub: FaultHub, tmp: Path, **extra: Any
) -> AgentSettings:
    values: dict[str, Any] = {
        "device_id": device_id,
        "data_dir": tmp / "agents",
        "mqtt_url": broker.url,
        "public_key": hub.bundles.public_key_file,
        "probation_s": 0.0,
        "reconnect_initial_s": 0.1,
        "reconnect_max_s": 0.5,
        "telemetry_tick_s": 0.05,
        "telemetry_max_predictions": 5,
    }
    return AgentSettings(**(values | extra))


async def serve_v1(obs: Observer, agent: Agent, hub: FaultHub) -> None:
    """Deploy v1 on ``agent`` (through the broker, as the hub would)."""
    device = agent.settings.device_id
    await obs.online(device, within=30)
    b = hub.bundles
    cid = await obs.deploy(device, digest=b.v1, size=b.sizes[b.v1], endpoint=hub.endpoint)
    assert (await obs.until_done(device, cid, within=60))[-1] == K.EVENT_KIND_HEALTHY


def table(model: Any) -> Table:
    """A SQLModel class's table (typed)."""
    t = model.__table__
    assert isinstance(t, Table)
    return t


def register(engine: Engine, *devices: str) -> None:
    with session_scope(engine) as s:
        for d in devices:
            s.add(Device(id=d))


@dataclass(frozen=True)
class Stored:
    seqs: list[int]  # every stored row's seq, sorted (a repeat would show twice)
    predictions: int
    dropped_windows: int
    missing: int  # hub.ingest.gaps: seqs below the highest one that never arrived


def stored(engine: Engine, device: str) -> Stored:
    t = table(TelemetryWindowRow)
    with engine.connect() as conn:
        seqs = sorted(
            int(r[0]) for r in conn.execute(select(t.c.seq).where(t.c.device_id == device))
        )
        total, dropped = conn.execute(
            select(
                func.coalesce(func.sum(t.c.count), 0),
                func.coalesce(func.sum(t.c.dropped_windows), 0),
            ).where(t.c.device_id == device)
        ).one()
    report = [g for g in gaps(engine, device) if g.stream == "telemetry"]
    missing = sum(g.missing_count for g in report)
    return Stored(seqs=seqs, predictions=int(total), dropped_windows=int(dropped), missing=missing)
