"""The model registry: registered models, numbered versions, movable aliases, lineage."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from hub._lazy import module
from hub.core.artifacts import ArtifactStore
from hub.core.clock import utcnow
from hub.core.errors import Conflict, InvalidInput, NotFound, parse_ref
from hub.registry import tracking
from hub.tables import (
    AliasMove,
    Bundle,
    ModelAlias,
    ModelVersion,
    ModelVersionPublic,
    RegisteredModel,
    TrainingRun,
)

if TYPE_CHECKING:
    from hub.datasets import service as datasets
else:  # numpy and the record sources: only lineage and run creation read datasets
    datasets = module("hub.datasets.service")

ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
RESERVED_ALIASES = {"latest"}


def register_version(
    session: Session,
    store: ArtifactStore,
    *,
    model_name: str,
    run_id: str | None = None,
    data: bytes | None = None,
    artifact: str = "model",
    description: str = "",
    metrics: Mapping[str, float] | None = None,
) -> ModelVersion:
    """Register the next version of ``model_name``: the run's ``artifact``, or raw ``data``."""
    if not MODEL_NAME.match(model_name):
        raise InvalidInput(f"model name {model_name!r}: letters, digits, '_', '.', '-' only")
    run: TrainingRun | None = None
    if run_id is not None:
        run = tracking.get_run(session, run_id=run_id)
        if run.status != "finished":
            raise Conflict(f"run {run_id} is {run.status}; only finished runs are registered")
    if data is not None:
        ref = store.put_bytes(data)
        digest, size = ref.digest, ref.size
    elif run is not None:
        found = tracking.run_artifacts(session, run_id=run.id).get(artifact)
        if found is None:
            raise NotFound(f"run {run.id} has no artifact {artifact!r} to register")
        digest, size = found.digest, found.size
    else:
        raise InvalidInput("register a model version from a run (run_id) or from model bytes")

    if session.get(RegisteredModel, model_name) is None:
        session.add(RegisteredModel(name=model_name))
        session.flush()
    latest = session.exec(
        select(ModelVersion)
        .where(ModelVersion.model_name == model_name)
        .order_by(col(ModelVersion.version).desc())
    ).first()
    version = ModelVersion(
        model_name=model_name,
        version=(latest.version + 1) if latest else 1,
        run_id=run.id if run else None,
        artifact_digest=digest,
        artifact_size=size,
        description=description,
        metrics=dict(metrics if metrics is not None else (run.metrics if run else {})),
    )
    session.add(version)
    session.flush()
    return version


def get_version(session: Session, *, ref: str) -> ModelVersion:
    """``MODEL@N``, ``MODEL@latest`` or ``MODEL@<alias>``."""
    name, selector = parse_ref(ref, what="model version")
    query = select(ModelVersion).where(ModelVersion.model_name == name)
    found: ModelVersion | None
    if selector.isdigit():
        found = session.exec(query.where(ModelVersion.version == int(selector))).first()
    elif selector == "latest":
        found = session.exec(query.order_by(col(ModelVersion.version).desc())).first()
    else:
        alias = session.get(ModelAlias, (name, selector))
        found = session.get(ModelVersion, alias.model_version_id) if alias else None
    if found is None:
        if session.get(RegisteredModel, name) is None:
            raise NotFound(f"no registered model {name!r} (list them with: edgeloop model list)")
        raise NotFound(f"model {name!r} has no version or alias {selector!r}")
    return found


def list_models(session: Session) -> Sequence[RegisteredModel]:
    return session.exec(select(RegisteredModel).order_by(col(RegisteredModel.name))).all()


def list_versions(session: Session, *, model_name: str) -> Sequence[ModelVersion]:
    if session.get(RegisteredModel, model_name) is None:
        raise NotFound(f"no registered model {model_name!r}")
    return session.exec(
        select(ModelVersion)
        .where(ModelVersion.model_name == model_name)
        .order_by(col(ModelVersion.version))
    ).all()


def aliases_of(session: Session, *, model_name: str) -> dict[str, int]:
    """alias -> version number."""
    rows = session.exec(
        select(ModelAlias, ModelVersion)
        .join(ModelVersion, col(ModelVersion.id) == col(ModelAlias.model_version_id))
        .where(ModelAlias.model_name == model_name)
    ).all()
    return {alias.alias: version.version for alias, version in rows}


