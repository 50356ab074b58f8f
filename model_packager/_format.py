"""The bytes of ``edgeloop.bundle/1``: errors, names, canonical JSON, manifest rules, ZIP.

Bundles use one ZIP encoding, shared by the writer and the strict reader. Members are
stored (no compression), with no extra fields, comments, data descriptors or ZIP64
records, a fixed 1980-01-01 00:00 timestamp and regular-file mode 0644. Because the writer
builds every header with :func:`local_header`, :func:`central_entry` and
:func:`end_record`, the reader demands that each header byte in a bundle is exactly what
these functions produce: together with the CRC-32 and SHA-256 checks of the data, no byte
of a bundle file can change without the bundle being refused. The result is an ordinary
ZIP that any tool (``unzip``, :mod:`zipfile`) reads.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# moved to the public model_packager.files; kept importable here for older callers
from model_packager.errors import PackagerError

FORMAT = "edgeloop.bundle/1"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "signature.json"
RESERVED = frozenset({MANIFEST_NAME, SIGNATURE_NAME})
DEFAULT_MAX_TOTAL_BYTES = 2 * 1024**3
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_SIGNATURE_BYTES = 4096
MAX_CENTRAL_DIRECTORY_BYTES = 1024 * 1024
MAX_MEMBERS = 1024
CHUNK = 1024 * 1024
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class BundleError(PackagerError):
    """A bundle that cannot be written or trusted; the message says what is wrong."""


class BundleCorrupt(BundleError):
    """Not a zip, truncated, or bytes that do not match their digests or encoding."""


class BundleSignatureError(BundleError):
    """Missing or malformed signature, signed by another key, or manifest changed."""


class BundleFormatError(BundleError, ValueError):
    """A manifest or member list that breaks the format (names, members, sizes, fields)."""


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN/Infinity."""
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a payload file name (``None`` when it can)."""
    if not name:
        return "is empty"
    if "/" in name or "\\" in name:
        return "has a directory part (path traversal / subdirectories are not allowed)"
    if name in {".", ".."} or name.startswith("."):
        return "is a relative path component or a hidden file"
    if not NAME_RE.fullmatch(name):
        return (
            "must be 1-128 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return None


def check_file_names(names: Iterable[object]) -> list[str]:
    """Validate payload file names (also case-insensitively unique); return them sorted."""
    seen: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str):
            raise BundleFormatError(f"file name {name!r} is not a string")
        if name.lower() in RESERVED:
            raise BundleFormatError(f"file name {name!r} is reserved for the bundle itself")
        if problem := name_problem(name):
            raise BundleFormatError(f"file name {name!r} {problem}")
        if name.lower() in seen:
            raise BundleFormatError(
                f"file names {seen[name.lower()]!r} and {name!r} differ only in case"
            )
        seen[name.lower()] = name
    if not seen:
        raise BundleFormatError("a bundle needs at least one file")
    return sorted(seen.values())


def check_manifest(manifest: object) -> dict[str, Any]:
    """The fields every manifest must have, with the right types."""
    if not isinstance(manifest, dict):
        raise BundleFormatError("manifest.json must hold a JSON object")
    if manifest.get("format") != FORMAT:
        raise BundleFormatError(
            f"unsupported bundle format {manifest.get('format')!r}; this reader reads {FORMAT!r}"
        )
    name, version = manifest.get("name"), manifest.get("version")
    if not isinstance(name, str) or not name:
        raise BundleFormatError("manifest 'name' must be a non-empty string")
    if isinstance(version, bool) or not isinstance(version, int | str) or version == "":
        raise BundleFormatError("manifest 'version' must be an integer or a non-empty string")
    if not isinstance(manifest.get("created_at"), str):
        raise BundleFormatError("manifest 'created_at' must be a string (ISO 8601, UTC)")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleFormatError("manifest 'files' must be a non-empty object")
    check_file_names(files)
    for file, spec in files.items():
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("digest"), str)
            or not DIGEST_RE.fullmatch(spec["digest"])
            or isinstance(spec.get("size"), bool)
            or not isinstance(spec.get("size"), int)
            or spec["size"] < 0
        ):
            raise BundleFormatError(
                f"manifest entry for {file!r} must be {{'digest': 'sha256:<64 hex>', 'size': n}}"
            )
    return manifest


# ZIP encoding ---------------------------------------------------------------------------

LOCAL_SIG = 0x04034B50
CENTRAL_SIG = 0x02014B50
END_SIG = 0x06054B50
LOCAL = struct.Struct("<IHHHHHIIIHH")  # 30 bytes + name + extra
CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # 46 bytes + name + extra + comment
END = struct.Struct("<IHHHHIIH")  # 22 bytes + comment

VERSION_NEEDED = 20
VERSION_MADE_BY = (3 << 8) | VERSION_NEEDED  # Unix, ZIP 2.0
DOS_TIME = 0
DOS_DATE = (1 << 5) | 1  # 1980-01-01
EXTERNAL_ATTR = (stat.S_IFREG | 0o644) << 16
FLAG_ENCRYPTED = 0x1
METHOD_STORED = 0
LIMIT_32 = 0xFFFFFFFF  # no ZIP64: every size and offset must stay below this


def local_header(name: bytes, *, crc: int, size: int) -> bytes:
    return (
        LOCAL.pack(
            LOCAL_SIG,
            VERSION_NEEDED,
            0,
            METHOD_STORED,
            DOS_TIME,
            DOS_DATE,
            crc,
            size,
            size,
            len(name),
            0,
        )
        + name
    )


def central_entry(name: bytes, *, crc: int, size: int, offset: int) -> bytes:
    return (
        CENTRAL.pack(
            CENTRAL_SIG,
            VERSION_MADE_BY,
            VERSION_NEEDED,
            0,
            METHOD_STORED,
            DOS_TIME,
            DOS_DATE,
            crc,
            size,
            size,
            len(name),
            0,
            0,
            0,
            0,
            EXTERNAL_ATTR,
            offset,
        )
        + name
    )


def end_record(*, count: int, cd_size: int, cd_offset: int) -> bytes:
    return END.pack(END_SIG, 0, 0, count, count, cd_size, cd_offset, 0)


@dataclass(frozen=True, slots=True)
class CentralRecord:
    """One central directory entry as found in the file (not yet trusted)."""

    name: bytes
    flags: int
    method: int
    crc: int
    compressed_size: int
    size: int
    external_attr: int
    offset: int
    raw: bytes

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.external_attr >> 16)


@dataclass(frozen=True, slots=True)
class EndRecord:
    count: int
    cd_size: int
    cd_offset: int
    raw: bytes


def parse_end_record(tail: bytes, *, file_size: int, starts_like_zip: bool) -> EndRecord:
    """Parse the end-of-central-directory record, which must be the last 22 bytes."""
    if file_size < END.size:
        raise BundleCorrupt(f"file is {file_size} bytes, too short to be a zip (truncated?)")
    sig, disk, cd_disk, on_disk, count, cd_size, cd_offset, comment = END.unpack(tail)
    if sig != END_SIG:
        if starts_like_zip:
            raise BundleCorrupt(
                "no ZIP end record at the end of the file: truncated, or bytes appended"
            )
        raise BundleCorrupt("not a zip file (no ZIP end record)")
    if comment:
        raise BundleCorrupt("the ZIP end record has a comment or trailing bytes")
    if disk or cd_disk or on_disk != count:
        raise BundleCorrupt("multi-disk ZIP archives are not supported")
    if cd_offset + cd_size != file_size - END.size:
        raise BundleCorrupt(
            "the central directory does not end where the end record begins "
            "(truncated, or bytes inserted)"
        )
    return EndRecord(count=count, cd_size=cd_size, cd_offset=cd_offset, raw=tail)


def parse_central_directory(data: bytes, *, count: int) -> list[CentralRecord]:
    """Parse ``count`` central directory entries that must fill ``data`` exactly."""
    records: list[CentralRecord] = []
    pos = 0
    for index in range(count):
        if pos + CENTRAL.size > len(data):
            raise BundleCorrupt(f"central directory entry {index} is truncated")
        fields = CENTRAL.unpack_from(data, pos)
        if fields[0] != CENTRAL_SIG:
            raise BundleCorrupt(f"central directory entry {index} has a bad signature")
        flags, method, crc, csize, size = fields[3], fields[4], fields[7], fields[8], fields[9]
        name_len, extra_len, comment_len = fields[10], fields[11], fields[12]
        end = pos + CENTRAL.size + name_len + extra_len + comment_len
        if end > len(data):
            raise BundleCorrupt(f"central directory entry {index} runs past the directory")
        name = data[pos + CENTRAL.size : pos + CENTRAL.size + name_len]
        records.append(
            CentralRecord(
                name=name,
                flags=flags,
                method=method,
                crc=crc,
                compressed_size=csize,
                size=size,
                external_attr=fields[15],
                offset=fields[16],
                raw=data[pos:end],
            )
        )
        pos = end
    if pos != len(data):
        raise BundleCorrupt("the central directory has bytes after its last entry")
    return records


def parse_local_header(header: bytes) -> tuple[int, int]:
    """The name and extra-field lengths from a 30-byte local file header."""
    if len(header) < LOCAL.size:
        raise BundleCorrupt("local file header is truncated")
    fields = LOCAL.unpack(header)
    if fields[0] != LOCAL_SIG:
        raise BundleCorrupt("bad local file header signature")
    return fields[9], fields[10]
