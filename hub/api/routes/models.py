"""The model registry: models, versions, aliases, lineage."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from hub.api.deps import (
    HEX_ID_PATTERN,
    MAX_ID,
    NAME_PATTERN,
    AliasPath,
    NamePath,
    SelectorPath,
    SessionDep,
    StoreDep,
)
from hub.api.public import AliasMovePublic, LineagePublic, ModelSummaryPublic
from hub.registry import models as registry
from hub.tables import JsonInt, ModelVersionPublic

router = APIRouter(prefix="/models", tags=["models"])


class VersionCreate(BaseModel):
    run_id: str = Field(description="a finished training run", pattern=HEX_ID_PATTERN)
    artifact: str = Field(
        default="model", description="the run artifact holding the model", pattern=NAME_PATTERN
    )
    description: str = ""


class AliasSet(BaseModel):
    version: JsonInt = Field(ge=1, le=MAX_ID)


@router.get("", response_model=list[ModelSummaryPublic])
def list_models(session: SessionDep) -> list[ModelSummaryPublic]:
    result = []
    for model in registry.list_models(session):
        versions = registry.list_versions(session, model_name=model.name)
        result.append(
            ModelSummaryPublic(
                name=model.name,
                description=model.description,
                created_at=model.created_at,
                latest_version=versions[-1].version if versions else None,
                aliases=registry.aliases_of(session, model_name=model.name),
            )
        )
    return result


@router.get("/{name}/versions", response_model=list[ModelVersionPublic])
def versions(name: NamePath, session: SessionDep) -> list[ModelVersionPublic]:
    found = registry.list_versions(session, model_name=name)
    return [registry.to_public(session, v) for v in found]


@router.post("/{name}/versions", response_model=ModelVersionPublic, status_code=201)
def register(
    name: NamePath, body: VersionCreate, session: SessionDep, store: StoreDep
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
def show(name: NamePath, selector: SelectorPath, session: SessionDep) -> ModelVersionPublic:
    """``selector``: a version number, ``latest`` or an alias."""
    return registry.to_public(session, registry.get_version(session, ref=f"{name}@{selector}"))


@router.get("/{name}/versions/{selector}/lineage", response_model=LineagePublic)
def lineage(name: NamePath, selector: SelectorPath, session: SessionDep) -> LineagePublic:
    return LineagePublic.model_validate(registry.lineage(session, ref=f"{name}@{selector}"))


@router.put("/{name}/aliases/{alias}", response_model=ModelVersionPublic)
def set_alias(
    name: NamePath, alias: AliasPath, body: AliasSet, session: SessionDep
) -> ModelVersionPublic:
    registry.set_alias(session, model_name=name, alias=alias, version=body.version)
    return registry.to_public(session, registry.get_version(session, ref=f"{name}@{alias}"))


@router.delete("/{name}/aliases/{alias}", status_code=204, response_model=None)
def delete_alias(name: NamePath, alias: AliasPath, session: SessionDep) -> None:
    registry.delete_alias(session, model_name=name, alias=alias)


@router.get("/{name}/aliases/history", response_model=list[AliasMovePublic])
def alias_history(name: NamePath, session: SessionDep) -> list[AliasMovePublic]:
    rows = registry.alias_history(session, model_name=name)
    return [AliasMovePublic.model_validate(r, from_attributes=True) for r in rows]
