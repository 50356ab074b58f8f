"""Bundle signing key rotation: a real agent on a real Mosquitto, bundles over real gRPC.

Only signed bundles activate, and a device trusts a new key only when told so by a
``RotateKey`` command signed with the key it trusts now, for its own device id, newer than
the last rotation it accepted. The rotated key survives a restart. Hub side: ``keys
rotate`` keeps the old key (retired) to sign those commands, what is signed afterwards
carries the new key, and the CLI and the admin API (admin scope) do it.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from starlette.testclient import TestClient

from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings
from edgeloop_cli import main as cli_main
from hub.api import create_app
from hub.core.artifacts import FileArtifactStore
from hub.core.db import make_engine, session_scope
from hub.core.settings import HubSettings
from hub.fleet.commands import CommandPublisher
from hub.mqtt.broker import EmbeddedBroker
from hub.rpc.server import start_grpc_server
from hub.security.key_rotation import KeyRotationSender, key_status, rotate_command
from hub.security.keys import (
    bundle_public_key,
    bundle_signing_key,
    retired_key,
    retired_key_ids,
    retired_key_path,
    rotate_bundle_key,
)
from hub.tables import Device, create_all
from model_packager.bundle import verify_bundle, write_bundle
from model_packager.signing import (
    Ed25519PrivateKey,
    generate_private_key,
    key_id,
    public_key_bytes,
)
from proto import messages_pb2 as pb
from tests.agent.harness import TOPICS, Observer, _rewrite
from tests.fixtures.bundles import BuiltBundle

K = pb.EventKind
DEVICE = "dev-1"
ADMIN = "k" * 40


@dataclass
class World:
    settings: HubSettings
    engine: Any
    store: FileArtifactStore
    endpoint: str
    raw: bytes  # a good bundle; re-signed per test with whatever key it needs
    tmp: Path

    def bundle(self, key: Ed25519PrivateKey) -> tuple[str, int]:
        """The good bundle re-signed with ``key``, in the artifact store: (digest, size)."""
        ref = self.store.put_bytes(_rewrite(self.raw, key=key, change=lambda f: None, tmp=self.tmp))
        return ref.digest, ref.size

    def agent_settings(self, broker: EmbeddedBroker, key_file: Path) -> AgentSettings:
        return AgentSettings(
            device_id=DEVICE,
            data_dir=self.tmp / "agent",
            mqtt_url=broker.url,
            public_key=key_file,
            probation_s=0.2,
            reconnect_initial_s=0.1,
            reconnect_max_s=0.5,
            telemetry_tick_s=0.1,
        )


@pytest.fixture
def world(tmp_path: Path, digits_bundle: BuiltBundle) -> Iterator[World]:
    settings = HubSettings(data_dir=tmp_path / "hub", admin_token=ADMIN)
    engine = make_engine(settings.resolved_database_url)
    create_all(engine)
    store = FileArtifactStore(root=tmp_path / "artifacts")
    server, port = start_grpc_server(store=store, host="127.0.0.1", port=0)
    try:
        yield World(
            settings=settings,
            engine=engine,
            store=store,
            endpoint=f"127.0.0.1:{port}",
            raw=digits_bundle.path.read_bytes(),
            tmp=tmp_path,
        )
    finally:
        server.stop(None)
        engine.dispose()


def _key_file(world: World) -> Path:
    """What enrolment stores on the device: the hub's current public key, hex."""
    path = world.tmp / "hub.pub"
    path.write_text(bundle_public_key(world.settings).hex() + "\n")
    return path


async def _deploy(obs: Observer, world: World, key: Ed25519PrivateKey) -> pb.DeploymentEvent:
    digest, size = world.bundle(key)
    cid = await obs.deploy(DEVICE, digest=digest, size=size, endpoint=world.endpoint)
    await obs.until_done(DEVICE, cid)
    return [e for e in obs.events[DEVICE] if e.command_id == cid][-1]


