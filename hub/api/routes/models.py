"""The model registry: models, versions, aliases, lineage."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from hub import registry
from hub.api.deps import SessionDep, StoreDep
from hub.tables import ModelVersionPublic

router = APIRouter(prefix="/models", tags=["models"])


class ModelSummary(BaseModel):
    name: str
    description: str
    created_at: datetime
    latest_version: int | None
    aliases: dict[str, int]


class VersionCreate(BaseModel):
    run_id: str = Field(description="a finished training run")
    artifact: str = Field(default="model", description="the run artifact holding the model")
    description: str = ""


class AliasSet(BaseModel):
    version: int = Field(ge=1)


class AliasMovePublic(BaseModel):
    alias: str
    from_version: int | None
    to_version: int | None
    at: datetime


@router.get("", response_model=list[ModelSummary])
def list_models(session: SessionDep) -> list[ModelSummary]:
    result = []
    for model in registry.list_models(session):
        versions = registry.list_versions(session, model_name=model.name)
        result.append(
            ModelSummary(
                name=model.name,
                description=model.description,
                created_at=model.created_at,
                latest_version=versions[-1].version if versions else None,
                aliases=registry.aliases_of(session, model_name=model.name),
            )
        )
    return result


@router.get("/{name}/versions", response_model=list[ModelVersionPublic])
def versions(name: str, session: SessionDep) -> list[ModelVersionPublic]:
    found = registry.list_versions(session, model_name=name)
    return [registry.to_public(session, v) for v in found]


@router.post("/{name}/versions", response_model=ModelVersionPublic, status_code=201)
def register(
    name: str, body: VersionCreate, session: SessionDep, store: StoreDep
) -> ModelVersionPublic:
    version = registry.register_version(
        session,
        store,
        model_name=name,
        run_id=body.run_id,
        artifact=body.artifact,
        description=body.description,
    )
    return registry.to_public(session, version)


@router.get("/{name}/versions/{selector}", response_model=ModelVersionPublic)
def show(name: str, selector: str, session: SessionDep) -> ModelVersionPublic:
    """``selector``: a version number, ``latest`` or an alias."""
    return registry.to_public(session, registry.get_version(session, ref=f"{name}@{selector}"))


@router.get("/{name}/versions/{selector}/lineage")
def lineage(name: str, selector: str, session: SessionDep) -> dict[str, Any]:
    return registry.lineage(session, ref=f"{name}@{selector}")


@router.put("/{name}/aliases/{alias}", response_model=ModelVersionPublic)
def set_alias(name: str, alias: str, body: AliasSet, session: SessionDep) -> ModelVersionPublic:
    registry.set_alias(session, model_name=name, alias=alias, version=body.version)
    return registry.to_public(session, registry.get_version(session, ref=f"{name}@{alias}"))


@router.delete("/{name}/aliases/{alias}", status_code=204)
def delete_alias(name: str, alias: str, session: SessionDep) -> None:
    registry.delete_alias(session, model_name=name, alias=alias)


@router.get("/{name}/aliases/history", response_model=list[AliasMovePublic])
def alias_history(name: str, session: SessionDep) -> list[AliasMovePublic]:
    rows = registry.alias_history(session, model_name=name)
    return [AliasMovePublic.model_validate(r, from_attributes=True) for r in rows]
