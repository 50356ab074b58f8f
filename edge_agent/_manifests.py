"""Parsed bundle manifests shared within one process.

A simulated fleet runs thousands of agents in one process, all holding the same bundle; a
parsed manifest is ~70 KiB of Python objects and ~0.3 ms to parse. These caches hand out
one dict per distinct manifest. The dicts are shared: treat them as read-only.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any

_HELD = 16  # distinct manifests kept (a process rarely holds more than a few bundles)
_LOCK = threading.Lock()
_BY_DIGEST: OrderedDict[str, dict[str, Any]] = OrderedDict()
_BY_BYTES: OrderedDict[bytes, Any] = OrderedDict()
_ENCODED: OrderedDict[int, tuple[Any, str]] = OrderedDict()  # id -> (the dict, its JSON)


def shared_manifest(digest: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` (from a slot.json), or an *equal* one already held for bundle ``digest``."""
    with _LOCK:
        held = _BY_DIGEST.get(digest)
        if held is not None and held == manifest:
            _BY_DIGEST.move_to_end(digest)
            return held
        _BY_DIGEST[digest] = manifest
        while len(_BY_DIGEST) > _HELD:
            _BY_DIGEST.popitem(last=False)
        return manifest


def parsed_manifest(raw: bytes) -> Any:
    """``json.loads(raw)``, parsed once per distinct content (keyed by its sha256)."""
    key = hashlib.sha256(raw).digest()
    with _LOCK:
        if (held := _BY_BYTES.get(key)) is not None:
            _BY_BYTES.move_to_end(key)
            return held
    manifest = json.loads(raw)
    with _LOCK:
        _BY_BYTES[key] = manifest
        while len(_BY_BYTES) > _HELD:
            _BY_BYTES.popitem(last=False)
    return manifest


def encoded_manifest(manifest: dict[str, Any]) -> str:
    """``manifest`` as compact JSON with sorted keys, encoded once per manifest *object*
    (the shared, read-only dicts above: a slot's status changes rewrite its slot.json, and
    re-encoding an unchanged ~14 KB manifest each time was most of that cost)."""
    key = id(manifest)
    with _LOCK:
        held = _ENCODED.get(key)
        if held is not None and held[0] is manifest:
            _ENCODED.move_to_end(key)
            return held[1]
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    with _LOCK:
        _ENCODED[key] = (manifest, text)  # the reference keeps the id from being reused
        while len(_ENCODED) > _HELD:
            _ENCODED.popitem(last=False)
    return text
