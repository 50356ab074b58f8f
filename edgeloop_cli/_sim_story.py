"""What the hub did while ``edgeloop --hub URL sim run`` ran: the rollouts it ran (phase
timeline), the drift and degradation it detected, and the retraining it started.

Read through the admin API after the run; every time is also given as seconds since the
run started (``after_s``), so a report reads as one timeline with the fleet's ``events``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Get = Callable[..., Any]  # HubClient.get: (path, **params) -> JSON


def _at(text: str | None) -> datetime | None:
    if not text:
        return None
    at = datetime.fromisoformat(text)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _after(text: str | None, since: datetime) -> float | None:
    at = _at(text)
    return None if at is None else round((at - since).total_seconds(), 3)


def _rollout(view: dict[str, Any], since: datetime) -> dict[str, Any]:
    return {
        "id": view["id"],
        "model": view["model"],
        "version": view["version"],
        "state": view["state"],
        "phase": view["phase"],
        "reason": view.get("reason"),
        "device_states": view.get("device_states", {}),
        "after_s": _after(view.get("created_at"), since),
        "finished_after_s": _after(view.get("finished_at"), since),
        "timeline": [
            {
                "after_s": _after(e["at"], since),
                "kind": e["kind"],
                "phase": e.get("phase"),
                "detail": e.get("detail", ""),
            }
            for e in sorted(view.get("events", []), key=lambda e: str(e["at"]))
            if not e.get("device_id")  # the rollout's own steps; devices: device_states
        ],
    }


def hub_story(get: Get, *, since: datetime) -> dict[str, Any]:
    """``rollouts`` created, ``detections`` (alerts opened; the API's latest 500) and
    ``retraining`` (trigger events) since ``since`` (aware UTC), oldest first."""
    rollouts = [
        _rollout(get(f"/rollouts/{r['id']}"), since)
        for r in get("/rollouts")
        if (created := _at(r.get("created_at"))) is not None and created >= since
    ]
    detections = [
        {
            "after_s": _after(a["at"], since),
            "kind": a["kind"],
            "scope": a["scope"],
            "detector": a["detector"],
            "model": a["model"],
            "version": a["version"],
            "score": a["score"],
            "threshold": a["threshold"],
            "resolved": a.get("resolved_at") is not None,
        }
        for a in get("/monitor/alerts")
        if (at := _at(a.get("at"))) is not None and at >= since
    ]
    retraining = [
        {
            "after_s": _after(e["at"], since),
            "model": e["model_name"],
            "kind": e["kind"],
            "status": e["status"],
            "reason": e["reason"],
            "run_id": e.get("run_id"),
            "model_version": e.get("model_version"),
            "rollout_id": e.get("rollout_id"),
        }
        for e in get("/triggers/events")["events"]
        if (at := _at(e.get("at"))) is not None and at >= since
    ]
    first: dict[str, float] = {}
    for d in sorted(detections, key=lambda d: d["after_s"] or 0.0):
        first.setdefault(d["kind"], d["after_s"])
    return {
        "rollouts": sorted(rollouts, key=lambda r: r["after_s"] or 0.0),
        "first_detection_after_s": first,  # per kind: drift, degradation
        "detections": sorted(detections, key=lambda d: d["after_s"] or 0.0),
        "retraining": sorted(retraining, key=lambda e: e["after_s"] or 0.0),
    }
