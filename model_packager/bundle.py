"""Signed model bundles: the format, the writer and the verifying reader.

Format ``edgeloop.bundle/1`` (full description in docs/BUNDLE.md). A bundle is one ZIP
file in a single canonical encoding (see :mod:`model_packager._format`): members stored
uncompressed, fixed timestamps and modes, no extra fields, comments or ZIP64, in the order
``manifest.json``, ``signature.json``, then the payload files sorted by name. The same
inputs always give the same bytes, and the reader refuses any other encoding, so no byte of
a bundle can change without the bundle being refused.

* ``manifest.json``: canonical JSON (sorted keys, no whitespace, UTF-8) with ``format``
  (``"edgeloop.bundle/1"``), ``name``, ``version``, ``created_at`` and ``files`` (name ->
  ``{"digest": "sha256:<hex>", "size": bytes}``), plus whatever else the packager records
  (input/output spec, variants, quantization, metrics, reference profile, lineage).
* ``signature.json``: canonical JSON ``{"algorithm": "ed25519", "key_id": ...,
  "signature": base64}``; the signature is over the exact ``manifest.json`` bytes.
* payload files (``model.int8.onnx``, ``model.fp32.tflite``, ``samples.npz``, ...): plain
  names (ASCII letters, digits, ``.``, ``_``, ``-``), no directories.

:func:`write_bundle` writes one (atomically). :func:`open_bundle` checks everything
before it returns a :class:`VerifiedBundle` (the zip structure, exactly the listed members,
safe names, size limits, the signature against the hub's key, every digest and the
canonical encoding); its :meth:`VerifiedBundle.extract_to` is how an agent installs a
bundle into a model slot. :func:`verify_bundle` reports instead of raising, and
:func:`signer_key_id` only reads (unverified) which key a bundle names. Failures raise
:class:`BundleCorrupt`, :class:`BundleSignatureError` or :class:`BundleFormatError` (all
:class:`BundleError`). Nothing here imports torch or onnx: edge agents use it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from model_packager import _format as fmt
from model_packager._format import (
    CHUNK,
    DEFAULT_MAX_TOTAL_BYTES,
    FORMAT,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    BundleCorrupt,
    BundleError,
    BundleFormatError,
    BundleSignatureError,
    canonical_json,
    check_file_names,
    check_manifest,
    file_digest,
)
from model_packager._reader import PublicKeyLike, VerifiedBundle, as_public_key, open_bundle
from model_packager.files import fsync_dir
from model_packager.signing import Ed25519PrivateKey, key_id

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
    "PublicKeyLike",
    "VerifiedBundle",
    "VerifyResult",
    "canonical_json",
    "file_digest",
    "open_bundle",
    "signer_key_id",
    "verify_bundle",
    "write_bundle",
]


@dataclass(frozen=True, slots=True)
class BundleInfo:
    """What :func:`write_bundle` wrote."""

    path: Path
    digest: str  # sha256 of the whole bundle file
    size: int
    manifest: dict[str, Any]


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of :func:`verify_bundle`; ``digest`` is the file's, even when invalid."""

    valid: bool
    reason: str
    manifest: dict[str, Any] | None
    digest: str | None


def verify_bundle(
    path: Path, *, public_key: PublicKeyLike, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
) -> VerifyResult:
    """Like :func:`open_bundle` but reports instead of raising (a bad *key* still raises)."""
    public = as_public_key(public_key)
    try:
        bundle = open_bundle(path, public_key=public, max_total_bytes=max_total_bytes)
    except BundleError as exc:
        digest: str | None = None
        try:
            if Path(path).is_file():  # never open a FIFO or device
                digest = file_digest(Path(path))
        except OSError:
            pass
        return VerifyResult(valid=False, reason=str(exc), manifest=None, digest=digest)
    reason = f"ok: signed by {bundle.key_id}; {len(bundle.files)} file(s) verified"
    return VerifyResult(valid=True, reason=reason, manifest=bundle.manifest, digest=bundle.digest)


def signer_key_id(fh: BinaryIO) -> str:
    """The ``key_id`` that a bundle's ``signature.json`` names, read WITHOUT verifying it.

    A hint for picking a key (a hub refusing to roll out a bundle signed before a key
    rotation, say), never a reason to trust: only :func:`open_bundle` checks the signature.
    ``fh``: the bundle, seekable. Raises :class:`BundleError` when no key id can be read.
    """
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(0, size - fmt.END.size))
    end = fmt.parse_end_record(fh.read(fmt.END.size), file_size=size, starts_like_zip=True)
    if end.cd_size > fmt.MAX_CENTRAL_DIRECTORY_BYTES:
        raise BundleFormatError(f"the central directory is {end.cd_size} bytes: too large")
    fh.seek(end.cd_offset)
    records = fmt.parse_central_directory(fh.read(end.cd_size), count=end.count)
    found = [r for r in records if r.name == SIGNATURE_NAME.encode("ascii")]
    if not found:
        raise BundleSignatureError("no signature.json: the bundle is unsigned")
    if found[0].size > fmt.MAX_SIGNATURE_BYTES:
        raise BundleSignatureError(f"signature.json is over {fmt.MAX_SIGNATURE_BYTES} bytes")
    fh.seek(found[0].offset)
    name_len, extra_len = fmt.parse_local_header(fh.read(fmt.LOCAL.size))
    fh.seek(found[0].offset + fmt.LOCAL.size + name_len + extra_len)
    try:
        signer = json.loads(fh.read(found[0].size))["key_id"]
    except (ValueError, KeyError, TypeError):
        signer = None
    if not isinstance(signer, str):
        raise BundleSignatureError("signature.json names no key_id")
    return signer


