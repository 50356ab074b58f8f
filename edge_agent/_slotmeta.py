"""What a model slot holds on disk: ``slot.json`` (model, version, bundle digest, status,
install time, the bundle's manifest), written atomically, and the checks of a slot's files
against that manifest. :mod:`edge_agent._slots` moves slots around with these."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from edge_agent._manifests import encoded_manifest, shared_manifest
from model_packager.bundle import VerifiedBundle, file_digest
from model_packager.files import fsync_dir

__all__ = ["META_NAME", "STATUSES", "SlotInfo"]

#: ``ready``: installed, not serving; ``probation``/``serving``: active; ``failed``: never
#: activated again (only replaced by a new install).
STATUSES = frozenset({"ready", "serving", "probation", "failed"})
META_NAME = "slot.json"


@dataclasses.dataclass(frozen=True, slots=True)
class SlotInfo:
    """One installed slot, as recorded in its ``slot.json``."""

    name: str
    path: Path
    model: str
    version: int | str
    digest: str  # sha256 of the bundle file it was installed from
    status: str
    installed_at: int  # Unix epoch milliseconds
    manifest: dict[str, Any]


_META_KEYS = frozenset({"model", "version", "digest", "status", "installed_at", "manifest"})


def _encode_meta(data: dict[str, Any]) -> str:
    """``json.dumps(data, sort_keys=True, separators=(",", ":"))``, with a slot.json's
    manifest encoded once per (shared) manifest instead of at every status change."""
    if set(data) != _META_KEYS or not isinstance(data["manifest"], dict):
        # compact: the C encoder (indent= takes the pure-Python one, ~4x slower)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))
    head = json.dumps(
        {"digest": data["digest"], "installed_at": data["installed_at"]},
        sort_keys=True,
        separators=(",", ":"),
    )
    tail = json.dumps(
        {"model": data["model"], "status": data["status"], "version": data["version"]},
        sort_keys=True,
        separators=(",", ":"),
    )  # sorted keys: digest, installed_at, manifest, model, status, version
    return f'{head[:-1]},"manifest":{encoded_manifest(data["manifest"])},{tail[1:]}'


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``data`` (temp file, fsync, rename, fsync dir)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(_encode_meta(data).encode())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def parse_slot(name: str, path: Path) -> SlotInfo | None:
    """The slot at ``path`` from its ``slot.json``; ``None`` if missing or malformed."""
    try:
        meta = json.loads((path / META_NAME).read_bytes())
        fields = ("model", "version", "digest", "status", "installed_at", "manifest")
        info = SlotInfo(name, path, *(meta[field] for field in fields))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(info.digest, str) and isinstance(info.manifest, dict):
        info = dataclasses.replace(info, manifest=shared_manifest(info.digest, info.manifest))
    files = info.manifest.get("files") if isinstance(info.manifest, dict) else None
    texts_ok = isinstance(info.model, str) and isinstance(info.digest, str)
    numbers_ok = isinstance(info.version, int | str) and isinstance(info.installed_at, int)
    ok = texts_ok and numbers_ok and isinstance(files, dict) and info.status in STATUSES
    return info if ok else None


def usable(info: SlotInfo | None, digest: str) -> bool:
    """``info`` holds bundle ``digest``, not failed, with intact files."""
    if info is None or info.digest != digest or info.status == "failed":
        return False
    return file_problem(info, deep=True) is None


def fresh_meta(bundle: VerifiedBundle) -> dict[str, Any]:
    """The ``slot.json`` of a fresh install of ``bundle``."""
    return {
        "model": bundle.name,
        "version": bundle.version,
        "digest": bundle.digest,
        "status": "ready",
        "installed_at": int(time.time() * 1000),
        "manifest": shared_manifest(bundle.digest, bundle.manifest),
    }


def file_problem(info: SlotInfo, *, deep: bool) -> str | None:
    """Why the slot's files do not match its manifest (``None``: they do).

    ``deep`` also checks every file's SHA-256; otherwise only presence and sizes.
    """
    for file_name, entry in sorted(info.manifest["files"].items()):
        path = info.path / file_name
        try:
            if not path.is_file() or path.is_symlink():
                return f"{file_name} is missing"
            if path.stat().st_size != entry["size"]:
                return f"{file_name} has the wrong size"
            if deep and file_digest(path) != entry["digest"]:
                return f"{file_name} does not match its digest"
        except (OSError, KeyError, TypeError) as exc:
            return f"{file_name} cannot be checked: {exc}"
    return None
