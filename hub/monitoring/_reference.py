"""A model version's reference for monitoring: its bundle's profile and evaluated accuracy."""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from hub.monitoring.accuracy import evaluated_accuracy
from hub.tables.registry import Bundle, ModelVersion

if TYPE_CHECKING:
    from hub.core.artifacts import ArtifactStore

log = logging.getLogger("edgeloop.monitor")
SAMPLES_FILE, SAMPLES_KEY = "samples.npz", "reference"  # what hub.packaging.service ships


@dataclass(frozen=True, kw_only=True)
class VersionReference:
    """What telemetry of ``model@version`` is compared with (from the bundle's manifest)."""

    model: str
    version: str
    bundle_digest: str
    profile: dict[str, Any]
    accuracy: float | None  # 0..1, as evaluated when packaged
    feature_bins: dict[int, int] = field(default_factory=dict)  # feature index -> counts length
    kind: str = "classes"  # classes | score (reconstruction: output_counts = score histogram)
    confidence_bins: int = 0
    classes: int = 0
    score_bins: int = 0
    samples: Any = None  # raw reference inputs [n, d] for multivariate tests, when loaded
    # "" for the version's reference; else the scope this one describes (``group:<name>``)
    scope: str = ""
    samples_key: str = SAMPLES_KEY
    # per scope with its own reference (a model trained on field data: each group's newest
    # field inputs, binned with this profile's edges); other scopes use this one
    scopes: dict[str, VersionReference] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.model, self.version, self.bundle_digest, self.scope

    def for_scope(self, scope: str, *, group: str = "") -> VersionReference | None:
        """The reference a monitoring scope is compared with: its own, a device's group's,
        else the version's. None for the version scope of a version with group references:
        its windows mix the groups in whatever shares the rollout has reached (a 10% canary
        at one site is not the fleet), so the groups and devices are tested instead."""
        found = self.scopes.get(scope)
        if found is None and scope.startswith("device:") and group:
            found = self.scopes.get(f"group:{group}")
        if found is None and self.scopes and scope.startswith("version:"):
            return None
        return found or self


def load_reference(
    session: Session,
    *,
    model: str,
    version: str,
    bundle_digest: str = "",
    store: ArtifactStore | None = None,
) -> VersionReference | None:
    """The bundle ``bundle_digest`` if registered for ``model@version``, else its newest bundle;
    None when the version is unknown or no bundle of it carries a reference profile. With the
    artifact ``store``, ``samples`` are the raw reference rows the bundle ships (for MMD)."""
    found = _load(session, model=model, version=version, bundle_digest=bundle_digest)
    if found is None or store is None:
        return found
    digest = found.bundle_digest
    return replace(
        found,
        samples=reference_samples(store, digest),
        scopes={
            scope: replace(child, samples=reference_samples(store, digest, key=child.samples_key))
            for scope, child in found.scopes.items()
        },
    )


def reference_samples(store: ArtifactStore, digest: str, *, key: str = SAMPLES_KEY) -> Any:
    """``samples.npz[key]`` of the bundle ``digest`` as ``(n, d)`` float64, or None (no such
    file in the store, an older bundle without it, or unreadable: logged)."""
    import numpy as np

    try:
        with store.open(digest) as raw, zipfile.ZipFile(raw) as bundle:
            if SAMPLES_FILE not in bundle.namelist():
                return None
            arrays = np.load(io.BytesIO(bundle.read(SAMPLES_FILE)), allow_pickle=False)
            if key not in arrays:
                return None
            rows = np.asarray(arrays[key], dtype=np.float64)
    except Exception as exc:  # a missing or broken artifact: the other detectors still run
        log.warning("no reference samples from bundle %s: %s", digest, exc)
        return None
    return rows.reshape(len(rows), -1) if len(rows) else None


def _load(
    session: Session, *, model: str, version: str, bundle_digest: str
) -> VersionReference | None:
    if not version.isdigit():
        return None
    query = (
        select(Bundle, ModelVersion)
        .join(ModelVersion, col(Bundle.model_version_id) == col(ModelVersion.id))
        .where(ModelVersion.model_name == model, ModelVersion.version == int(version))
        .order_by(col(Bundle.id).desc())
    )
    rows = list(session.exec(query).all())
    rows.sort(key=lambda pair: pair[0].digest != bundle_digest)  # stable: the match first
    for bundle, mv in rows:
        profile = bundle.manifest.get("reference_profile")
        if isinstance(profile, dict) and profile.get("features") is not None:
            found = _reference(model, version, bundle, mv, profile)
            scopes = bundle.manifest.get("scope_profiles")
            children = {}
            for scope, entry in (scopes if isinstance(scopes, dict) else {}).items():
                child = entry.get("profile") if isinstance(entry, dict) else None
                if not isinstance(child, dict) or child.get("features") is None:
                    continue
                children[str(scope)] = replace(
                    _reference(model, version, bundle, mv, child),
                    scope=str(scope),
                    samples_key=str(entry.get("samples") or ""),
                )
            return replace(found, scopes=children)
    return None


def _reference(
    model: str, version: str, bundle: Bundle, mv: ModelVersion, profile: dict[str, Any]
) -> VersionReference:
    output = profile.get("output") or {}
    confidence = output.get("confidence") or {}
    score = output.get("score") or {}
    return VersionReference(
        model=model,
        version=version,
        bundle_digest=bundle.digest,
        profile=profile,
        accuracy=evaluated_accuracy(bundle.manifest, mv.metrics),
        feature_bins={
            int(f["index"]): len(f.get("edges") or []) + 1 for f in profile.get("features") or []
        },
        kind=str(output.get("kind") or "classes"),
        confidence_bins=len(confidence.get("edges") or []) + 1 if confidence else 0,
        classes=len(output.get("class_counts") or []),
        score_bins=len(score.get("edges") or []) + 1 if score else 0,
    )
