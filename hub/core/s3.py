"""The S3-compatible artifact store (AWS S3, MinIO, Ceph RGW, R2, ...), through boto3.

``s3://BUCKET/PREFIX?endpoint_url=URL&region=R&presign_endpoint_url=URL`` keeps every blob at
``PREFIX/sha256/<2 hex>/<64 hex>``, like :class:`~hub.core.artifacts.FileArtifactStore`:
content-addressed, the same bytes stored once. Credentials never go in the URL: boto3's own
chain finds them (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, an instance role); ``AWS_ENDPOINT_URL`` and ``AWS_REGION`` work too. The
hub's credentials need ``s3:GetObject``, ``s3:PutObject`` and ``s3:ListBucket`` on the
bucket (without ListBucket, S3 answers a missing key with 403, not 404).

Objects larger than ``multipart_threshold`` go up as multipart uploads (boto3's transfer
manager, parts of ``multipart_chunk`` bytes). An S3 PUT or a completed multipart upload is
atomic: a key holds the whole blob or nothing. Reads stream (:meth:`S3ArtifactStore.open`,
seekable by ranged GETs); :meth:`~S3ArtifactStore.get_bytes` re-checks the digest.
:meth:`~S3ArtifactStore.presigned_url` signs a short-lived GET for devices
(``presign_endpoint_url``: the endpoint as devices reach it, when it differs from the hub's).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from hub.core.artifact_types import (
    CHUNK,
    ArtifactCorrupt,
    ArtifactNotFound,
    ArtifactRef,
    ArtifactStoreUnavailable,
    ArtifactUrlInvalid,
    hex_of,
    sha256_digest,
)
from hub.core.redact import redact_text

__all__ = ["MIN_PART", "S3ArtifactStore", "s3_store"]

#: S3's smallest part of a multipart upload (all but the last part).
MIN_PART = 5 * 1024 * 1024
_KNOWN_PARAMS = {"endpoint_url", "region", "presign_endpoint_url", "addressing_style"}
_MISSING = {"404", "NoSuchKey", "NotFound"}


def _config(addressing: str) -> Config:
    return Config(
        signature_version="s3v4",
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        s3={"addressing_style": addressing},
    )


class S3ArtifactStore:
    """Content-addressed blobs in one bucket under one key prefix."""

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        presign_endpoint_url: str | None = None,
        addressing_style: str = "auto",
        multipart_threshold: int = 64 * 1024 * 1024,
        multipart_chunk: int = 16 * 1024 * 1024,
    ) -> None:
        if multipart_chunk < MIN_PART:
            raise ArtifactUrlInvalid(f"multipart parts must be >= {MIN_PART} bytes (S3's minimum)")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        session = boto3.session.Session(region_name=region)
        if endpoint_url and addressing_style == "auto":
            addressing_style = "path"  # MinIO, Ceph, moto: one host, buckets in the path
        self.client: Any = session.client(
            "s3", endpoint_url=endpoint_url, config=_config(addressing_style)
        )
        self._presigner: Any = (
            session.client(
                "s3", endpoint_url=presign_endpoint_url, config=_config(addressing_style)
            )
            if presign_endpoint_url
            else self.client
        )
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunk,
            max_concurrency=4,
        )

    # keys ---------------------------------------------------------------------------------

    def key(self, digest: str) -> str:
        value = hex_of(digest)
        key = f"sha256/{value[:2]}/{value}"
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where

    def _ref(self, digest: str, size: int) -> ArtifactRef:
        return ArtifactRef(uri=f"s3://{self.bucket}/{self.key(digest)}", digest=digest, size=size)

    def _failed(self, what: str, exc: Exception) -> ArtifactStoreUnavailable:
        if isinstance(exc, NoCredentialsError):
            why = (
                "no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                "AWS_PROFILE)"
            )
        elif isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = error.get("Code", "?")
            hints = {
                "NoSuchBucket": "the bucket does not exist",
                "404": "the bucket does not exist",
                "403": "access denied: check the credentials and the bucket policy",
                "AccessDenied": "access denied: check the credentials and the bucket policy",
                "InvalidAccessKeyId": "the access key id is not known to the store",
                "SignatureDoesNotMatch": "the secret access key is wrong",
            }
            why = hints.get(code, f"{code}: {error.get('Message', '')}".rstrip(": "))
        else:
            why = f"{type(exc).__name__}: {exc}"
        message = f"artifact store {self._where()}: {what}: {why}"
        return ArtifactStoreUnavailable(redact_text(message))

    # the protocol -------------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`ArtifactStoreUnavailable` unless the bucket is there and ours."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise self._failed("cannot reach the bucket", exc) from None

    def _head(self, digest: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(digest))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return None
            raise self._failed(f"head {digest}", exc) from None
        except BotoCoreError as exc:
            raise self._failed(f"head {digest}", exc) from None
        return int(head["ContentLength"])

    def put_bytes(self, data: bytes) -> ArtifactRef:
        digest = sha256_digest(data)
        return self._upload(digest, len(data), lambda: io.BytesIO(data))

    def put_file(self, path: Path) -> ArtifactRef:
        hasher = hashlib.sha256()
        size = 0
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(CHUNK), b""):
                hasher.update(block)
                size += len(block)
        return self._upload("sha256:" + hasher.hexdigest(), size, lambda: path.open("rb"))

    def _upload(self, digest: str, size: int, source: Any) -> ArtifactRef:
        if self._head(digest) == size:
            return self._ref(digest, size)  # stored before: content-addressed
        try:
            with source() as fh:
                self.client.upload_fileobj(
                    fh,
                    self.bucket,
                    self.key(digest),
                    ExtraArgs={
                        "ContentType": "application/octet-stream",
                        "Metadata": {"sha256": hex_of(digest)},
                    },
                    Config=self.transfer,
                )
        except (ClientError, BotoCoreError) as exc:
            raise self._failed(f"upload of {digest}", exc) from None
        stored = self._head(digest)
        if stored != size:
            raise ArtifactCorrupt(
                f"artifact {digest}: {size} bytes uploaded, {stored} stored in {self._where()}"
            )
        return self._ref(digest, size)

    def get_bytes(self, digest: str) -> bytes:
        with self.open(digest) as fh:
            data = fh.read()
        if sha256_digest(data) != digest:
            raise ArtifactCorrupt(
                f"artifact {digest} is corrupt in {self._where()} ({self.key(digest)})"
            )
        return data

    def open(self, digest: str) -> BinaryIO:
        size = self._head(digest)
        if size is None:
            raise ArtifactNotFound(f"no artifact {digest} in {self._where()}")
        return io.BufferedReader(_ObjectReader(self, self.key(digest), size), CHUNK)

    def stat(self, digest: str) -> ArtifactRef:
        size = self._head(digest)
        if size is None:
            raise ArtifactNotFound(f"no artifact {digest} in {self._where()}")
        return self._ref(digest, size)

    def exists(self, digest: str) -> bool:
        try:
            return self._head(digest) is not None
        except ArtifactNotFound:  # not a sha256 digest
            return False

    def presigned_url(self, digest: str, *, ttl_s: int) -> str:
        """A GET URL for the blob that works for ``ttl_s`` seconds, without credentials.
        Its signature is a secret while it lasts: never log it whole (hub.core.redact)."""
        if self._head(digest) is None:
            raise ArtifactNotFound(f"no artifact {digest} in {self._where()}")
        try:
            return self._presigner.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self.key(digest)},
                ExpiresIn=ttl_s,
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._failed(f"presign {digest}", exc) from None


class _ObjectReader(io.RawIOBase):
    """One object as a seekable raw stream: a ranged GET from the position on first read."""

    def __init__(self, store: S3ArtifactStore, key: str, size: int) -> None:
        super().__init__()
        self.store, self.key, self.size = store, key, size
        self.position = 0
        self.body: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        target = max(0, base + offset)
        if target != self.position:
            self._drop()
            self.position = target
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer: Any) -> int:
        if self.position >= self.size:
            return 0
        if self.body is None:
            try:
                got = self.store.client.get_object(
                    Bucket=self.store.bucket, Key=self.key, Range=f"bytes={self.position}-"
                )
            except (ClientError, BotoCoreError) as exc:
                raise self.store._failed(f"read of {self.key}", exc) from None
            self.body = got["Body"]
        data = self.body.read(len(buffer))
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def _drop(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None

    def close(self) -> None:
        self._drop()
        super().close()


def s3_store(url: str) -> S3ArtifactStore:
    """The store for ``s3://BUCKET[/PREFIX][?endpoint_url=..&region=..&presign_endpoint_url=..
    &addressing_style=path|virtual]``."""
    parsed = urlparse(url)
    if parsed.username or parsed.password:
        raise ArtifactUrlInvalid(
            "artifact URL: credentials do not go in the s3:// URL; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the hub's environment"
        )
    bucket = parsed.hostname or ""
    if not bucket:
        raise ArtifactUrlInvalid(f"artifact URL {redact_text(url)!r}: no bucket (s3://BUCKET/...)")
    params = parse_qs(parsed.query, keep_blank_values=True)
    unknown = sorted(set(params) - _KNOWN_PARAMS)
    if unknown:
        raise ArtifactUrlInvalid(
            f"artifact URL {redact_text(url)!r}: unknown parameter(s) {unknown}; known: "
            f"{sorted(_KNOWN_PARAMS)}"
        )
    one = {name: values[-1] for name, values in params.items()}
    for name in ("endpoint_url", "presign_endpoint_url"):
        if name in one and urlparse(one[name]).scheme not in {"http", "https"}:
            raise ArtifactUrlInvalid(f"artifact URL: {name} must be an http(s):// URL")
    style = one.get("addressing_style", "auto")
    if style not in {"auto", "path", "virtual"}:
        raise ArtifactUrlInvalid("artifact URL: addressing_style is auto, path or virtual")
    return S3ArtifactStore(
        bucket=bucket,
        prefix=parsed.path,
        endpoint_url=one.get("endpoint_url") or None,
        region=one.get("region") or None,
        presign_endpoint_url=one.get("presign_endpoint_url") or None,
        addressing_style=style,
    )
