"""Several hub replicas on one database: who runs what, and who holds each lease."""

from __future__ import annotations

from fastapi import APIRouter

from hub.api.deps import ContextDep
from hub.api.public import ClusterPublic
from hub.cluster.status import cluster_status

router = APIRouter(prefix="/cluster", tags=["cluster"])


@router.get("", response_model=ClusterPublic)
def show_cluster(context: ContextDep) -> ClusterPublic:
    """The replicas (alive: a heartbeat within one lease period), the live replicas of each
    component, and each singleton's lease with its holder."""
    status = cluster_status(context.engine, lease_s=context.settings.cluster_lease_s)
    return ClusterPublic.model_validate(status)
