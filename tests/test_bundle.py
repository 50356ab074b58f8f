"""Bundles: the format, signing, and a reader that refuses every kind of damage."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edgeloop_cli import bundles
from edgeloop_cli._client import Target
from hub.core.settings import load_settings
from hub.security.keys import bundle_signing_key
from model_packager import (
    BundleCorrupt,
    BundleError,
    BundleFormatError,
    BundleSignatureError,
    Ed25519PrivateKey,
    canonical_json,
    file_digest,
    generate_private_key,
    key_id,
    open_bundle,
    public_key_bytes,
    public_key_pem,
    verify_bundle,
    write_bundle,
)

MANIFEST: dict[str, Any] = {
    "name": "digits-mlp",
    "version": 3,
    "created_at": "2026-01-02T03:04:05Z",
    "input": {"name": "input", "dtype": "float32", "shape": [1, 64]},
    "output": {"labels": list(range(10))},
    "metrics": {"accuracy": 0.971},
    "lineage": {"dataset_version": "digits@1", "run_id": "r-1"},
}
FP32 = bytes(range(256)) * 3
INT8 = b"\x07" * 101


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return generate_private_key()


def _files(tmp_path: Path) -> dict[str, bytes | Path]:
    samples = tmp_path / "samples.npz"
    np.savez(samples, x=np.arange(12, dtype=np.float32))
    return {"model.fp32.onnx": FP32, "model.int8.onnx": INT8, "samples.npz": samples}


def _write(tmp_path: Path, key: Ed25519PrivateKey, name: str = "b.zip") -> Path:
    path = tmp_path / name
    write_bundle(path, manifest=MANIFEST, files=_files(tmp_path), signing_key=key)
    return path


def _members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def _zip(
    path: Path, members: list[tuple[str, bytes]], *, canonical: bool = True, link: str = ""
) -> Path:
    """Write members with zipfile; canonical=True reproduces the writer's encoding."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            if canonical:
                info.external_attr, info.create_system = 0o100644 << 16, 3
            if name == link:  # a symbolic link to the path `data` names
                info.external_attr = 0o120777 << 16
            z.writestr(info, data)
    return path


def _pub(key: Ed25519PrivateKey) -> bytes:
    return public_key_bytes(key)


