"""What ``GET /api/v1/cluster`` and ``edgeloop cluster status`` show: the replicas, which
components run where, and each lease with its holder (read from the database, so every API
replica answers the same)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from hub.cluster.member import COMPONENTS, LEASES
from hub.core.clock import aware, utcnow
from hub.tables.cluster import ClusterLease, ClusterReplica

__all__ = ["cluster_status"]


def cluster_status(engine: Engine, *, lease_s: float) -> dict[str, Any]:
    """Replicas (alive: a heartbeat within ``lease_s``), the live replicas per component,
    and each lease (valid: not expired; its holder alive or not)."""
    now = utcnow()
    since = now - timedelta(seconds=lease_s)
    with Session(engine) as s:
        replicas = s.exec(select(ClusterReplica).order_by(col(ClusterReplica.started_at))).all()
        leases = s.exec(select(ClusterLease).order_by(col(ClusterLease.name))).all()
    alive = {r.id for r in replicas if (aware(r.heartbeat_at) or now) >= since}
    components: dict[str, list[str]] = {c: [] for c in COMPONENTS}
    for replica in replicas:
        if replica.id in alive:
            for component in replica.components or ():
                components.setdefault(str(component), []).append(replica.id)
    return {
        "lease_s": lease_s,
        "replicas": [
            {
                "id": r.id,
                "host": r.host,
                "pid": r.pid,
                "components": list(r.components or ()),
                "started_at": aware(r.started_at),
                "heartbeat_at": aware(r.heartbeat_at),
                "alive": r.id in alive,
            }
            for r in replicas
        ],
        "components": components,
        "leases": [
            {
                "name": lease.name,
                "component": LEASES.get(lease.name, ""),
                "holder": lease.holder,
                "holder_alive": lease.holder in alive,
                "term": lease.term,
                "acquired_at": aware(lease.acquired_at),
                "renewed_at": aware(lease.renewed_at),
                "expires_at": aware(lease.expires_at),
                "valid": (aware(lease.expires_at) or now) > now,
            }
            for lease in leases
        ],
    }