async def _send(obs: Observer, command: pb.Command) -> pb.DeploymentEvent:
    """Publish a command; the final event (HEALTHY or FAILED) it gets this time."""
    final = {K.EVENT_KIND_HEALTHY, K.EVENT_KIND_FAILED}

    def answers() -> list[pb.DeploymentEvent]:
        mine = [e for e in obs.events[DEVICE] if e.command_id == command.command_id]
        return [e for e in mine if e.kind in final]

    before = len(answers())
    await obs.command(DEVICE, command)
    await obs.wait(lambda: len(answers()) > before, within=10)
    return answers()[-1]


def _record_state(world: World, state: pb.AgentState) -> None:
    """What ingest does with a device's retained state (protobuf JSON in Device.state)."""
    with session_scope(world.engine) as s:
        device = s.get(Device, state.device_id) or Device(id=state.device_id)
        device.state, device.online = MessageToDict(state), state.online
        s.add(device)


def test_rotation_activates_only_new_key_bundles_and_survives_restart(
    world: World, mosquitto_fresh: EmbeddedBroker
) -> None:
    old = bundle_signing_key(world.settings)
    key_file = _key_file(world)
    publisher = CommandPublisher(mqtt_url=mosquitto_fresh.url, topics=TOPICS)
    publisher.start()
    sender = KeyRotationSender(
        engine=world.engine, data_dir=world.settings.data_dir, publisher=publisher, resend_s=0.0
    )

    async def scenario() -> None:
        async with Observer(broker_port=mosquitto_fresh.port).running() as obs:
            async with Agent(settings=world.agent_settings(mosquitto_fresh, key_file)) as agent:
                await obs.online(DEVICE)
                assert obs.states[DEVICE].bundle_key_id == key_id(old)
                _record_state(world, obs.states[DEVICE])
                assert sender.tick() == 0  # nothing retired yet: nothing to say

                rotation = rotate_bundle_key(world.settings.data_dir)
                new = bundle_signing_key(world.settings)
                assert rotation.new_key_id == key_id(new) != key_id(old)
                assert sender.tick() == 1
                await obs.wait(
                    lambda: obs.states[DEVICE].bundle_key_id == rotation.new_key_id, within=10
                )
                await obs.wait(
                    lambda: any(
                        e.command_id.startswith("rotate-") and e.kind == K.EVENT_KIND_HEALTHY
                        for e in obs.events[DEVICE]
                    ),
                    within=10,
                )
                assert agent.trust.rotations == 1 and agent.trust.refused == 0

                # the hub sees the new id in the state: it sends nothing more
                _record_state(world, obs.states[DEVICE])
                assert sender.tick() == 0

                ok = await _deploy(obs, world, new)
                assert ok.kind == K.EVENT_KIND_HEALTHY, ok
                refused = await _deploy(obs, world, old)
                assert refused.kind == K.EVENT_KIND_FAILED
                assert "BundleSignatureError" in refused.reason, refused.reason
                served = obs.states[DEVICE].active.bundle_digest

            # restart: the agent starts on the rotated key, not on hub.pub's old one
            async with Agent(settings=world.agent_settings(mosquitto_fresh, key_file)) as agent:
                await obs.wait(
                    lambda: (
                        obs.states[DEVICE].online
                        and obs.states[DEVICE].bundle_key_id == key_id(new)
                    ),
                    within=15,
                )
                assert agent.trust.key_id == key_id(new)
                again = await _deploy(obs, world, old)
                assert again.kind == K.EVENT_KIND_FAILED and "Signature" in again.reason
                assert obs.states[DEVICE].active.bundle_digest == served

    try:
        asyncio.run(scenario())
    finally:
        publisher.stop()


