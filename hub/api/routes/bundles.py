"""Bundles registered against model versions (the packager writes them)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from sqlmodel import select

from hub.api.deps import NamePath, SelectorPath, SessionDep, StoreDep
from hub.core.errors import NotFound
from hub.registry import models as registry
from hub.tables import Bundle, BundlePublic, ModelVersion

version_bundles = APIRouter(prefix="/models", tags=["bundles"])
bundle_files = APIRouter(prefix="/bundles", tags=["bundles"])


def _public(bundle: Bundle, version: ModelVersion) -> BundlePublic:
    return BundlePublic.model_validate(
        bundle, update={"model": f"{version.model_name}@{version.version}"}
    )


def _find(session: SessionDep, digest: str) -> Bundle:
    bundle = session.exec(select(Bundle).where(Bundle.digest == digest)).first()
    if bundle is None:
        raise NotFound(f"no bundle {digest!r}")
    return bundle


@version_bundles.get("/{name}/versions/{selector}/bundles", response_model=list[BundlePublic])
def of_version(name: NamePath, selector: SelectorPath, session: SessionDep) -> list[BundlePublic]:
    version = registry.get_version(session, ref=f"{name}@{selector}")
    return [_public(b, version) for b in registry.bundles_of(session, model_version=version)]


@bundle_files.get("/{digest}", response_model=BundlePublic)
def show(digest: str, session: SessionDep) -> BundlePublic:
    bundle = _find(session, digest)
    version = session.get(ModelVersion, bundle.model_version_id)
    assert version is not None
    return _public(bundle, version)


@bundle_files.get(
    "/{digest}/file",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
    response_model=None,
)
def download(digest: str, session: SessionDep, store: StoreDep) -> Response:
    bundle = _find(session, digest)
    return Response(store.get_bytes(bundle.digest), media_type="application/octet-stream")


#: the module's routes, one router per path root
router = APIRouter()
router.include_router(version_bundles)
router.include_router(bundle_files)
