"""Ingest health: the in-process worker's counters and the sequence gaps in the database."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from hub.api.deps import ContextDep
from hub.api.public import IngestStatsPublic
from hub.tables.devices import DEVICE_ID_PATTERN

router = APIRouter(prefix="/ingest", tags=["ingest"])


@router.get("/stats", response_model=IngestStatsPublic)
def stats(
    request: Request,
    ctx: ContextDep,
    device_id: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN)] = None,
    only_gaps: bool = False,
) -> IngestStatsPublic:
    """``worker``: this hub's ingest counters (null when it runs none); ``streams``: per
    device and stream, the seqs received, the missing ranges and agent-side drops."""
    from hub.ingest import gaps

    worker = getattr(request.app.state, "ingest", None)
    streams = gaps(ctx.engine, device_id=device_id)
    return IngestStatsPublic(
        worker=worker.stats().as_dict() if worker is not None else None,
        devices=len({g.device_id for g in streams}),
        missing=sum(g.missing_count for g in streams),
        dropped_windows=sum(g.dropped_windows for g in streams),
        streams=[g.as_dict() for g in streams if g.missing or not only_gaps],
    )
