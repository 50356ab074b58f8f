"""edge_agent._slotmeta: slot.json written with a cached manifest encoding is byte for byte
what ``json.dumps(sort_keys=True, compact)`` writes, and a status change keeps every field."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from edge_agent._manifests import encoded_manifest, shared_manifest
from edge_agent._slotmeta import META_NAME, _encode_meta, parse_slot, write_json

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


@given(
    manifest=st.dictionaries(st.text(max_size=8), _json, max_size=5),
    model=st.text(max_size=10),
    version=st.integers() | st.text(max_size=5),
    status=st.sampled_from(["ready", "serving", "probation", "failed"]),
    installed_at=st.integers(min_value=0),
)
def test_encoded_meta_equals_plain_json(
    manifest: dict[str, object], model: str, version: int | str, status: str, installed_at: int
) -> None:
    meta = {
        "model": model,
        "version": version,
        "digest": "sha256:" + "0" * 64,
        "status": status,
        "installed_at": installed_at,
        "manifest": manifest,
    }
    plain = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    assert _encode_meta(meta) == plain
    assert _encode_meta(meta) == plain  # the cached encoding, the second time
    assert _encode_meta({**meta, "extra": 1}) == json.dumps(
        {**meta, "extra": 1}, sort_keys=True, separators=(",", ":")
    )


def test_cache_is_by_object_not_by_content(tmp_path: Path) -> None:
    first = {"files": {"model.onnx": {"size": 1, "digest": "sha256:" + "1" * 64}}}
    assert encoded_manifest(first) == json.dumps(first, sort_keys=True, separators=(",", ":"))
    other: dict[str, object] = {"files": {}}
    assert encoded_manifest(other) == '{"files":{}}'
    slot = tmp_path / "a"
    slot.mkdir()
    digest = "sha256:" + "2" * 64
    meta = {
        "model": "m",
        "version": 3,
        "digest": digest,
        "status": "ready",
        "installed_at": 5,
        "manifest": shared_manifest(digest, first),
    }
    write_json(slot / META_NAME, meta)
    info = parse_slot("a", slot)
    assert info is not None and info.manifest == first and info.version == 3
    assert json.loads((slot / META_NAME).read_bytes()) == meta