@dataclass(frozen=True, slots=True)
class _Source:
    name: str
    data: bytes | None
    path: Path | None
    size: int
    sha256: str
    crc: int


def _from_bytes(name: str, data: bytes) -> _Source:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return _Source(name, data, None, len(data), digest, zlib.crc32(data))


def _chunks(source: _Source) -> Iterator[bytes]:
    if source.data is not None:
        yield source.data
        return
    assert source.path is not None
    with source.path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def _scan(name: str, value: object) -> _Source:
    if isinstance(value, bytes | bytearray | memoryview):
        return _from_bytes(name, bytes(value))
    if not isinstance(value, Path):
        raise BundleFormatError(
            f"file {name!r} must be bytes or a Path, not {type(value).__name__}"
        )
    if not value.is_file():
        raise BundleFormatError(f"file {name!r}: {value} is not a regular file")
    sha, crc, size = hashlib.sha256(), 0, 0
    for chunk in _chunks(_Source(name, None, value, 0, "", 0)):
        sha.update(chunk)
        crc = zlib.crc32(chunk, crc)
        size += len(chunk)
    return _Source(name, None, value, size, "sha256:" + sha.hexdigest(), crc)


def _build_manifest(manifest: Mapping[str, Any], sources: list[_Source]) -> bytes:
    if not isinstance(manifest, Mapping):
        raise BundleFormatError("manifest must be a mapping")
    result = dict(manifest)
    if "files" in result:
        raise BundleFormatError("manifest['files'] is filled in by write_bundle; do not pass it")
    if result.setdefault("format", FORMAT) != FORMAT:
        raise BundleFormatError(f"manifest['format'] must be {FORMAT!r}, got {result['format']!r}")
    result.setdefault("created_at", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    result["files"] = {s.name: {"digest": s.sha256, "size": s.size} for s in sources}
    check_manifest(result)
    try:
        return canonical_json(result)
    except (TypeError, ValueError) as exc:
        raise BundleFormatError(f"manifest is not JSON-serialisable: {exc}") from exc


def write_bundle(
    path: Path,
    *,
    manifest: Mapping[str, Any],
    files: Mapping[str, bytes | Path],
    signing_key: Ed25519PrivateKey,
) -> BundleInfo:
    """Write a signed bundle to ``path`` atomically (temp file + ``os.replace``).

    ``manifest`` needs ``name`` and ``version``; ``format`` and ``created_at`` (UTC, now)
    are filled in when missing and ``files`` always is. ``files`` maps plain names to
    bytes or a file to copy. The same inputs (``created_at`` included) and key give
    byte-identical bundles.
    """
    path = Path(path)
    sources = [_scan(name, files[name]) for name in check_file_names(files.keys())]
    manifest_bytes = _build_manifest(manifest, sources)
    signature = {
        "algorithm": "ed25519",
        "key_id": key_id(signing_key),
        "signature": base64.b64encode(signing_key.sign(manifest_bytes)).decode("ascii"),
    }
    members = [
        _from_bytes(MANIFEST_NAME, manifest_bytes),
        _from_bytes(SIGNATURE_NAME, canonical_json(signature)),
        *sources,
    ]
    total = fmt.END.size + sum(
        fmt.LOCAL.size + fmt.CENTRAL.size + 2 * len(m.name) + m.size for m in members
    )
    if total >= fmt.LIMIT_32:
        raise BundleFormatError(f"{total} bytes is too large: {FORMAT} has no ZIP64 (4 GiB)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            digest, size = _write_members(fh, members)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return BundleInfo(path=path, digest=digest, size=size, manifest=json.loads(manifest_bytes))


def _write_members(fh: BinaryIO, members: list[_Source]) -> tuple[str, int]:
    whole, pos = hashlib.sha256(), 0

    def put(data: bytes) -> None:
        nonlocal pos
        fh.write(data)
        whole.update(data)
        pos += len(data)

    central = []
    for member in members:
        name = member.name.encode("ascii")
        central.append(fmt.central_entry(name, crc=member.crc, size=member.size, offset=pos))
        put(fmt.local_header(name, crc=member.crc, size=member.size))
        sha = hashlib.sha256()
        for chunk in _chunks(member):
            sha.update(chunk)
            put(chunk)
        if "sha256:" + sha.hexdigest() != member.sha256:
            raise BundleError(f"{member.path} changed while the bundle was being written")
    cd_offset = pos
    for entry in central:
        put(entry)
    put(fmt.end_record(count=len(members), cd_size=pos - cd_offset, cd_offset=cd_offset))
    return "sha256:" + whole.hexdigest(), pos
