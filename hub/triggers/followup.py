"""What happens after a triggered run registers a version: package it, start a canary.

A :class:`Followup` is handed to ``run_triggers`` by whoever runs the triggers (``hub
serve`` builds :class:`PackageAndCanary` with the hub's signing key and gRPC endpoint), so
the trigger code needs neither keys nor the rollout controller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine

from hub.core.artifacts import ArtifactStore

DEFAULT_CANARY_PHASES = "1,50%,100%"


@dataclass(frozen=True, kw_only=True)
class FollowupResult:
    bundle_digest: str | None
    rollout_id: str | None
    summary: str


class Followup(Protocol):
    def __call__(
        self,
        engine: Engine,
        store: ArtifactStore,
        *,
        model: str,
        version: int,
        canary: Mapping[str, Any],
    ) -> FollowupResult: ...


@dataclass(frozen=True, kw_only=True)
class PackageAndCanary:
    """Package ``model@version`` (int8 ONNX, TFLite when installed) and roll it out.

    ``signing_key``: the key, or a function returning the current one (a long-running hub
    passes one, so that bundles packaged after a key rotation carry the new key)."""

    signing_key: Ed25519PrivateKey | Callable[[], Ed25519PrivateKey]

    def __call__(
        self,
        engine: Engine,
        store: ArtifactStore,
        *,
        model: str,
        version: int,
        canary: Mapping[str, Any],
    ) -> FollowupResult:
        from hub.core.db import session_scope
        from hub.packaging.service import PackageOptions, package
        from hub.rollouts import service as rollouts
        from hub.security.keys import BundleSignerCheck
        from model_packager.signing import key_id

        formats = canary.get("formats")
        key = self._key()
        options = PackageOptions(formats=tuple(formats)) if formats else PackageOptions()
        packaged = package(
            engine, store, ref=f"{model}@{version}", signing_key=key, options=options
        )
        settings = {k: v for k, v in canary.items() if k not in {"selector", "phases", "formats"}}
        # the key may have been rotated while packaging: then the canary is refused (409)
        check = BundleSignerCheck(store=store, current_key_id=key_id(self._key()))
        with session_scope(engine) as s:
            rollout = rollouts.create_rollout(
                s,
                model=model,
                version=str(version),
                selector=str(canary["selector"]),
                phases=str(canary.get("phases") or DEFAULT_CANARY_PHASES),
                signer_check=check,
                **settings,
            )
            rollout_id = str(rollout.id)
        return FollowupResult(
            bundle_digest=packaged.bundle.digest,
            rollout_id=rollout_id,
            summary=f"packaged {packaged.bundle.digest[:19]}, canary rollout {rollout_id}",
        )

    def _key(self) -> Ed25519PrivateKey:
        return self.signing_key() if callable(self.signing_key) else self.signing_key
