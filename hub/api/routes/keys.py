"""The bundle signing key: which one is current, who trusts it, and rotation (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from hub.api.deps import ContextDep
from hub.api.public import KeyRotationPublic, KeysPublic, PublicKeyPublic
from hub.security.key_rotation import current_public_key, key_status
from hub.security.keys import rotate_bundle_key

router = APIRouter(prefix="/keys", tags=["keys"])


@router.get("", response_model=KeysPublic)
def show_keys(context: ContextDep) -> KeysPublic:
    """The current key id, the retired ones, and the key each device reports trusting."""
    return KeysPublic.model_validate(key_status(context.engine, context.settings.data_dir))


@router.get("/public", response_model=PublicKeyPublic)
def public_key(context: ContextDep) -> PublicKeyPublic:
    """The current bundle-signing public key (PEM): what devices verify bundles with."""
    kid, pem = current_public_key(context.settings.data_dir)
    return PublicKeyPublic(key_id=kid, pem=pem)


@router.post("/rotate", response_model=KeyRotationPublic)
def rotate_keys(request: Request, context: ContextDep) -> KeyRotationPublic:
    """A new bundle signing key; the old one is kept (retired) to sign the ``RotateKey``
    commands that ``hub serve`` sends to every device still trusting it."""
    rotation = rotate_bundle_key(context.settings.data_dir)
    sender = getattr(request.app.state, "key_rotation", None)
    if sender is not None:
        sender.nudge()  # send now, not at the next tick
    return KeyRotationPublic(
        key_id=rotation.new_key_id,
        retired_key_id=rotation.old_key_id,
        public_key=rotation.new_public_key.hex(),
        notifying_devices=sender is not None,
    )
