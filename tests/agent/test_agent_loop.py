"""The agent against a real Mosquitto, a real gRPC artifact server and real signed bundles."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings
from hub.core.artifacts import DownloadLinks, FileArtifactStore, open_store
from hub.core.db import make_engine, session_scope
from hub.datasets import service as datasets
from hub.datasets.sources import load_source
from hub.mqtt.broker import EmbeddedBroker
from hub.packaging.service import PackageOptions, package
from hub.rpc.server import start_grpc_server
from hub.tables import create_all
from hub.training.service import train
from model_packager.signing import generate_private_key
from proto import messages_pb2 as pb
from tests.agent.harness import Bundles, Observer, make_bundles
from tests.fixtures.ports import free_port

K = pb.EventKind
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Bundles, str]]:
    root = tmp_path_factory.mktemp("hub")
    engine = make_engine(f"sqlite:///{root / 'hub.db'}")
    create_all(engine)
    store = FileArtifactStore(root=root / "artifacts")
    key = generate_private_key()
    with session_scope(engine) as s:
        datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
    raw = []
    for seed in (0, 1):
        train(
            engine,
            store,
            spec_name="digits-mlp",
            dataset="digits@1",
            params={"epochs": 3, "hidden": 32},
            seed=seed,
        )
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
    server, port = start_grpc_server(store=store, host="127.0.0.1", port=0)
    yield bundles, f"127.0.0.1:{port}"
    server.stop(None)


def _settings(
    tmp_path: Path, broker: EmbeddedBroker, bundles: Bundles, **extra: object
) -> AgentSettings:
    values: dict[str, object] = {
        "device_id": "dev-1",
        "data_dir": tmp_path / "agent",
        "mqtt_url": broker.url,
        "public_key": bundles.public_key_file,
        "probation_s": 0.2,
        "reconnect_initial_s": 0.1,
        "reconnect_max_s": 0.5,
        "telemetry_tick_s": 0.1,
    }
    return AgentSettings(**(values | extra))  # type: ignore[arg-type]


DIGITS = load_source("sklearn:digits").features


def test_deploy_verify_activate_repeat_and_rollback(
    hub: tuple[Bundles, str], mosquitto_fresh: EmbeddedBroker, tmp_path: Path
) -> None:
    bundles, endpoint = hub

    async def scenario() -> None:
        async with (
            Observer(broker_port=mosquitto_fresh.port).running() as obs,
            Agent(settings=_settings(tmp_path, mosquitto_fresh, bundles)) as agent,
        ):
            await obs.wait(lambda: obs.states.get("dev-1") is not None, within=10)
            assert obs.states["dev-1"].online
            cid = await obs.deploy(
                "dev-1", digest=bundles.v1, size=bundles.sizes[bundles.v1], endpoint=endpoint
            )
            kinds = await obs.until_done("dev-1", cid)
            steps = [k for k in kinds if k != K.EVENT_KIND_DOWNLOADING]
            assert steps == [
                K.EVENT_KIND_RECEIVED,
                K.EVENT_KIND_DOWNLOADED,
                K.EVENT_KIND_VERIFIED,
                K.EVENT_KIND_ACTIVATED,
                K.EVENT_KIND_HEALTHY,
            ], kinds
            assert K.EVENT_KIND_DOWNLOADING in kinds
            # a bundle that arrives in one chunk: "started" only, no 25/50/75 % marks
            downloading = [
                e.progress
                for e in obs.events["dev-1"]
                if e.command_id == cid and e.kind == K.EVENT_KIND_DOWNLOADING
            ]
            assert bundles.sizes[bundles.v1] < 256 * 1024 and downloading == [0.0], downloading
            await obs.wait(lambda: obs.states["dev-1"].active.bundle_digest == bundles.v1, within=5)
            first = agent.predict(DIGITS[:3])
            assert len(first.ids) == 3 and len(set(first.ids)) == 3 and first.labels is not None

            # The same command again (a QoS 1 redelivery): acknowledged, not re-installed.
            before = len(obs.events["dev-1"])
            await obs.deploy("dev-1", digest=bundles.v1, size=1, endpoint=endpoint, command_id=cid)
            await obs.wait(lambda: len(obs.events["dev-1"]) > before, within=5)
            repeat = obs.events["dev-1"][-1]
            assert repeat.kind == K.EVENT_KIND_HEALTHY and "repeated" in repeat.reason
            assert agent.rejected()["repeated_command"] == 1

            cid2 = await obs.deploy(
                "dev-1", digest=bundles.v2, size=bundles.sizes[bundles.v2], endpoint=endpoint
            )
            assert (await obs.until_done("dev-1", cid2))[-1] == K.EVENT_KIND_HEALTHY
            await obs.wait(lambda: obs.states["dev-1"].active.bundle_digest == bundles.v2, within=5)
            assert obs.states["dev-1"].standby.bundle_digest == bundles.v1

            rollback = pb.Command(
                command_id="rb-1",
                device_id="dev-1",
                rollback=pb.Rollback(to_version="previous", reason="operator"),
            )
            await obs.command("dev-1", rollback)
            await obs.wait(
                lambda: K.EVENT_KIND_ROLLED_BACK in obs.kinds("dev-1", "rb-1"), within=10
            )
            await obs.wait(lambda: obs.states["dev-1"].active.bundle_digest == bundles.v1, within=5)
            assert agent.predict(DIGITS[:1]).version == first.version

    asyncio.run(scenario())


def test_deploy_from_a_presigned_url_with_the_same_checks(
    hub: tuple[Bundles, str], mosquitto_fresh: EmbeddedBroker, tmp_path: Path, s3_url: str
) -> None:
    """The hub's S3 store (a real S3 server process) signs the URL; gRPC is unreachable, so
    the bundle can only come over HTTP; a bundle signed by another key still never verifies."""
    bundles, _endpoint = hub
    store = open_store(s3_url)
    links = DownloadLinks(store, ttl_s=300)

    def deploy(name: str) -> pb.Command:
        ref = store.put_bytes(bundles.raw[name])
        link = links(ref.digest)
        assert link is not None
        return pb.Command(
            command_id=f"url-{name}",
            device_id="dev-1",
            issued_at=int(time.time() * 1000),
            deploy=pb.Deploy(
                rollout_id="r1",
                model="digits-mlp",
                version=name,
                bundle_digest=ref.digest,
                bundle_size=ref.size,
                artifact_endpoint=f"127.0.0.1:{free_port()}",  # nothing listens: no fallback
                bundle_url=link[0],
                bundle_url_expires_at=link[1],
            ),
        )

    async def scenario() -> None:
        async with (
            Observer(broker_port=mosquitto_fresh.port).running() as obs,
            Agent(settings=_settings(tmp_path, mosquitto_fresh, bundles)) as agent,
        ):
            await obs.online("dev-1")
            await obs.command("dev-1", deploy("v1"))
            assert (await obs.until_done("dev-1", "url-v1"))[-1] == K.EVENT_KIND_HEALTHY
            assert agent.slots.active() is not None
            assert agent.slots.active().digest == bundles.v1  # type: ignore[union-attr]
            await obs.command("dev-1", deploy("foreign"))
            kinds = await obs.until_done("dev-1", "url-foreign")
            assert kinds[-1] == K.EVENT_KIND_FAILED and K.EVENT_KIND_VERIFIED not in kinds
            assert K.EVENT_KIND_DOWNLOADED in kinds  # the bytes came; the signature did not do
            assert not agent.rejected().get("url_refused")

    asyncio.run(scenario())


def test_bad_bundles_never_activate(
    hub: tuple[Bundles, str], mosquitto_fresh: EmbeddedBroker, tmp_path: Path
) -> None:
    bundles, endpoint = hub

    async def scenario() -> None:
        async with (
            Observer(broker_port=mosquitto_fresh.port).running() as obs,
            Agent(settings=_settings(tmp_path, mosquitto_fresh, bundles)) as agent,
        ):
            await obs.online("dev-1")
            cid = await obs.deploy(
                "dev-1", digest=bundles.v1, size=bundles.sizes[bundles.v1], endpoint=endpoint
            )
            assert (await obs.until_done("dev-1", cid))[-1] == K.EVENT_KIND_HEALTHY
            for name in ("tampered", "foreign"):
                digest = getattr(bundles, name)
                cid = await obs.deploy(
                    "dev-1", digest=digest, size=bundles.sizes[digest], endpoint=endpoint
                )
                kinds = await obs.until_done("dev-1", cid)
                assert kinds[-1] == K.EVENT_KIND_FAILED, (name, kinds)
                assert K.EVENT_KIND_VERIFIED not in kinds and K.EVENT_KIND_ACTIVATED not in kinds
            cid = await obs.deploy(
                "dev-1",
                digest=bundles.unhealthy,
                size=bundles.sizes[bundles.unhealthy],
                endpoint=endpoint,
            )
            kinds = await obs.until_done("dev-1", cid)
            assert K.EVENT_KIND_FAILED in kinds and kinds[-1] == K.EVENT_KIND_ROLLED_BACK, kinds
            assert K.EVENT_KIND_ACTIVATED not in kinds
            failed = [
                e
                for e in obs.events["dev-1"]
                if e.command_id == cid and e.kind == K.EVENT_KIND_FAILED
            ]
            assert "health check" in failed[0].reason
            assert agent.slots.active() is not None and agent.slots.active().digest == bundles.v1  # type: ignore[union-attr]
            assert agent.predict(DIGITS[:2]).outputs.shape == (2, 10)
            # Garbage on the command topic is counted, not fatal.
            assert obs.client is not None
            await obs.client.publish(
                "edgeloop/v1/default/devices/dev-1/cmd", b"\xff\x00garbage", qos=1
            )
            await obs.wait(lambda: agent.malformed_commands >= 1, within=5)
            assert agent.rejected()["malformed_commands"] == 1
            assert agent.predict(DIGITS[:1]).outputs.shape == (1, 10)

    asyncio.run(scenario())


def test_telemetry_survives_a_broker_outage_exactly_once(
    hub: tuple[Bundles, str], mosquitto_fresh: EmbeddedBroker, tmp_path: Path
) -> None:
    bundles, endpoint = hub

    async def scenario() -> None:
        settings = _settings(tmp_path, mosquitto_fresh, bundles, telemetry_max_predictions=5)
        async with (
            Observer(broker_port=mosquitto_fresh.port).running() as obs,
            Agent(settings=settings) as agent,
        ):
            await obs.online("dev-1")
            cid = await obs.deploy(
                "dev-1", digest=bundles.v1, size=bundles.sizes[bundles.v1], endpoint=endpoint
            )
            assert (await obs.until_done("dev-1", cid))[-1] == K.EVENT_KIND_HEALTHY
            for i in range(5):
                agent.predict(DIGITS[i : i + 1])
            await obs.wait(lambda: len(obs.telemetry["dev-1"]) >= 1, within=10)
            mosquitto_fresh.stop()  # graceful: it keeps the hub side's persistent session
            for i in range(30):  # six more windows while the broker is away
                agent.predict(DIGITS[i : i + 1])
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.0)
            held = len(agent.queue)
            assert held >= 2  # windows held on the device while the broker is away
            mosquitto_fresh.start()
            agent.flush()  # the last, partial window too
            await obs.wait(lambda: len(agent.queue) == 0, within=30)
            try:
                await obs.wait(
                    lambda: max((w.seq for w in obs.telemetry["dev-1"]), default=0) >= 1 + held,
                    within=10,
                )
            except AssertionError:
                seen = [w.seq for w in obs.telemetry["dev-1"]]
                stats = agent.session.stats
                raise AssertionError(f"held {held}, seen seqs {seen}, stats {stats}") from None
            by_seq = {w.seq: w for w in obs.telemetry["dev-1"]}
            assert sorted(by_seq) == list(range(1, max(by_seq) + 1))  # no gap
            assert sum(w.count for w in by_seq.values()) == 35  # every prediction, once

    asyncio.run(scenario())


def test_offline_device_gets_its_command_on_return(
    hub: tuple[Bundles, str], mosquitto_fresh: EmbeddedBroker, tmp_path: Path
) -> None:
    bundles, endpoint = hub

    async def scenario() -> None:
        settings = _settings(tmp_path, mosquitto_fresh, bundles)
        async with Observer(broker_port=mosquitto_fresh.port).running() as obs:
            async with Agent(settings=settings):
                await obs.wait(lambda: obs.states.get("dev-1") is not None, within=10)
            await obs.wait(lambda: not obs.states["dev-1"].online, within=5)
            cid = await obs.deploy(
                "dev-1", digest=bundles.v2, size=bundles.sizes[bundles.v2], endpoint=endpoint
            )
            await asyncio.sleep(0.3)
            async with Agent(settings=settings):
                kinds = await obs.until_done("dev-1", cid)
                assert kinds[-1] == K.EVENT_KIND_HEALTHY

    asyncio.run(scenario())


def test_sigkill_during_deploy_restarts_clean(
    hub: tuple[Bundles, str], mosquitto_fresh: EmbeddedBroker, tmp_path: Path
) -> None:
    bundles, endpoint = hub
    env = {**os.environ, "EDGELOOP_AGENT_PROBATION_S": "0.2"}
    cmd = [
        sys.executable,
        "-m",
        "edgeloop_cli",
        "agent",
        "run",
        "--device-id",
        "dev-k",
        "--mqtt-url",
        mosquitto_fresh.url,
        "--public-key",
        str(bundles.public_key_file),
        "--agent-dir",
        str(tmp_path / "agent"),
    ]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    async def scenario() -> None:
        async with Observer(broker_port=mosquitto_fresh.port).running() as obs:
            proc = start()
            try:
                await obs.wait(
                    lambda: obs.states.get("dev-k") is not None and obs.states["dev-k"].online,
                    within=30,
                )
                targets = [bundles.v1, bundles.v2, bundles.v1, bundles.v2]
                for i, digest in enumerate(targets):
                    await obs.deploy(
                        "dev-k", digest=digest, size=bundles.sizes[digest], endpoint=endpoint
                    )
                    await asyncio.sleep(
                        0.05 + 0.15 * i
                    )  # somewhere in download / install / activate
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=10)
                    proc = start()
                    # After the restart the agent serves a complete model or none, and a fresh
                    # command for the same bundle completes.
                    kinds = await obs.until_done(
                        "dev-k",
                        await obs.deploy(
                            "dev-k", digest=digest, size=bundles.sizes[digest], endpoint=endpoint
                        ),
                        within=60,
                    )
                    assert kinds[-1] == K.EVENT_KIND_HEALTHY, kinds
                    await obs.wait(
                        lambda d=digest: obs.states["dev-k"].active.bundle_digest == d, within=10
                    )
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()

    asyncio.run(scenario())