def test_forged_misdirected_and_replayed_rotations_are_refused(
    world: World, mosquitto_fresh: EmbeddedBroker
) -> None:
    trusted = bundle_signing_key(world.settings)
    key_file = _key_file(world)
    attacker = generate_private_key()
    new = generate_private_key()
    new_raw = public_key_bytes(new)

    async def scenario() -> None:
        async with (
            Observer(broker_port=mosquitto_fresh.port).running() as obs,
            Agent(settings=world.agent_settings(mosquitto_fresh, key_file)) as agent,
        ):
            await obs.online(DEVICE)

            # signed by a key the device does not trust, claiming to be the trusted one
            forged = rotate_command(device_id=DEVICE, signer=attacker, new_public_key=new_raw)
            forged.rotate_key.signer_key_id = key_id(trusted)
            event = await _send(obs, forged)
            assert event.kind == K.EVENT_KIND_FAILED and "does not verify" in event.reason
            # honestly named attacker key
            other = rotate_command(device_id=DEVICE, signer=attacker, new_public_key=new_raw)
            event = await _send(obs, other)
            assert event.kind == K.EVENT_KIND_FAILED and "trusts" in event.reason
            assert agent.trust.key_id == key_id(trusted) and agent.trust.refused == 2

            # signed by the trusted key, but for another device: the device id is bound
            theirs = rotate_command(device_id="dev-2", signer=trusted, new_public_key=new_raw)
            theirs.device_id = DEVICE  # re-addressed on the way
            event = await _send(obs, theirs)
            assert event.kind == K.EVENT_KIND_FAILED and "does not verify" in event.reason
            # and with no device id at all
            blank = rotate_command(device_id="", signer=trusted, new_public_key=new_raw)
            event = await _send(obs, blank)
            assert event.kind == K.EVENT_KIND_FAILED and "device" in event.reason
            # the command id is bound too: a valid command's signature under another id
            valid = rotate_command(device_id=DEVICE, signer=trusted, new_public_key=new_raw)
            moved = pb.Command()
            moved.CopyFrom(valid)
            moved.command_id = f"rotate-{uuid.uuid4().hex}"
            event = await _send(obs, moved)
            assert event.kind == K.EVENT_KIND_FAILED and "does not verify" in event.reason
            assert agent.trust.key_id == key_id(trusted) and agent.trust.refused == 5
            # the digest-and-signature rule still holds: the untrusted new key activates nothing
            assert (await _deploy(obs, world, new)).kind == K.EVENT_KIND_FAILED

            # the valid one is accepted ...
            event = await _send(obs, valid)
            assert event.kind == K.EVENT_KIND_HEALTHY and key_id(new) in event.reason
            assert agent.trust.key_id == key_id(new)
            # ... a redelivery of it is acknowledged, not acted on again
            event = await _send(obs, valid)
            assert "repeated" in event.reason and agent.trust.rotations == 1
            # an old rotation signed by the key the device left is refused
            stale = rotate_command(
                device_id=DEVICE, signer=trusted, new_public_key=public_key_bytes(attacker)
            )
            event = await _send(obs, stale)
            assert event.kind == K.EVENT_KIND_FAILED and "trusts" in event.reason
            # signed by the new key but not newer than the accepted rotation
            older = rotate_command(
                device_id=DEVICE,
                signer=new,
                new_public_key=public_key_bytes(generate_private_key()),
                issued_at=valid.issued_at,
            )
            event = await _send(obs, older)
            assert event.kind == K.EVENT_KIND_FAILED and "not after" in event.reason
            # and back to a key it already left, even if newer and signed by the new key
            back = rotate_command(
                device_id=DEVICE, signer=new, new_public_key=public_key_bytes(trusted)
            )
            event = await _send(obs, back)
            assert event.kind == K.EVENT_KIND_FAILED and "already rotated away" in event.reason
            assert agent.trust.key_id == key_id(new) and agent.trust.refused == 8
            assert obs.states[DEVICE].bundle_key_id == key_id(new)
            # garbage in the body does not stop the agent
            junk = pb.Command(
                command_id="junk",
                device_id=DEVICE,
                issued_at=int(time.time() * 1000),
                rotate_key=pb.RotateKey(new_public_key=b"short", signature=b"x"),
            )
            event = await _send(obs, junk)
            assert event.kind == K.EVENT_KIND_FAILED and agent.trust.key_id == key_id(new)

    asyncio.run(scenario())


