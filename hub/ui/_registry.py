"""Model registry and dataset pages: versions, aliases, lineage, bundle variants, validation."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from hub.datasets import service as datasets
from hub.registry import models as registry
from hub.tables import AliasMove, DatasetVersion


def _move(m: AliasMove) -> dict[str, Any]:
    """One alias move for the pages: ``promotion`` says how it was made: ``verified`` or
    ``unverified`` (a rollout's promotion, its gates had the evidence or not; ``missing``:
    the gates that had no data), ``by hand``."""
    evidence = m.evidence or {}
    promotion = "by hand" if m.verified is None else ("verified" if m.verified else "unverified")
    return {
        "alias": m.alias,
        "from": m.from_version,
        "to": m.to_version,
        "at": m.at,
        "rollout_id": m.rollout_id,
        "promotion": promotion,
        "missing": list(evidence.get("missing") or []),
        "gates": dict(evidence.get("gates") or {}),
    }


def models_overview(session: Session) -> list[dict[str, Any]]:
    """Every registered model with its versions (newest first) and aliases; ``moves``: each
    alias's latest move (how it was made: a verified or unverified promotion, by hand)."""
    out = []
    for model in registry.list_models(session):
        aliases = registry.aliases_of(session, model_name=model.name)
        latest = {m.alias: _move(m) for m in registry.alias_history(session, model_name=model.name)}
        versions = sorted(
            registry.list_versions(session, model_name=model.name),
            key=lambda v: v.version,
            reverse=True,
        )
        out.append(
            {
                "name": model.name,
                "description": model.description,
                "aliases": dict(sorted(aliases.items())),
                "moves": {a: latest[a] for a in aliases if a in latest},
                "versions": [
                    {
                        "version": v.version,
                        "aliases": sorted(a for a, n in aliases.items() if n == v.version),
                        "metrics": v.metrics,
                        "run_id": v.run_id,
                        "bundles": len(registry.bundles_of(session, model_version=v)),
                        "created_at": v.created_at,
                    }
                    for v in versions
                ],
            }
        )
    return out


def _variants(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    rows = manifest.get("variants") or []
    return [v for v in rows if isinstance(v, dict)]


def version_detail(session: Session, *, name: str, version: str) -> dict[str, Any]:
    """Lineage dataset version -> run -> model version -> bundles, and each bundle's variants."""
    mv = registry.get_version(session, ref=f"{name}@{version}")
    lineage = registry.lineage(session, ref=f"{name}@{mv.version}")
    bundles = [
        {
            "digest": b.digest,
            "size": b.size,
            "formats": b.formats,
            "created_at": b.created_at,
            "variants": _variants(b.manifest),
            "metric": b.manifest.get("metric"),
            "quantization": b.manifest.get("quantization") or {},
        }
        for b in registry.bundles_of(session, model_version=mv)
    ]
    return {
        "name": name,
        "version": mv.version,
        "lineage": lineage,
        "bundles": bundles,
        "alias_history": [_move(m) for m in registry.alias_history(session, model_name=name)],
    }


def _dataset_row(session: Session, v: DatasetVersion) -> dict[str, Any]:
    public = datasets.to_public(session, v)
    return {
        "ref": v.ref,
        "name": v.name,
        "version": v.version,
        "digest": v.digest,
        "source": v.source,
        "num_records": v.num_records,
        "splits": v.splits,
        "validation_status": v.validation_status,
        "override_reason": v.override_reason,
        "parent": public.parent,
        "created_at": v.created_at,
    }


def datasets_overview(session: Session) -> list[dict[str, Any]]:
    rows = sorted(datasets.list_versions(session), key=lambda v: (v.name, -v.version))
    return [_dataset_row(session, v) for v in rows]


def dataset_detail(session: Session, *, ref: str) -> dict[str, Any]:
    v = datasets.get_version(session, ref=ref)
    report = v.validation or {}
    return {
        **_dataset_row(session, v),
        "feature_shape": v.feature_shape,
        "labelled": v.labelled,
        "split_fractions": v.split_fractions,
        "checks": [c for c in report.get("checks", []) if isinstance(c, dict)],
        "alpha": report.get("alpha"),
        "reference_version": report.get("reference_version"),
        "lineage": v.lineage,
        "models": [
            f"{m.model_name}@{m.version}"
            for m in registry.versions_from_dataset(session, dataset=v.ref)
        ],
    }
