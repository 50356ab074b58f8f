"""The fault suite's hub side: real bundles, a throttleable gRPC artifact server, agents as
subprocesses (``edgeloop agent run``) and an observer of what devices publish.

``build_fault_hub`` trains ``digits-mlp`` twice (one epoch each: the suite needs valid,
healthy, signed models, not good ones) in a hub *data dir* (``hub.db`` + ``artifacts``), so
``edgeloop package --data-dir`` works on it too. ``big`` is v2 re-signed with a 2 MiB
payload file, so a download takes several chunks. ``Throttle`` slows and pauses
``ArtifactService.Download`` on the server (the real servicer, a sleep / an event between
chunks), which makes "kill the agent while it downloads" a deterministic point.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from hub.core.artifacts import FileArtifactStore
from hub.rpc.server import ArtifactServicer
from proto import services_pb2, services_pb2_grpc
from tests.agent.harness import Bundles, _rewrite, make_bundles
from tests.rollouts.fleet import Hub

ROOT = Path(__file__).resolve().parents[2]
PADDING_BYTES = 2 * 1024 * 1024
CHUNK = 256 * 1024


@dataclass
class Throttle:
    """Server-side control of downloads: a delay per chunk, and a gate closed at a byte mark."""

    delay_s: float = 0.0
    pause_at: int | None = None  # bytes sent (in one stream) after which the stream waits
    gate: threading.Event = field(default_factory=threading.Event)
    offsets: list[int] = field(default_factory=list)  # each Download's starting offset

    def reset(self) -> None:
        self.delay_s, self.pause_at = 0.0, None
        self.offsets.clear()
        self.gate.set()


class ThrottledArtifacts(ArtifactServicer):
    def __init__(self, *, store: FileArtifactStore, throttle: Throttle) -> None:
        super().__init__(store=store)
        self.throttle = throttle

    def Download(
        self, request: services_pb2.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[services_pb2.DownloadChunk]:
        t = self.throttle
        t.offsets.append(request.offset)
        sent = 0
        for chunk in super().Download(request, context):
            if t.pause_at is not None and sent >= t.pause_at:
                while not t.gate.wait(0.05):  # paused: hold the stream open
                    if not context.is_active():
                        return
            if t.delay_s:
                time.sleep(t.delay_s)
            yield chunk
            sent += len(chunk.data)


@dataclass
class FaultHub:
    root: Path  # a hub data dir: hub.db, artifacts/, keys/
    store: FileArtifactStore
    bundles: Bundles
    big: str  # v2 with a 2 MiB padding file, re-signed
    endpoint: str
    throttle: Throttle
    server: grpc.Server

    def rollout_hub(self) -> Hub:
        """The same world in the shape ``tests.rollouts.fleet`` expects."""
        return Hub(bundles=self.bundles, bad=self.big, endpoint=self.endpoint, root=self.root)

    def close(self) -> None:
        self.throttle.gate.set()
        self.server.stop(None)


def build_fault_hub(root: Path) -> FaultHub:
    from concurrent import futures

    from hub.core.db import make_engine, session_scope
    from hub.datasets import service as datasets
    from hub.packaging.service import PackageOptions, package
    from hub.security.keys import bundle_signing_key_path
    from hub.tables import create_all
    from hub.training.service import train
    from model_packager.signing import load_or_create_private_key

    engine = make_engine(f"sqlite:///{root / 'hub.db'}")
    create_all(engine)
    store = FileArtifactStore(root=root / "artifacts")
    key = load_or_create_private_key(bundle_signing_key_path(root))
    with session_scope(engine) as s:
        datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
    raw = []
    for seed in (0, 1):
        params = {"epochs": 1, "hidden": 16}
        train(engine, store, spec_name="digits-mlp", dataset="digits@1", params=params, seed=seed)
        outcome = package(
            engine,
            store,
            ref="digits-mlp@latest",
            signing_key=key,
            options=PackageOptions(formats=("onnx",), formats_explicit=True),
        )
        raw.append(outcome.path.read_bytes())
    engine.dispose()
    bundles = make_bundles(built=raw, key=key, store=store, tmp=root)

    def pad(files: dict[str, bytes]) -> None:
        files["padding.bin"] = os.urandom(PADDING_BYTES)

    big = store.put_bytes(_rewrite(raw[1], key=key, change=pad, tmp=root))
    bundles.sizes[big.digest] = big.size
    throttle = Throttle()
    throttle.gate.set()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    services_pb2_grpc.add_ArtifactServiceServicer_to_server(
        ThrottledArtifacts(store=store, throttle=throttle), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return FaultHub(
        root=root,
        store=store,
        bundles=bundles,
        big=big.digest,
        endpoint=f"127.0.0.1:{port}",
        throttle=throttle,
        server=server,
    )


def agent_process(
    *,
    device_id: str,
    mqtt_url: str,
    public_key: Path,
    agent_dir: Path,
    fleet: str,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``edgeloop agent run`` as a child process (``prefix``: e.g. a faketime wrapper)."""
    command = [
        *(prefix or []),
        sys.executable, "-m", "edgeloop_cli", "agent", "run",
        "--device-id", device_id,
        "--mqtt-url", mqtt_url,
        "--public-key", str(public_key),
        "--agent-dir", str(agent_dir),
        "--fleet", fleet,
    ]  # fmt: skip
    values = {
        **os.environ,
        "EDGELOOP_AGENT_RECONNECT_INITIAL_S": "0.1",
        "EDGELOOP_AGENT_RECONNECT_MAX_S": "0.5",
        "EDGELOOP_AGENT_PROBATION_S": "0.3",
        **(env or {}),
    }
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(command, cwd=ROOT, env=values, stdout=out, stderr=out)
    finally:
        if log is not None and not isinstance(out, int):
            out.close()


def stop_process(proc: subprocess.Popen[Any], *, timeout: float = 15) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def wait_for(condition: Callable[[], bool], *, within: float, what: str) -> None:
    """Poll until ``condition`` holds; an upper bound for safety, never a measurement."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
