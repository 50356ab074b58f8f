"""Turns trained models into signed bundles; its bundle reader is what agents use.

Importing this package must stay light (no torch, no onnx, not even lazily): agents
depend on it. It exports the bundle format (:mod:`model_packager.bundle`) and Ed25519
signing (:mod:`model_packager.signing`); the heavy export/quantize code lives in its own
modules, imported explicitly by the hub.
"""

from model_packager.bundle import (
    DEFAULT_MAX_TOTAL_BYTES,
    FORMAT,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    BundleCorrupt,
    BundleError,
    BundleFormatError,
    BundleInfo,
    BundleSignatureError,
    PublicKeyLike,
    VerifiedBundle,
    VerifyResult,
    canonical_json,
    file_digest,
    open_bundle,
    signer_key_id,
    verify_bundle,
    write_bundle,
)
from model_packager.signing import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
    InsecureKeyFileError,
    KeyMaterialError,
    generate_private_key,
    key_id,
    load_or_create_private_key,
    load_private_key,
    load_public_key,
    public_key_bytes,
    public_key_pem,
)

__all__ = [
    "DEFAULT_MAX_TOTAL_BYTES",
    "FORMAT",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "BundleCorrupt",
    "BundleError",
    "BundleFormatError",
    "BundleInfo",
    "BundleSignatureError",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "InsecureKeyFileError",
    "KeyMaterialError",
    "PublicKeyLike",
    "VerifiedBundle",
    "VerifyResult",
    "canonical_json",
    "file_digest",
    "generate_private_key",
    "key_id",
    "load_or_create_private_key",
    "load_private_key",
    "load_public_key",
    "open_bundle",
    "public_key_bytes",
    "public_key_pem",
    "signer_key_id",
    "verify_bundle",
    "write_bundle",
]