def test_round_trip(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "out" / "digits.bundle"
    info = write_bundle(path, manifest=MANIFEST, files=_files(tmp_path), signing_key=key)
    assert info.path == path and info.size == path.stat().st_size
    assert info.digest == file_digest(path)
    vb = open_bundle(path, public_key=_pub(key))
    assert vb.digest == info.digest and vb.manifest == info.manifest
    assert vb.manifest["format"] == "edgeloop.bundle/1" and vb.key_id == key_id(key)
    for field in ("name", "version", "created_at", "input", "output", "metrics", "lineage"):
        assert vb.manifest[field] == MANIFEST[field]
    samples = (tmp_path / "samples.npz").read_bytes()
    int8_digest = "sha256:" + hashlib.sha256(INT8).hexdigest()
    assert vb.manifest["files"]["model.int8.onnx"] == {"digest": int8_digest, "size": 101}
    assert vb.manifest["files"]["samples.npz"]["digest"] == file_digest(tmp_path / "samples.npz")
    assert vb.files == {"model.fp32.onnx": 768, "model.int8.onnx": 101, "samples.npz": len(samples)}
    assert vb.read("model.fp32.onnx") == FP32 and vb.read("samples.npz") == samples
    paths = vb.extract_to(tmp_path / "slot")
    assert sorted(paths) == sorted(vb.files)
    assert paths["model.int8.onnx"].read_bytes() == INT8
    assert not [p for p in (tmp_path / "slot").iterdir() if p.name.startswith(".")]
    # An ordinary zip: manifest first, then the signature, then files by name.
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        assert z.namelist() == ["manifest.json", "signature.json", *sorted(vb.files)]
        assert z.read("manifest.json") == canonical_json(vb.manifest) == vb.manifest_bytes
        signature = json.loads(z.read("signature.json"))
    assert signature["algorithm"] == "ed25519" and signature["key_id"] == key_id(key)
    key.public_key().verify(base64.b64decode(signature["signature"]), vb.manifest_bytes)


def test_same_inputs_give_the_same_bytes(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    first, second = _write(tmp_path, key, "a.zip"), _write(tmp_path, key, "b.zip")
    assert first.read_bytes() == second.read_bytes()
    # zipfile with the same header fields reproduces the bundle byte for byte
    assert _zip(tmp_path / "c.zip", _members(first)).read_bytes() == first.read_bytes()
    undated = {k: v for k, v in MANIFEST.items() if k != "created_at"}
    info = write_bundle(
        tmp_path / "d.zip", manifest=undated, files={"m.onnx": b"1"}, signing_key=key
    )
    assert info.manifest["created_at"].endswith("Z") and len(info.manifest["created_at"]) == 20


BAD_NAMES = ["../evil.onnx", "/etc/passwd", "dir/model.onnx", "..", "a\\b", "", ".hidden"]
BAD_NAMES += ["manifest.json", "Signature.JSON", "nul\x00.onnx", "modèle.onnx"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_write_refuses_unsafe_names(tmp_path: Path, key: Ed25519PrivateKey, name: str) -> None:
    with pytest.raises(BundleFormatError, match="file name"):
        write_bundle(tmp_path / "b.zip", manifest=MANIFEST, files={name: b"x"}, signing_key=key)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_collisions_and_no_files(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    files: dict[str, bytes | Path] = {"Model.onnx": b"x", "model.onnx": b"y"}
    with pytest.raises(BundleFormatError, match="differ only in case"):
        write_bundle(tmp_path / "b.zip", manifest=MANIFEST, files=files, signing_key=key)
    with pytest.raises(BundleFormatError, match="at least one file"):
        write_bundle(tmp_path / "b.zip", manifest=MANIFEST, files={}, signing_key=key)
    with pytest.raises(BundleFormatError, match="not a regular file"):
        write_bundle(tmp_path / "b.zip", manifest=MANIFEST, files={"m": tmp_path}, signing_key=key)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"files": {}}, "filled in by write_bundle"),
        ({"name": ""}, "'name'"),
        ({"version": True}, "'version'"),
        ({"format": "other/2"}, "format"),
        ({"metrics": {"accuracy": np.float32(0.5)}}, "JSON-serialisable"),
        ({"metrics": {"accuracy": float("nan")}}, "JSON-serialisable"),
    ],
)
def test_write_refuses_bad_manifests(
    tmp_path: Path, key: Ed25519PrivateKey, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(BundleFormatError, match=message):
        write_bundle(
            tmp_path / "b.zip", manifest={**MANIFEST, **change}, files={"m": b"1"}, signing_key=key
        )
    assert list(tmp_path.iterdir()) == []


def _refused(path: Path, data: bytes, key: Ed25519PrivateKey) -> BundleError:
    path.write_bytes(data)
    with pytest.raises(BundleError) as caught:
        open_bundle(path, public_key=_pub(key))
    return caught.value


def test_every_single_byte_change_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = _write(tmp_path, key)
    data, kinds = path.read_bytes(), set()
    with path.open("r+b") as fh:  # flip in place: rewriting the file each time is slow
        for mask in (0x01, 0xFF):  # 0x01 also hits base64 padding bits and ASCII look-alikes
            for offset in range(len(data)):
                fh.seek(offset)
                fh.write(bytes([data[offset] ^ mask]))
                fh.flush()
                with pytest.raises(BundleError) as caught:
                    open_bundle(path, public_key=_pub(key))
                kinds.add(type(caught.value))
                fh.seek(offset)
                fh.write(data[offset : offset + 1])
    assert kinds == {BundleCorrupt, BundleSignatureError, BundleFormatError}


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory: pytest.TempPathFactory, key: Ed25519PrivateKey) -> bytes:
    rng, path = np.random.default_rng(0), tmp_path_factory.mktemp("big") / "big.zip"
    files: dict[str, bytes | Path] = {f"model{i}.onnx": rng.bytes(40_000 + i) for i in range(3)}
    write_bundle(path, manifest=MANIFEST, files=files, signing_key=key)
    return path.read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(position=st.floats(0, 1, exclude_max=True), mask=st.integers(1, 255))
def test_random_byte_changes_in_a_larger_bundle_are_refused(
    tmp_path: Path, key: Ed25519PrivateKey, big_bundle: bytes, position: float, mask: int
) -> None:
    offset = int(position * len(big_bundle))
    flipped = big_bundle[:offset] + bytes([big_bundle[offset] ^ mask]) + big_bundle[offset + 1 :]
    _refused(tmp_path / "flipped.zip", flipped, key)


