"""A hub-side harness for agent integration tests: real broker, real gRPC, real bundles."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import uuid
import zipfile
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

from hub.core.artifacts import FileArtifactStore
from model_packager.bundle import open_bundle, write_bundle
from model_packager.signing import generate_private_key, public_key_bytes
from proto import messages_pb2 as pb
from proto.topics import Topics

TOPICS = Topics(prefix="edgeloop/v1", fleet="default")
K = pb.EventKind


@dataclass(frozen=True, kw_only=True)
class Bundles:
    """Signed bundles in the hub's artifact store, by role."""

    v1: str
    v2: str
    unhealthy: str  # validly signed, fails its self-test
    foreign: str  # signed by another key
    tampered: str  # one byte changed after signing
    sizes: dict[str, int]
    public_key_file: Path
    raw: dict[str, bytes]


def _rewrite(
    raw: bytes, *, key: Any, change: Callable[[dict[str, bytes]], None], tmp: Path
) -> bytes:
    """Re-sign a bundle after ``change`` edits its payload files (as a bad packager would)."""
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        files = {n: z.read(n) for n in z.namelist() if n not in {"manifest.json", "signature.json"}}
        manifest = __import__("json").loads(z.read("manifest.json"))
    change(files)
    manifest.pop("files", None)
    out = tmp / f"rewritten-{uuid.uuid4().hex}.zip"
    write_bundle(out, manifest=manifest, files=files, signing_key=key)
    return out.read_bytes()


def make_bundles(*, built: list[bytes], key: Any, store: FileArtifactStore, tmp: Path) -> Bundles:
    v1, v2 = built

    def spoil(files: dict[str, bytes]) -> None:
        with np.load(io.BytesIO(files["samples.npz"])) as npz:
            arrays = {k: npz[k] for k in npz.files}
        for name in list(arrays):
            if name.startswith("expected:"):
                arrays[name] = arrays[name] + 5.0
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        files["samples.npz"] = buf.getvalue()

    unhealthy = _rewrite(v2, key=key, change=spoil, tmp=tmp)
    foreign = _rewrite(v2, key=generate_private_key(), change=lambda f: None, tmp=tmp)
    tampered = bytearray(v2)
    tampered[len(tampered) // 3] ^= 0x01
    refs = {
        name: store.put_bytes(data)
        for name, data in {
            "v1": v1,
            "v2": v2,
            "unhealthy": unhealthy,
            "foreign": foreign,
            "tampered": bytes(tampered),
        }.items()
    }
    key_file = tmp / "hub.pub"
    key_file.write_bytes(public_key_bytes(key).hex().encode())
    return Bundles(
        **{name: ref.digest for name, ref in refs.items()},
        sizes={ref.digest: ref.size for ref in refs.values()},
        public_key_file=key_file,
        raw={"v1": v1, "v2": v2, "foreign": foreign},
    )


def version_of(raw: bytes, key_file: Path) -> str:
    path = Path("/tmp") / f"bundle-{uuid.uuid4().hex}.zip"
    path.write_bytes(raw)
    try:
        return str(
            open_bundle(path, public_key=bytes.fromhex(key_file.read_text())).manifest["version"]
        )
    finally:
        path.unlink()


@dataclass
class Observer:
    """Subscribes to every device topic; publishes commands like the hub does."""

    broker_port: int
    events: dict[str, list[pb.DeploymentEvent]] = field(default_factory=lambda: defaultdict(list))
    states: dict[str, pb.AgentState] = field(default_factory=dict)
    telemetry: dict[str, list[pb.TelemetryWindow]] = field(
        default_factory=lambda: defaultdict(list)
    )
    feedback: dict[str, list[pb.Feedback]] = field(default_factory=lambda: defaultdict(list))
    client: aiomqtt.Client | None = None

    @contextlib.asynccontextmanager
    async def running(self, *, client_id: str = "test-hub") -> AsyncIterator[Observer]:
        task = asyncio.create_task(self._loop(client_id))
        try:
            await self.wait(lambda: self.client is not None, within=10)
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self, client_id: str) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.broker_port, identifier=client_id, clean_session=False
                ) as client:
                    await client.subscribe(f"{TOPICS.base}/devices/+/#", qos=1)
                    self.client = client
                    async for message in client.messages:
                        self._take(str(message.topic), bytes(message.payload))  # type: ignore[arg-type]
            except aiomqtt.MqttError:
                self.client = None
                await asyncio.sleep(0.2)

    def _take(self, topic: str, payload: bytes) -> None:
        device, kind = TOPICS.parse(topic)
        if kind == "events":
            event = pb.DeploymentEvent()
            event.ParseFromString(payload)
            self.events[device].append(event)
        elif kind == "state":
            state = pb.AgentState()
            state.ParseFromString(payload)
            self.states[device] = state
        elif kind == "telemetry":
            window = pb.TelemetryWindow()
            window.ParseFromString(payload)
            self.telemetry[device].append(window)
        elif kind == "feedback":
            fb = pb.Feedback()
            fb.ParseFromString(payload)
            self.feedback[device].append(fb)

    async def wait(self, condition: Callable[[], bool], *, within: float) -> None:
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for a condition")
            await asyncio.sleep(0.05)

    async def online(self, device: str, *, within: float = 15) -> None:
        """Until the device's retained state says online (it has subscribed by then)."""
        await self.wait(lambda: device in self.states and self.states[device].online, within=within)

    def kinds(self, device: str, command_id: str) -> list[int]:
        return [e.kind for e in self.events[device] if e.command_id == command_id]

    async def command(self, device: str, command: pb.Command) -> None:
        assert self.client is not None
        await self.client.publish(TOPICS.command(device), command.SerializeToString(), qos=1)

    async def deploy(
        self,
        device: str,
        *,
        digest: str,
        size: int,
        endpoint: str,
        probation: float = 0.3,
        command_id: str | None = None,
    ) -> str:
        cid = command_id or uuid.uuid4().hex
        await self.command(
            device,
            pb.Command(
                command_id=cid,
                device_id=device,
                issued_at=int(time.time() * 1000),
                deploy=pb.Deploy(
                    rollout_id="r1",
                    model="digits-mlp",
                    version="x",
                    bundle_digest=digest,
                    bundle_size=size,
                    artifact_endpoint=endpoint,
                    probation_seconds=int(probation),
                ),
            ),
        )
        return cid

    async def until_done(self, device: str, command_id: str, *, within: float = 30) -> list[int]:
        final = {K.EVENT_KIND_HEALTHY, K.EVENT_KIND_FAILED, K.EVENT_KIND_ROLLED_BACK}
        await self.wait(lambda: bool(set(self.kinds(device, command_id)) & final), within=within)
        await asyncio.sleep(0.3)  # let a trailing event (e.g. ROLLED_BACK after FAILED) arrive
        return self.kinds(device, command_id)
