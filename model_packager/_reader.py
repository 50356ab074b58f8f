"""The verifying bundle reader: nothing usable comes out before every check has passed.

Import it through :mod:`model_packager.bundle` (or the package); edge agents use it, so
it imports neither torch nor onnx.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature

from model_packager import _format as f
from model_packager._format import (
    BundleCorrupt,
    BundleError,
    BundleFormatError,
    BundleSignatureError,
)
from model_packager.files import fsync_dir
from model_packager.signing import Ed25519PublicKey, key_id, load_public_key

PublicKeyLike = Ed25519PublicKey | bytes | Path


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    data_offset: int
    size: int
    sha256: str
    crc: int
    local_raw: bytes


class VerifiedBundle:
    """A bundle whose signature, member list and digests have all been checked.

    :meth:`read` and :meth:`extract_to` re-read the file and re-check each file's digest
    as they go, so a bundle changed on disk after :func:`open_bundle` is refused rather
    than half-trusted.
    """

    def __init__(
        self,
        *,
        path: Path,
        manifest: dict[str, Any],
        manifest_bytes: bytes,
        digest: str,
        size: int,
        signer: str,
        files: Mapping[str, _Entry],
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.manifest_bytes = manifest_bytes
        self.digest = digest
        self.size = size
        self.key_id = signer
        self._files = dict(files)

    def __repr__(self) -> str:
        return f"VerifiedBundle({self.name}@{self.version}, {self.digest}, {self.path})"

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> int | str:
        version: int | str = self.manifest["version"]
        return version

    @property
    def files(self) -> dict[str, int]:
        """Payload file names and sizes (``manifest.json``/``signature.json`` excluded)."""
        return {name: entry.size for name, entry in sorted(self._files.items())}

    def _entry(self, name: str) -> _Entry:
        try:
            return self._files[name]
        except KeyError:
            raise KeyError(
                f"{name!r} is not a file of this bundle; files: {sorted(self._files)}"
            ) from None

    def _stream(self, entry: _Entry) -> Iterator[bytes]:
        sha, remaining = hashlib.sha256(), entry.size
        with self.path.open("rb") as fh:
            fh.seek(entry.data_offset)
            while remaining:
                chunk = fh.read(min(f.CHUNK, remaining))
                if not chunk:
                    break
                sha.update(chunk)
                remaining -= len(chunk)
                yield chunk
        if remaining or "sha256:" + sha.hexdigest() != entry.sha256:
            raise BundleCorrupt(f"{self.path} changed after it was verified ({entry.name} differs)")

    def read(self, name: str) -> bytes:
        """The bytes of one payload file (digest re-checked); ``KeyError`` if not listed."""
        entry = self._entry(name)
        return b"".join(self._stream(entry))

    def extract_to(self, directory: Path) -> dict[str, Path]:
        """Write every payload file into ``directory`` (created if needed); name -> path.

        This is how an agent installs a bundle into a model slot: each file is written
        to a temp file, its digest re-checked while copying, fsynced and renamed into
        place, then the directory is fsynced. Use a fresh, empty slot directory: on
        error the files written so far are removed and the exception propagates.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        try:
            for name, entry in sorted(self._files.items()):
                fd, tmp_name = tempfile.mkstemp(
                    dir=directory, prefix=f".{name}.", suffix=".partial"
                )
                tmp = Path(tmp_name)
                try:
                    with os.fdopen(fd, "wb") as out:
                        for chunk in self._stream(entry):
                            out.write(chunk)
                        out.flush()
                        os.fsync(out.fileno())
                    os.chmod(tmp, 0o644)
                    os.replace(tmp, directory / name)
                finally:
                    tmp.unlink(missing_ok=True)
                written[name] = directory / name
        except BaseException:
            for path in written.values():
                path.unlink(missing_ok=True)
            raise
        fsync_dir(directory)
        return written


def as_public_key(public_key: PublicKeyLike) -> Ed25519PublicKey:
    if isinstance(public_key, Ed25519PublicKey):
        return public_key
    if isinstance(public_key, bytes | Path):
        return load_public_key(public_key)
    raise TypeError(f"public_key must be Ed25519PublicKey, bytes or Path, not {type(public_key)}")


def _read_exact(fh: BinaryIO, size: int, *, what: str) -> bytes:
    data = fh.read(size)
    if len(data) != size:
        raise BundleCorrupt(f"the file ends inside {what} (truncated)")
    return data