def test_truncated_or_padded_bundles_are_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = _write(tmp_path, key)
    data = path.read_bytes()
    for length in reversed(range(len(data))):
        os.truncate(path, length)
        with pytest.raises(BundleCorrupt):
            open_bundle(path, public_key=_pub(key))
    target = tmp_path / "cut.zip"
    assert "appended" in str(_refused(target, data + b"\0", key))
    assert isinstance(_refused(target, b"PK\x03\x04" + data, key), BundleCorrupt)
    assert verify_bundle(target, public_key=_pub(key)).valid is False
    assert "not a zip" in str(_refused(target, b"hello, I am not a bundle" * 3, key))


def test_another_key_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = _write(tmp_path, key)
    other = generate_private_key()
    with pytest.raises(BundleSignatureError, match="signed by key"):
        open_bundle(path, public_key=_pub(other))
    # A signature by another key that claims the trusted key's id does not verify either.
    members = dict(_members(path))
    sig = base64.b64encode(other.sign(members["manifest.json"])).decode()
    forged = {"algorithm": "ed25519", "key_id": key_id(key), "signature": sig}
    members["signature.json"] = canonical_json(forged)
    with pytest.raises(BundleSignatureError, match="does not verify"):
        open_bundle(_zip(tmp_path / "forged.zip", list(members.items())), public_key=_pub(key))


def test_edited_manifest_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    members = _members(_write(tmp_path, key))
    manifest = json.loads(members[0][1])
    manifest["metrics"]["accuracy"] = 0.999
    members[0] = ("manifest.json", canonical_json(manifest))
    with pytest.raises(BundleSignatureError, match="changed after signing"):
        open_bundle(_zip(tmp_path / "edited.zip", members), public_key=_pub(key))
    unsigned = [m for m in members if m[0] != "signature.json"]
    with pytest.raises(BundleSignatureError, match="unsigned"):
        open_bundle(_zip(tmp_path / "unsigned.zip", unsigned), public_key=_pub(key))