class _Recorder:
    def __init__(self) -> None:
        self.commands: list[pb.Command] = []

    def publish(self, command: pb.Command) -> None:
        self.commands.append(command)


def _device(world: World, device_id: str, *, key: str, online: bool) -> None:
    with session_scope(world.engine) as s:
        row = s.get(Device, device_id) or Device(id=device_id)
        row.state = {"deviceId": device_id, "bundleKeyId": key} if key else {}
        row.online = online
        s.add(row)


def test_sender_tells_each_device_behind_once_and_again_when_it_returns(world: World) -> None:
    data_dir = world.settings.data_dir
    first = key_id(bundle_signing_key(world.settings))
    sent = _Recorder()
    sender = KeyRotationSender(engine=world.engine, data_dir=data_dir, publisher=sent)
    _device(world, "on-old", key=first, online=True)
    _device(world, "off-old", key=first, online=False)
    _device(world, "never", key="", online=False)
    _device(world, "alien", key="ed25519:0123456789abcdef", online=True)
    assert sender.tick() == 0

    rotate_bundle_key(data_dir)
    second = key_id(bundle_signing_key(world.settings))
    assert sender.tick() == 3  # not "alien": this hub never had its key
    by_device = {c.device_id: c.rotate_key for c in sent.commands}
    assert set(by_device) == {"on-old", "off-old", "never"}
    assert all(r.signer_key_id == first and r.new_key_id == second for r in by_device.values())
    assert sender.tick() == 0  # sent; the device has not answered yet

    _device(world, "off-old", key=first, online=True)  # came back, still on the old key
    assert sender.tick() == 1 and sent.commands[-1].device_id == "off-old"
    _device(world, "on-old", key=second, online=True)
    _device(world, "off-old", key=second, online=True)
    assert sender.tick() == 0

    # a second rotation: a device that missed it is told with the key it reports
    rotate_bundle_key(data_dir)
    third = key_id(bundle_signing_key(world.settings))
    _device(world, "never", key=first, online=True)  # two rotations behind
    sent.commands.clear()
    assert sender.tick() == 3
    signers = {c.device_id: c.rotate_key.signer_key_id for c in sent.commands}
    assert signers == {"on-old": second, "off-old": second, "never": first}
    assert {c.rotate_key.new_key_id for c in sent.commands} == {third}

    status = key_status(world.engine, data_dir)
    assert status["key_id"] == third and status["retired"] == [first, second]
    assert status["devices"]["alien"]["status"] == "behind"