def _check_records(records: list[f.CentralRecord], *, limit: int) -> list[str]:
    """Names, kinds and declared sizes of the members, before any data is read."""
    names: list[str] = []
    seen: set[str] = set()
    total = 0
    for record in records:
        try:
            name = record.name.decode("ascii")
        except UnicodeDecodeError:
            raise BundleFormatError(f"member name {record.name!r} is not ASCII") from None
        if name not in f.RESERVED and (problem := f.name_problem(name)):
            raise BundleFormatError(f"unsafe member name {name!r}: {problem}")
        if record.is_symlink:
            raise BundleFormatError(f"member {name!r} is a symbolic link")
        if name.lower() in seen:
            raise BundleFormatError(f"duplicate member {name!r}")
        seen.add(name.lower())
        if record.flags & f.FLAG_ENCRYPTED:
            raise BundleFormatError(f"member {name!r} is encrypted")
        if record.method != f.METHOD_STORED:
            raise BundleFormatError(
                f"member {name!r} is compressed (method {record.method}); "
                "bundle members are stored uncompressed"
            )
        if record.size > limit or record.compressed_size > limit:
            raise BundleFormatError(
                f"member {name!r} declares {max(record.size, record.compressed_size)} bytes, "
                f"over the {limit}-byte limit (zip bomb?)"
            )
        if record.compressed_size != record.size:
            raise BundleCorrupt(f"member {name!r}: stored size differs from its declared size")
        total += record.size
        names.append(name)
    if total > limit:
        raise BundleFormatError(
            f"members declare {total} bytes in all, over the {limit}-byte limit"
        )
    sizes = {n: r.size for n, r in zip(names, records, strict=True)}
    if f.MANIFEST_NAME not in sizes:
        raise BundleFormatError("no manifest.json: not an edgeloop bundle")
    if f.SIGNATURE_NAME not in sizes:
        raise BundleSignatureError("no signature.json: the bundle is unsigned")
    if sizes[f.MANIFEST_NAME] > f.MAX_MANIFEST_BYTES:
        raise BundleFormatError(f"manifest.json is over {f.MAX_MANIFEST_BYTES} bytes")
    if sizes[f.SIGNATURE_NAME] > f.MAX_SIGNATURE_BYTES:
        raise BundleSignatureError(f"signature.json is over {f.MAX_SIGNATURE_BYTES} bytes")
    return names


def _scan(
    fh: BinaryIO, records: list[f.CentralRecord], names: list[str], end: f.EndRecord
) -> tuple[dict[str, _Entry], dict[str, bytes], str]:
    """One pass over the whole file: members in offset order, then the directory."""
    whole, pos = hashlib.sha256(), 0
    entries: dict[str, _Entry] = {}
    kept: dict[str, bytes] = {}
    fh.seek(0)
    for record, name in sorted(zip(records, names, strict=True), key=lambda rn: rn[0].offset):
        if record.offset != pos:
            raise BundleCorrupt(
                f"member {name!r} is not where the previous one ends (offset {pos})"
            )
        header = _read_exact(fh, f.LOCAL.size, what=f"the header of {name!r}")
        name_len, extra_len = f.parse_local_header(header)
        rest = _read_exact(fh, name_len + extra_len, what=f"the header of {name!r}")
        if rest[:name_len] != record.name:
            raise BundleCorrupt(f"member {name!r}: local header names {rest[:name_len]!r}")
        whole.update(header + rest)
        sha, crc, remaining, parts = hashlib.sha256(), 0, record.size, []
        while remaining:
            chunk = _read_exact(fh, min(f.CHUNK, remaining), what=f"the data of {name!r}")
            whole.update(chunk)
            sha.update(chunk)
            crc = zlib.crc32(chunk, crc)
            remaining -= len(chunk)
            if name in f.RESERVED:
                parts.append(chunk)
        data_offset = pos + len(header) + len(rest)
        entries[name] = _Entry(
            name, data_offset, record.size, "sha256:" + sha.hexdigest(), crc, header + rest
        )
        if name in f.RESERVED:
            kept[name] = b"".join(parts)
        pos = data_offset + record.size
    if pos != end.cd_offset:
        raise BundleCorrupt(f"unexpected bytes between offset {pos} and the central directory")
    whole.update(_read_exact(fh, end.cd_size + f.END.size, what="the central directory"))
    return entries, kept, "sha256:" + whole.hexdigest()


