"""The S3-compatible artifact store (hub.core.s3) against a real S3 server process (moto's
server mode, tests/fixtures/s3.py): content addressing, multipart uploads, streaming and
ranged reads, corruption, presigned URLs, the gRPC artifact server in front of it, and
``hub serve`` refusing a store it cannot use before it starts anything."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import httpx
import pytest

from edge_agent._fetch import download_bundle
from hub.core.artifacts import (
    ArtifactCorrupt,
    ArtifactNotFound,
    ArtifactStoreUnavailable,
    ArtifactUrlInvalid,
    DownloadLinks,
    open_store,
    sha256_digest,
)
from hub.core.redact import redact_text
from hub.core.s3 import MIN_PART, S3ArtifactStore, s3_store
from hub.rpc.server import start_grpc_server
from tests.fixtures.ports import free_port
from tests.fixtures.s3 import TEST_SECRET, S3Server, s3_env, s3_server_process

pytestmark = pytest.mark.timeout(120)

BLOB = os.urandom(300_000)
DIGEST = sha256_digest(BLOB)


def _store(url: str) -> S3ArtifactStore:
    store = open_store(url)
    assert isinstance(store, S3ArtifactStore)
    return store


def test_round_trip_is_content_addressed(s3_url: str) -> None:
    store = _store(s3_url)
    store.check()
    ref = store.put_bytes(BLOB)
    hexes = DIGEST.removeprefix("sha256:")
    assert ref.digest == DIGEST and ref.size == len(BLOB)
    assert ref.uri == f"s3://{store.bucket}/artifacts/sha256/{hexes[:2]}/{hexes}"
    assert store.put_bytes(BLOB) == ref  # the same bytes stored once
    listed = store.client.list_objects_v2(Bucket=store.bucket)["Contents"]
    assert [o["Key"] for o in listed] == [f"artifacts/sha256/{hexes[:2]}/{hexes}"]
    assert store.exists(DIGEST) and store.stat(DIGEST) == ref
    assert store.get_bytes(DIGEST) == BLOB
    with store.open(DIGEST) as fh:  # streams, and seeks by ranged GETs
        assert fh.read(10) == BLOB[:10]
        fh.seek(123_456)
        assert fh.read() == BLOB[123_456:]
    missing = sha256_digest(b"never stored")
    assert not store.exists(missing) and not store.exists("md5:abc")
    for call in (store.stat, store.open, store.get_bytes):
        with pytest.raises(ArtifactNotFound):
            call(missing)


def test_large_files_go_up_as_multipart_uploads(s3_url: str, tmp_path: Path) -> None:
    store = _store(s3_url)
    store.transfer.multipart_threshold = store.transfer.multipart_chunksize = MIN_PART
    big = tmp_path / "big.bin"
    data = os.urandom(2 * MIN_PART + 4321)
    big.write_bytes(data)
    started = time.perf_counter()
    ref = store.put_file(big)
    up = time.perf_counter() - started
    assert ref.digest == sha256_digest(data) and ref.size == len(data)
    head = store.client.head_object(Bucket=store.bucket, Key=store.key(ref.digest))
    assert head["ETag"].strip('"').endswith("-3")  # three parts: a multipart upload
    assert head["Metadata"]["sha256"] == ref.digest.removeprefix("sha256:")
    started = time.perf_counter()
    assert store.get_bytes(ref.digest) == data
    down = time.perf_counter() - started
    mib = len(data) / 2**20
    print(f"S3 test server: upload {mib / up:.0f} MiB/s, download {mib / down:.0f} MiB/s")


def test_an_object_that_no_longer_matches_its_digest_is_corrupt(s3_url: str) -> None:
    store = _store(s3_url)
    store.put_bytes(BLOB)
    store.client.put_object(Bucket=store.bucket, Key=store.key(DIGEST), Body=b"X" + BLOB[1:])
    with pytest.raises(ArtifactCorrupt, match="corrupt"):
        store.get_bytes(DIGEST)


def test_urls_that_name_no_usable_store_are_refused() -> None:
    with pytest.raises(ArtifactUrlInvalid, match="credentials do not go in") as caught:
        s3_store("s3://AKIA:hunter2@bucket/p")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ArtifactUrlInvalid, match="unknown parameter"):
        s3_store("s3://bucket/p?endpoint=http://x")
    with pytest.raises(ArtifactUrlInvalid, match="no bucket"):
        s3_store("s3:///p")
    with pytest.raises(ArtifactUrlInvalid, match="http"):
        s3_store("s3://bucket?endpoint_url=ftp://x")
    with pytest.raises(ArtifactUrlInvalid, match="unknown scheme"):
        open_store("gs://bucket")


def test_a_missing_bucket_an_unreachable_endpoint_and_refused_keys_fail_check(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_env().items():
        monkeypatch.setenv(name, value)
    missing = _store(f"s3://no-such-bucket-here?endpoint_url={s3_server.endpoint}")
    with pytest.raises(ArtifactStoreUnavailable, match="the bucket does not exist"):
        missing.check()
    nowhere = _store(f"s3://bucket?endpoint_url=http://127.0.0.1:{free_port()}")
    with pytest.raises(ArtifactStoreUnavailable, match="cannot reach the bucket"):
        nowhere.check()
    with s3_server_process(tmp_path, auth=True) as guarded:
        refused = _store(f"s3://bucket?endpoint_url={guarded.endpoint}")
        with pytest.raises(ArtifactStoreUnavailable, match="access denied") as caught:
            refused.check()
    assert TEST_SECRET not in str(caught.value)


def test_presigned_urls_serve_without_credentials_and_are_reused(s3_url: str) -> None:
    store = _store(s3_url)
    store.put_bytes(BLOB)
    now = [1_000_000.0]
    links = DownloadLinks(store, ttl_s=600, clock=lambda: now[0])
    link = links(DIGEST)
    assert link is not None
    url, expires_ms = link
    assert expires_ms == (now[0] + 599) * 1000
    assert "X-Amz-Signature=" in url and TEST_SECRET not in url
    shown = redact_text(f"GET {url}")
    assert "X-Amz-Signature=***" in shown and "X-Amz-Credential=***" in shown
    with urllib.request.urlopen(url, timeout=10) as response:  # no credentials: the URL's
        assert response.read() == BLOB
    now[0] += 200
    assert links(DIGEST) == link  # more than half its time left: the same URL
    now[0] += 200
    assert links(DIGEST) != link  # less: a fresh one
    assert links(sha256_digest(b"nothing")) is None and links.failures == 1
    assert open_store(Path("/tmp").as_uri()).presigned_url(DIGEST, ttl_s=60) is None


def test_the_grpc_artifact_server_serves_from_s3_with_resume(s3_url: str, tmp_path: Path) -> None:
    store = _store(s3_url)
    store.put_bytes(BLOB)
    server, port = start_grpc_server(store=store, host="127.0.0.1", port=0)
    try:
        dest = tmp_path / "device"
        dest.mkdir()
        hexes = DIGEST.removeprefix("sha256:")
        (dest / f"{hexes}.partial").write_bytes(BLOB[:100_001])  # resumes at that offset
        path = asyncio.run(
            download_bundle(
                endpoint=f"127.0.0.1:{port}", digest=DIGEST, dest_dir=dest, chunk_size=64 * 1024
            )
        )
        assert path.read_bytes() == BLOB
    finally:
        server.stop(None).wait()


def _serve_once(tmp_path: Path, artifact_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeloop_cli", "hub", "serve", "--json", "--port", "0"],
        env={
            **os.environ,
            **s3_env(),
            "EDGELOOP_DATA_DIR": str(tmp_path / "data"),
            "EDGELOOP_ARTIFACT_URL": artifact_url,
            "EDGELOOP_EMBEDDED_MQTT_PORT": str(free_port()),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hub_serve_refuses_a_store_it_cannot_use_before_starting_anything(
    s3_server: S3Server, tmp_path: Path
) -> None:
    started = time.monotonic()
    done = _serve_once(tmp_path, f"s3://no-such-bucket-here/p?endpoint_url={s3_server.endpoint}")
    assert done.returncode == 1, done.stdout + done.stderr
    error = json.loads(done.stdout)
    assert error["code"] == "artifact_store_unavailable"
    assert "no-such-bucket-here" in error["error"] and "does not exist" in error["error"]
    assert "Traceback" not in done.stderr and TEST_SECRET not in done.stdout + done.stderr
    assert "broker" not in done.stderr.lower()  # failed before any broker was started
    assert "listening" not in done.stderr  # and before the gRPC server
    assert time.monotonic() - started < 30
    presign = _serve_once(tmp_path, (tmp_path / "a").as_uri(), EDGELOOP_ARTIFACT_PRESIGN="1")
    assert presign.returncode == 2 and json.loads(presign.stdout)["code"] == "settings"
    assert "EDGELOOP_ARTIFACT_PRESIGN needs" in json.loads(presign.stdout)["error"]


def test_the_standard_aws_variables_configure_the_client(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    boto3.client("s3").create_bucket(Bucket="from-env-bucket")
    store = _store("s3://from-env-bucket/x")  # the endpoint from AWS_ENDPOINT_URL
    store.check()
    assert store.get_bytes(store.put_bytes(b"env").digest) == b"env"


def test_hub_serve_on_an_s3_store_with_presigned_downloads(s3_url: str, tmp_path: Path) -> None:
    from tests.test_hub_serve import _serve, _stop

    proc, url, log = _serve(tmp_path, EDGELOOP_ARTIFACT_URL=s3_url, EDGELOOP_ARTIFACT_PRESIGN="1")
    try:
        health = httpx.get(f"{url}/healthz", timeout=10).json()
        assert health["artifacts"] == {
            "url": s3_url,
            "presigned_downloads": True,
            "presign_failures": 0,
        }
    finally:
        assert _stop(proc) == 0, log.read_text()
    assert TEST_SECRET not in log.read_text()


def test_the_cli_imports_trains_and_packages_into_an_s3_store(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every artifact of the loop (records, the trained model, the bundle) goes to S3; the
    bundle's URI is printed, and ``--out`` copies it from the store (digest checked)."""
    from edgeloop_cli import main

    monkeypatch.setenv("EDGELOOP_ARTIFACT_URL", s3_url)
    dd = ["--data-dir", str(tmp_path / "hub")]

    def cli(*args: str) -> dict[str, object]:
        code = main([*dd, *args, "--json"])
        out = json.loads(capsys.readouterr().out)
        assert code == 0, out
        return out  # type: ignore[no-any-return]

    cli("dataset", "import", "synthetic:vibration", "--name", "vib")
    cli("train", "--spec", "vibration-ae", "--dataset", "vib@1", "--param", "epochs=2")
    out = tmp_path / "bundle.zip"
    result = cli("package", "vibration-ae@1", "--formats", "onnx", "--out", str(out))
    store = _store(s3_url)
    digest = str(result["digest"])
    assert result["stored"] == f"s3://{store.bucket}/{store.key(digest)}"
    assert out.read_bytes() == store.get_bytes(digest)
    keys = store.client.list_objects_v2(Bucket=store.bucket)["KeyCount"]
    assert keys >= 3 and not (tmp_path / "hub" / "artifacts").exists()