def test_rotate_retires_the_old_key_and_signs_with_the_new(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = world.settings.data_dir
    old = bundle_signing_key(world.settings)
    bundle_before = world.tmp / "before.zip"
    write_bundle(
        bundle_before, manifest={"name": "m", "version": 1}, files={"a.bin": b"x"}, signing_key=old
    )

    code = cli_main(["--data-dir", str(data_dir), "keys", "rotate", "--json"])
    rotated = json.loads(capsys.readouterr().out)
    assert code == 0 and rotated["retired_key_id"] == key_id(old)
    new = bundle_signing_key(world.settings)
    assert rotated["key_id"] == key_id(new) and rotated["public_key"] == public_key_bytes(new).hex()
    # the old key is kept, private (0600), under its key id; enrolment hands out the new one
    kept = retired_key_path(data_dir, key_id(old))
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    held = retired_key(data_dir, key_id(old))
    assert held is not None and key_id(held) == key_id(old)
    assert retired_key_ids(data_dir) == [key_id(old)]
    assert bundle_public_key(world.settings) == public_key_bytes(new)

    # what the hub signs now verifies with the new key only; older bundles with the old
    bundle_after = world.tmp / "after.zip"
    write_bundle(
        bundle_after, manifest={"name": "m", "version": 2}, files={"a.bin": b"x"}, signing_key=new
    )
    assert verify_bundle(bundle_after, public_key=public_key_bytes(new)).valid
    assert not verify_bundle(bundle_after, public_key=public_key_bytes(old)).valid
    assert not verify_bundle(bundle_before, public_key=public_key_bytes(new)).valid

    # `bundle verify` from the data dir: the new bundle by the current key, the old one by
    # the retired key (said so), a bundle signed by neither stays invalid
    code = cli_main(["--data-dir", str(data_dir), "bundle", "verify", str(bundle_after), "--json"])
    verdict = json.loads(capsys.readouterr().out)
    assert code == 0 and verdict["key_id"] == key_id(new) and not verdict["retired_key"]
    code = cli_main(["--data-dir", str(data_dir), "bundle", "verify", str(bundle_before), "--json"])
    verdict = json.loads(capsys.readouterr().out)
    assert code == 0 and verdict["key_id"] == key_id(old) and verdict["retired_key"] is True
    stranger = world.tmp / "stranger.zip"
    write_bundle(
        stranger,
        manifest={"name": "m", "version": 3},
        files={"a.bin": b"x"},
        signing_key=generate_private_key(),
    )
    code = cli_main(["--data-dir", str(data_dir), "bundle", "verify", str(stranger), "--json"])
    assert code == 1 and json.loads(capsys.readouterr().out)["valid"] is False

    code = cli_main(["--data-dir", str(data_dir), "keys", "show", "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert code == 0 and shown["key_id"] == key_id(new) and shown["retired"] == [key_id(old)]

    # the admin API: rotate needs the admin scope; a read token may only look
    with TestClient(
        create_app(world.settings), headers={"Authorization": f"Bearer {ADMIN}"}
    ) as client:
        token = client.post("/api/v1/tokens", json={"name": "ro", "scope": "read"}).json()
        read = {"Authorization": f"Bearer {token['token']}"}
        assert client.get("/api/v1/keys", headers=read).json()["key_id"] == key_id(new)
        assert client.post("/api/v1/keys/rotate", headers=read).status_code == 403
        assert key_id(bundle_signing_key(world.settings)) == key_id(new)
        answer = client.post("/api/v1/keys/rotate")
        assert answer.status_code == 200, answer.text
        assert answer.json()["retired_key_id"] == key_id(new)
        newest = bundle_signing_key(world.settings)
        assert answer.json()["key_id"] == key_id(newest)
        assert retired_key_ids(data_dir) == [key_id(old), key_id(new)]


def test_stored_rotation_wins_over_the_enrolment_key_but_not_a_new_enrolment(
    tmp_path: Path,
) -> None:
    from edge_agent._trust import TRUSTED_KEY_FILE, TrustedKey

    first, second, other = (generate_private_key() for _ in range(3))
    configured = public_key_bytes(first)
    trust = TrustedKey(configured=configured, device_dir=tmp_path, device_id=DEVICE)
    command = rotate_command(
        device_id=DEVICE, signer=first, new_public_key=public_key_bytes(second)
    )
    assert trust.rotate(command) and trust.key_id == key_id(second)
    stored = tmp_path / TRUSTED_KEY_FILE
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    # a restart with hub.pub still holding the first key: the rotation stands
    again = TrustedKey(configured=configured, device_dir=tmp_path, device_id=DEVICE)
    assert again.key_id == key_id(second)
    assert again.rotate(command) is False  # already trusting it
    # enrolled again with an unrelated key: the operator's key wins
    fresh = TrustedKey(configured=public_key_bytes(other), device_dir=tmp_path, device_id=DEVICE)
    assert fresh.key_id == key_id(other)
    # a damaged record is ignored, never trusted
    stored.write_text("{not json")
    damaged = TrustedKey(configured=configured, device_dir=tmp_path, device_id=DEVICE)
    assert damaged.key_id == key_id(first)