def _check_signature(signature: bytes, manifest: bytes, public: Ed25519PublicKey) -> str:
    try:
        obj = json.loads(signature.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BundleSignatureError("signature.json is not valid JSON") from None
    if not isinstance(obj, dict) or set(obj) != {"algorithm", "key_id", "signature"}:
        raise BundleSignatureError("signature.json must hold exactly algorithm, key_id, signature")
    if obj["algorithm"] != "ed25519":
        raise BundleSignatureError(f"unsupported signature algorithm {obj['algorithm']!r}")
    text, signer = obj["signature"], obj["key_id"]
    if not isinstance(text, str) or not isinstance(signer, str):
        raise BundleSignatureError("signature.json: key_id and signature must be strings")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BundleSignatureError("signature.json: the signature is not base64") from None
    if len(raw) != 64 or base64.b64encode(raw).decode("ascii") != text:
        raise BundleSignatureError("signature.json: not a canonical base64 Ed25519 signature")
    if f.canonical_json(obj) != signature:
        raise BundleSignatureError("signature.json is not canonical JSON")
    expected = key_id(public)
    if signer != expected:
        raise BundleSignatureError(
            f"bundle is signed by key {signer}, not by the trusted key {expected} "
            "(wrong public key, or a bundle from another hub)"
        )
    try:
        public.verify(raw, manifest)
    except InvalidSignature:
        raise BundleSignatureError(
            f"signature does not verify with key {expected}: manifest.json was changed "
            "after signing, or the signature was forged"
        ) from None
    return signer


def _parse_manifest(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
        canonical = f.canonical_json(obj)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleFormatError(f"manifest.json is not valid JSON: {exc}") from None
    if canonical != data:
        raise BundleFormatError("manifest.json is not canonical JSON (sorted, compact, UTF-8)")
    return f.check_manifest(obj)


def _check_members(manifest: dict[str, Any], entries: dict[str, _Entry]) -> None:
    listed, present = set(manifest["files"]), set(entries) - f.RESERVED
    if extra := sorted(present - listed):
        raise BundleFormatError(f"unexpected member(s) not listed in the manifest: {extra}")
    if missing := sorted(listed - present):
        raise BundleFormatError(f"member(s) listed in the manifest are missing: {missing}")
    for name in sorted(listed):
        spec, entry = manifest["files"][name], entries[name]
        if entry.size != spec["size"]:
            raise BundleCorrupt(f"{name!r} is {entry.size} bytes; the manifest says {spec['size']}")
        if entry.sha256 != spec["digest"]:
            raise BundleCorrupt(f"{name!r} is corrupt: {entry.sha256} != manifest {spec['digest']}")


def _check_encoding(
    records: list[f.CentralRecord], names: list[str], entries: dict[str, _Entry], end: f.EndRecord
) -> None:
    """Every header byte must be what the writer produces (see :mod:`._format`)."""
    payload = sorted(n for n in names if n not in f.RESERVED)
    if names != [f.MANIFEST_NAME, f.SIGNATURE_NAME, *payload]:
        raise BundleCorrupt("members are not in canonical order (re-zipped or corrupted)")
    for record, name in zip(records, names, strict=True):
        entry = entries[name]
        if record.crc != entry.crc:
            raise BundleCorrupt(f"member {name!r}: CRC-32 does not match its data")
        if entry.local_raw != f.local_header(record.name, crc=entry.crc, size=entry.size):
            raise BundleCorrupt(f"member {name!r}: local header is not canonical (corrupted?)")
        if record.raw != f.central_entry(
            record.name, crc=entry.crc, size=entry.size, offset=record.offset
        ):
            raise BundleCorrupt(f"member {name!r}: directory entry is not canonical (corrupted?)")
    if end.raw != f.end_record(count=len(records), cd_size=end.cd_size, cd_offset=end.cd_offset):
        raise BundleCorrupt("the ZIP end record is not canonical (corrupted?)")


def _verify(fh: BinaryIO, path: Path, public: Ed25519PublicKey, limit: int) -> VerifiedBundle:
    info = os.fstat(fh.fileno())
    size = info.st_size
    if size > limit:
        raise BundleFormatError(f"bundle file is {size} bytes, over the {limit}-byte limit")
    head = fh.read(4)
    fh.seek(max(0, size - f.END.size))
    tail = fh.read(f.END.size)
    end = f.parse_end_record(tail, file_size=size, starts_like_zip=head == b"PK\x03\x04")
    if end.count > f.MAX_MEMBERS or end.cd_size > f.MAX_CENTRAL_DIRECTORY_BYTES:
        raise BundleFormatError(
            f"the bundle has {end.count} members in a {end.cd_size}-byte directory: too many"
        )
    fh.seek(end.cd_offset)
    directory = _read_exact(fh, end.cd_size, what="the central directory")
    records = f.parse_central_directory(directory, count=end.count)
    names = _check_records(records, limit=limit)
    entries, kept, digest = _scan(fh, records, names, end)
    signer = _check_signature(kept[f.SIGNATURE_NAME], kept[f.MANIFEST_NAME], public)
    manifest = _parse_manifest(kept[f.MANIFEST_NAME])
    _check_members(manifest, entries)
    _check_encoding(records, names, entries, end)
    return VerifiedBundle(
        path=path,
        manifest=manifest,
        manifest_bytes=kept[f.MANIFEST_NAME],
        digest=digest,
        size=size,
        signer=signer,
        files={n: e for n, e in entries.items() if n not in f.RESERVED},
    )


def open_bundle(
    path: Path, *, public_key: PublicKeyLike, max_total_bytes: int = f.DEFAULT_MAX_TOTAL_BYTES
) -> VerifiedBundle:
    """Open and fully verify a bundle; raises a :class:`BundleError` subclass if anything fails.

    ``public_key`` is the hub's key (raw 32 bytes, PEM, a file, or a key object);
    ``max_total_bytes`` bounds the file size and the sum of the members' declared sizes.
    """
    public = as_public_key(public_key)
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise BundleCorrupt(f"{path} is not a regular file")
        with path.open("rb") as fh:
            return _verify(fh, path, public, max_total_bytes)
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path}: {exc.strerror or exc}") from exc
