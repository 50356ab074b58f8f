"""Serving bundles to a simulated fleet without a hub: a content-addressed store and the hub's
real gRPC ``ArtifactService`` on loopback, plus the bad bundles a scenario asks for.

    with BundleHost(root=tmp) as host:
        good = host.add(Path("digits.bundle"))
        bad = host.bad(good, kind="tampered")     # or "foreign" (signed by another key)
        await fleet.deploy(good, endpoint=host.endpoint)
"""

from __future__ import annotations

import io
import json
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from hub.core.artifacts import FileArtifactStore
from hub.rpc.server import start_grpc_server
from proto import messages_pb2 as pb


@dataclass(frozen=True, slots=True)
class HostedBundle:
    digest: str
    size: int
    model: str
    version: str


def deploy_command(
    device_id: str, *, bundle: HostedBundle, endpoint: str, probation_s: int = 0
) -> pb.Command:
    """A ``Deploy`` command for one device, as the hub's rollouts publish it."""
    return pb.Command(
        command_id=uuid.uuid4().hex,
        device_id=device_id,
        issued_at=int(time.time() * 1000),
        deploy=pb.Deploy(
            rollout_id="sim",
            model=bundle.model,
            version=bundle.version,
            bundle_digest=bundle.digest,
            bundle_size=bundle.size,
            artifact_endpoint=endpoint,
            probation_seconds=probation_s,
        ),
    )


def bundle_identity(data: bytes) -> tuple[str, str]:
    """The (model name, version) a bundle's manifest declares (unverified: for labelling)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        manifest = json.loads(z.read("manifest.json"))
    return str(manifest.get("name", "")), str(manifest.get("version", ""))


class BundleHost:
    """An artifact store under ``root`` served over gRPC on ``127.0.0.1``."""

    def __init__(self, *, root: Path) -> None:
        self.store = FileArtifactStore(root=Path(root))
        self._server: grpc.Server | None = None
        self.port = 0

    def __enter__(self) -> BundleHost:
        self._server, self.port = start_grpc_server(store=self.store, host="127.0.0.1", port=0)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._server.stop(None)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_bytes(self, data: bytes) -> HostedBundle:
        ref = self.store.put_bytes(data)
        model, version = bundle_identity(data)
        return HostedBundle(digest=ref.digest, size=ref.size, model=model, version=version)

    def add(self, path: Path) -> HostedBundle:
        return self.add_bytes(Path(path).read_bytes())

    def bad(self, good: HostedBundle, *, kind: str, signing_key: Any = None) -> HostedBundle:
        """A broken copy of ``good``: ``tampered`` (a byte flipped after signing: digest and
        signature fail), ``foreign`` (validly signed by a key the devices do not trust),
        ``unhealthy`` (signed by ``signing_key`` but its self-test expectations are off)."""
        raw = self.store.get_bytes(good.digest)
        if kind == "tampered":
            data = bytearray(raw)
            data[len(data) // 3] ^= 0x01
            return self.add_bytes(bytes(data))
        from model_packager.signing import generate_private_key

        if kind == "foreign":
            return self.add_bytes(_resign(raw, key=generate_private_key(), spoil=False))
        if kind == "unhealthy":
            if signing_key is None:
                raise ValueError("an 'unhealthy' bad bundle needs the hub's signing key")
            return self.add_bytes(_resign(raw, key=signing_key, spoil=True))
        raise ValueError(f"unknown bad bundle kind {kind!r}: tampered, foreign or unhealthy")


def _resign(raw: bytes, *, key: Any, spoil: bool) -> bytes:
    import tempfile

    import numpy as np

    from model_packager.bundle import write_bundle

    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        names = [n for n in z.namelist() if n not in {"manifest.json", "signature.json"}]
        files = {n: z.read(n) for n in names}
        manifest = json.loads(z.read("manifest.json"))
    if spoil:
        with np.load(io.BytesIO(files["samples.npz"])) as npz:
            arrays = {k: npz[k] for k in npz.files}
        for name in arrays:
            if name.startswith("expected:"):
                arrays[name] = arrays[name] + 5.0
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        files["samples.npz"] = buf.getvalue()
    manifest.pop("files", None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bundle.zip"
        write_bundle(out, manifest=manifest, files=files, signing_key=key)
        return out.read_bytes()
