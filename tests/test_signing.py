"""Ed25519 keys: creation on disk, permission checks, loading public keys in every form."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from edgeloop_cli import bundles
from edgeloop_cli._client import Target
from hub.core.settings import load_settings
from hub.security.keys import bundle_public_key, bundle_signing_key, bundle_signing_key_path
from model_packager.signing import (
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


def test_key_id_and_raw_bytes() -> None:
    key = generate_private_key()
    raw = public_key_bytes(key)
    assert len(raw) == 32 and public_key_bytes(key.public_key()) == raw
    expected = "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]
    assert key_id(key) == key_id(key.public_key()) == key_id(raw) == expected
    assert key_id(generate_private_key()) != expected
    with pytest.raises(KeyMaterialError, match="32 bytes"):
        key_id(raw[:31])


def test_key_is_created_once_private_and_atomically(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "keys" / "bundle_signing.pem"
    key = load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert serialization.load_pem_private_key(path.read_bytes(), password=None) is not None
    again = load_or_create_private_key(path)
    assert public_key_bytes(again) == public_key_bytes(key)
    assert public_key_bytes(load_private_key(path)) == public_key_bytes(key)
    assert sorted(p.name for p in path.parent.iterdir()) == ["bundle_signing.pem"]  # no temp files


def test_racing_creators_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "k.pem"
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: load_or_create_private_key(path), range(16)))
    assert len({public_key_bytes(k) for k in keys}) == 1
    assert public_key_bytes(load_private_key(path)) == public_key_bytes(keys[0])


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "key.pem"
    load_or_create_private_key(path)
    path.chmod(mode)
    with pytest.raises(InsecureKeyFileError, match=f"chmod 600 {path}"):
        load_or_create_private_key(path)
    path.chmod(0o600)
    load_private_key(path)


def test_bad_private_key_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key")
    garbage.chmod(0o600)
    with pytest.raises(KeyMaterialError, match="not a PEM private key"):
        load_private_key(garbage)
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ec_key.chmod(0o600)
    with pytest.raises(KeyMaterialError, match="not an Ed25519 key"):
        load_private_key(ec_key)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        generate_private_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    encrypted.chmod(0o600)
    with pytest.raises(KeyMaterialError, match="encrypted"):
        load_private_key(encrypted)
    with pytest.raises(KeyMaterialError, match="does not exist"):
        load_private_key(tmp_path / "missing.pem")
    with pytest.raises(KeyMaterialError, match="not a regular file"):
        load_private_key(tmp_path)


def test_public_key_in_every_form(tmp_path: Path) -> None:
    key = generate_private_key()
    raw = public_key_bytes(key)
    texts = [
        raw,
        public_key_pem(key),
        raw.hex().encode() + b"\n",
        raw.hex().upper().encode(),
        base64.b64encode(raw),
        base64.urlsafe_b64encode(raw) + b"\n",
    ]
    files = [tmp_path / f"key{index}" for index in range(len(texts))]
    for file, text in zip(files, texts, strict=True):
        file.write_bytes(text)
    for form in [*texts, *files]:
        assert public_key_bytes(load_public_key(form)) == raw, form


def test_public_key_mistakes_are_explained(tmp_path: Path) -> None:
    key = generate_private_key()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyMaterialError, match="holds a private key"):
        load_public_key(private_pem)
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyMaterialError, match="not an Ed25519 key"):
        load_public_key(ec_pem)
    for junk in (b"", b"short", public_key_bytes(key)[:31], b"z" * 64):
        with pytest.raises(KeyMaterialError, match="not an Ed25519 public key"):
            load_public_key(junk)
    with pytest.raises(KeyMaterialError, match="does not exist"):
        load_public_key(tmp_path / "absent.pub")


def test_hub_bundle_key_lives_in_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "hub")
    key = bundle_signing_key(settings)
    path = bundle_signing_key_path(settings.data_dir)
    assert path == settings.data_dir / "keys" / "bundle_signing.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert bundle_public_key(settings) == public_key_bytes(key)  # stable across calls


def test_bundle_cli_refuses_an_insecure_hub_key(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    bundle_signing_key(settings)
    bundle_signing_key_path(settings.data_dir).chmod(0o644)
    target = Target(data_dir=str(tmp_path), hub_url=None, token=None)
    result = CliRunner().invoke(bundles.app, ["verify", "x.zip", "--json"], obj=target)
    error = json.loads(result.stdout)
    assert result.exit_code == 2 and error["code"] == "insecure_key_file"
    assert "chmod 600" in error["error"]