def set_alias(
    session: Session,
    *,
    model_name: str,
    alias: str,
    version: int,
    rollout_id: str = "",
    verified: bool | None = None,
    evidence: Mapping[str, Any] | None = None,
) -> ModelAlias:
    """Point ``alias`` at ``version`` (moving it if it pointed elsewhere); recorded in history.
    A rollout's promotion passes its id, whether it was ``verified`` and the ``evidence``
    (each gate's outcome), which the history keeps."""
    if not ALIAS.match(alias) or alias in RESERVED_ALIASES:
        raise InvalidInput(
            f"alias {alias!r}: lower-case letters, digits, '_' or '-', starting with a letter; "
            f"not {sorted(RESERVED_ALIASES)}"
        )
    target = get_version(session, ref=f"{model_name}@{version}")
    current = session.get(ModelAlias, (model_name, alias))
    previous = session.get(ModelVersion, current.model_version_id) if current else None
    if current is None:
        current = ModelAlias(model_name=model_name, alias=alias, model_version_id=target.id or 0)
    current.model_version_id = target.id or 0
    current.updated_at = utcnow()
    session.add(current)
    session.add(
        AliasMove(
            model_name=model_name,
            alias=alias,
            from_version=previous.version if previous else None,
            to_version=target.version,
            rollout_id=rollout_id,
            verified=verified,
            evidence=dict(evidence or {}),
        )
    )
    session.flush()
    return current


def delete_alias(session: Session, *, model_name: str, alias: str) -> None:
    current = session.get(ModelAlias, (model_name, alias))
    if current is None:
        raise NotFound(f"model {model_name!r} has no alias {alias!r}")
    previous = session.get(ModelVersion, current.model_version_id)
    session.delete(current)
    session.add(
        AliasMove(
            model_name=model_name,
            alias=alias,
            from_version=previous.version if previous else None,
            to_version=None,
        )
    )
    session.flush()


def alias_history(session: Session, *, model_name: str) -> Sequence[AliasMove]:
    return session.exec(
        select(AliasMove).where(AliasMove.model_name == model_name).order_by(col(AliasMove.id))
    ).all()


def register_bundle(
    session: Session,
    *,
    model_version: ModelVersion,
    digest: str,
    size: int,
    formats: Sequence[str],
    manifest: Mapping[str, Any],
) -> Bundle:
    """Record a packaged bundle (already in the artifact store) against its model version."""
    existing = session.exec(select(Bundle).where(Bundle.digest == digest)).first()
    if existing is not None:
        if existing.model_version_id != model_version.id:
            raise Conflict(f"bundle {digest} is already registered to another model version")
        return existing
    bundle = Bundle(
        model_version_id=model_version.id or 0,
        digest=digest,
        size=size,
        formats=list(formats),
        manifest=dict(manifest),
    )
    session.add(bundle)
    session.flush()
    return bundle


def bundles_of(session: Session, *, model_version: ModelVersion) -> Sequence[Bundle]:
    return session.exec(
        select(Bundle).where(Bundle.model_version_id == model_version.id).order_by(col(Bundle.id))
    ).all()


def to_public(session: Session, version: ModelVersion) -> ModelVersionPublic:
    aliases = sorted(
        alias
        for alias, number in aliases_of(session, model_name=version.model_name).items()
        if number == version.version
    )
    return ModelVersionPublic.model_validate(
        version,
        update={"ref": f"{version.model_name}@{version.version}", "aliases": aliases},
    )


def lineage(session: Session, *, ref: str) -> dict[str, Any]:
    """model version -> run -> dataset version (and its parents) -> code version; bundles."""
    version = get_version(session, ref=ref)
    result: dict[str, Any] = {
        "model_version": to_public(session, version).model_dump(mode="json"),
        "run": None,
        "dataset_version": None,
        "dataset_ancestry": [],
        "code_version": None,
        "bundles": [
            {"digest": b.digest, "size": b.size, "formats": b.formats}
            for b in bundles_of(session, model_version=version)
        ],
    }
    if version.run_id is None:
        return result
    run = tracking.get_run(session, run_id=version.run_id)
    result["run"] = tracking.to_public(session, run).model_dump(mode="json")
    result["code_version"] = run.code_version
    dataset = datasets.get_by_id(session, version_id=run.dataset_version_id)
    result["dataset_version"] = {"ref": dataset.ref, "digest": dataset.digest}
    ancestry: list[str] = []
    parent_id = dataset.parent_id
    while parent_id is not None:
        parent = datasets.get_by_id(session, version_id=parent_id)
        ancestry.append(parent.ref)
        parent_id = parent.parent_id
    result["dataset_ancestry"] = ancestry
    return result


def versions_from_dataset(session: Session, *, dataset: str) -> Sequence[ModelVersion]:
    """Reverse lineage: every model version trained on this dataset version."""
    version = datasets.get_version(session, ref=dataset)
    return session.exec(
        select(ModelVersion)
        .join(TrainingRun, col(TrainingRun.id) == col(ModelVersion.run_id))
        .where(TrainingRun.dataset_version_id == version.id)
        .order_by(col(ModelVersion.model_name), col(ModelVersion.version))
    ).all()