def test_member_list_must_match_the_manifest(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    members = _members(_write(tmp_path, key))
    extra = _zip(tmp_path / "extra.zip", [*members, ("zz.so", b"payload")])
    with pytest.raises(BundleFormatError, match=r"not listed in the manifest: \['zz.so'\]"):
        open_bundle(extra, public_key=_pub(key))
    missing = _zip(tmp_path / "missing.zip", [m for m in members if m[0] != "model.int8.onnx"])
    with pytest.raises(BundleFormatError, match=r"missing: \['model.int8.onnx'\]"):
        open_bundle(missing, public_key=_pub(key))
    swapped = [(n, INT8 if n == "model.fp32.onnx" else d) for n, d in members]
    with pytest.raises(BundleCorrupt, match=r"model\.fp32\.onnx"):
        open_bundle(_zip(tmp_path / "swapped.zip", swapped), public_key=_pub(key))
    with pytest.raises(BundleCorrupt, match="not canonical"):  # re-zipped with other attributes
        open_bundle(_zip(tmp_path / "plain.zip", members, canonical=False), public_key=_pub(key))


@pytest.mark.parametrize("name", ["../evil.so", "/etc/cron.d/evil", "models/a.onnx", "..\\evil.so"])
def test_traversal_names_are_refused_when_reading(
    tmp_path: Path, key: Ed25519PrivateKey, name: str
) -> None:
    bad = _zip(tmp_path / "bad.zip", [*_members(_write(tmp_path, key)), (name, b"x")])
    with pytest.raises(BundleFormatError, match="unsafe member name"):
        open_bundle(bad, public_key=_pub(key))


def test_duplicates_links_compression_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    members = _members(_write(tmp_path, key))
    with pytest.warns(UserWarning, match="Duplicate name"):
        twice = _zip(tmp_path / "twice.zip", [*members, members[-1]])
    with pytest.raises(BundleFormatError, match=r"duplicate member 'samples\.npz'"):
        open_bundle(twice, public_key=_pub(key))
    link = _zip(tmp_path / "l.zip", [*members[:-1], ("samples.npz", b"/etc")], link="samples.npz")
    with pytest.raises(BundleFormatError, match="symbolic link"):
        open_bundle(link, public_key=_pub(key))
    deflated = tmp_path / "deflated.zip"
    with zipfile.ZipFile(deflated, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data)
    with pytest.raises(BundleFormatError, match="compressed"):
        open_bundle(deflated, public_key=_pub(key))


def test_declared_sizes_are_bounded(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = _write(tmp_path, key)
    data = bytearray(path.read_bytes())
    at = data.index(b"model.fp32.onnx", data.index(b"PK\x01\x02")) - 46  # its directory entry
    assert data[at : at + 4] == b"PK\x01\x02"
    struct.pack_into("<II", data, at + 20, 0xFFFFFFF0, 0xFFFFFFF0)
    err = _refused(tmp_path / "bomb.zip", bytes(data), key)
    assert isinstance(err, BundleFormatError) and "declares 4294967280 bytes" in str(err)
    with pytest.raises(BundleFormatError, match="limit"):
        open_bundle(path, public_key=_pub(key), max_total_bytes=1000)


def test_verify_bundle_reports_instead_of_raising(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = _write(tmp_path, key)
    good = verify_bundle(path, public_key=public_key_pem(key))
    assert good.valid and good.reason.startswith("ok") and good.digest == file_digest(path)
    assert good.manifest is not None and good.manifest["name"] == "digits-mlp"
    bad = verify_bundle(path, public_key=_pub(generate_private_key()))
    assert not bad.valid and "signed by key" in bad.reason and bad.manifest is None
    assert bad.digest == file_digest(path)
    for missing in (tmp_path / "nope.zip", tmp_path):
        result = verify_bundle(missing, public_key=_pub(key))
        assert not result.valid and result.digest is None and result.reason


def test_reads_recheck_the_file(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = _write(tmp_path, key)
    vb = open_bundle(path, public_key=_pub(key))
    for name in ("manifest.json", "signature.json", "other.onnx"):
        with pytest.raises(KeyError):
            vb.read(name)
    data = bytearray(path.read_bytes())
    data[data.index(INT8) + 5] ^= 0xFF  # changed on disk after it was verified
    path.write_bytes(bytes(data))
    with pytest.raises(BundleCorrupt, match="changed after it was verified"):
        vb.read("model.int8.onnx")
    with pytest.raises(BundleCorrupt):
        vb.extract_to(tmp_path / "slot")
    assert list((tmp_path / "slot").iterdir()) == []


def test_importing_model_packager_needs_no_torch_or_onnx() -> None:
    code = (
        "import sys\n"
        "for name in ('torch', 'onnx', 'onnxruntime', 'tensorflow'):\n"
        "    sys.modules[name] = None\n"
        "import model_packager, model_packager.bundle, model_packager.signing\n"
        "assert not any(m == 'hub' or m.startswith(('hub.', 'edge_agent')) for m in sys.modules)\n"
        "print(model_packager.FORMAT)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "edgeloop.bundle/1"


runner = CliRunner()


def _cli(*args: str, obj: Target | None = None) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(bundles.app, list(args), obj=obj)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.output
    return result.exit_code, json.loads(lines[0])


def test_cli_verify(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = _write(tmp_path, key)
    pem = tmp_path / "hub.pub"
    pem.write_bytes(public_key_pem(key))
    code, out = _cli("verify", str(path), "--public-key", str(pem), "--json")
    assert code == 0 and out["valid"] is True and out["reason"].startswith("ok")
    assert out["digest"] == file_digest(path) and (out["name"], out["version"]) == ("digits-mlp", 3)
    tampered = tmp_path / "tampered.zip"
    tampered.write_bytes(bytes(b ^ (i == 100) for i, b in enumerate(path.read_bytes())))
    code, out = _cli("verify", str(tampered), "--public-key", str(pem), "--json")
    assert code == 1 and out["valid"] is False and out["reason"] and out["name"] is None
    human = runner.invoke(bundles.app, ["verify", str(tampered), "--public-key", str(pem)])
    assert human.exit_code == 1 and "invalid bundle" in human.output


def test_cli_verify_defaults_to_the_hubs_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "hub"
    hub_key = bundle_signing_key(load_settings(data_dir=data_dir))
    path = _write(tmp_path, hub_key)
    code, out = _cli("verify", str(path), "--json", obj=Target(str(data_dir), None, None))
    assert code == 0 and out["valid"] is True and out["key_id"] == key_id(hub_key)
    monkeypatch.setenv("EDGELOOP_DATA_DIR", str(data_dir))
    assert _cli("verify", str(path), "--json")[1]["valid"] is True
    monkeypatch.setenv("EDGELOOP_DATA_DIR", str(tmp_path / "empty"))
    code, out = _cli("verify", str(path), "--json")
    assert code == 2 and out["code"] == "no_public_key" and "--public-key" in out["error"]
