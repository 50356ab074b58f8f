"""Several hub replicas on one database: who is running (``cluster_replica``) and who holds
each singleton's lease (``cluster_lease``). ``hub.cluster`` writes both; ``GET
/api/v1/cluster`` reads them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field

from hub.core.clock import utcnow
from hub.tables.columns import HubModel, json_field


class ClusterReplica(HubModel, table=True):
    """One running ``hub serve`` process: its components and its latest heartbeat."""

    __tablename__ = "cluster_replica"

    id: str = Field(primary_key=True, max_length=128)
    host: str = Field(max_length=255)
    pid: int
    components: list[Any] = json_field(default_factory=list)
    started_at: datetime = Field(default_factory=utcnow)
    heartbeat_at: datetime = Field(default_factory=utcnow, index=True)


class ClusterLease(HubModel, table=True):
    """A singleton's lease: held by ``holder`` until ``expires_at`` unless renewed. ``term``
    grows by one each time a different replica (or the same one after expiry) takes it."""

    __tablename__ = "cluster_lease"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    term: int = 0
    acquired_at: datetime = Field(default_factory=utcnow)
    renewed_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(default_factory=utcnow)
    #: PostgreSQL: the holder also holds the lease's advisory lock (a standby that can take
    #: that lock knows the holder's connection, so the holder, is gone)
    locked: bool = False
