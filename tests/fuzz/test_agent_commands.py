"""Fuzzing the agent's command path: a real agent on a real broker gets garbage, truncated and
structurally valid but nonsensical commands (hypothesis), and keeps working: garbage is
counted, every decodable command for it is answered with an event, nothing else is acted on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings
from hub.core.artifacts import FileArtifactStore
from hub.mqtt.broker import EmbeddedBroker
from hub.rpc.server import start_grpc_server
from model_packager.signing import generate_private_key, public_key_bytes
from proto import messages_pb2 as pb
from tests.agent.harness import Observer

DEV = "fuzz-dev"
HEX = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
DIGEST = st.one_of(HEX.map(lambda h: f"sha256:{h}"), st.text(max_size=20))
IDS = st.text(alphabet="abcdef0123456789-", max_size=12)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = FileArtifactStore(root=tmp_path_factory.mktemp("artifacts"))
    server, port = start_grpc_server(store=store, host="127.0.0.1", port=0)
    yield f"127.0.0.1:{port}"
    server.stop(None)


def commands(endpoint: str) -> st.SearchStrategy[pb.Command]:
    deploy = st.builds(
        lambda d, size, model, version: pb.Command(
            deploy=pb.Deploy(
                bundle_digest=d,
                bundle_size=size,
                model=model,
                version=version,
                artifact_endpoint=endpoint,
                probation_seconds=0,
            )
        ),
        DIGEST,
        st.integers(0, 2**40),
        st.text(max_size=8),
        st.text(max_size=8),
    )
    rollback = st.builds(
        lambda v, r: pb.Command(rollback=pb.Rollback(to_version=v, reason=r)),
        st.text(max_size=8),
        st.text(max_size=30),
    )
    shadow = st.builds(
        lambda d, f, stop: pb.Command(
            shadow=pb.Shadow(
                bundle_digest=d, sample_fraction=f, stop=stop, artifact_endpoint=endpoint
            )
        ),
        DIGEST,
        st.floats(allow_nan=True, allow_infinity=True, width=32),
        st.booleans(),
    )
    config = st.builds(
        lambda kv: pb.Command(config=pb.Config(settings=kv)),
        st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=3),
    )
    empty = st.just(pb.Command())

    def finish(command: pb.Command, cid: str, device: str, at: int) -> pb.Command:
        command.command_id, command.device_id, command.issued_at = cid, device, at
        return command

    return st.builds(
        finish,
        st.one_of(deploy, rollback, shadow, config, empty),
        IDS,
        st.sampled_from(["", DEV, "someone-else"]),
        st.integers(-(2**63), 2**63 - 1),
    )


def payloads(endpoint: str) -> st.SearchStrategy[bytes]:
    whole = commands(endpoint).map(lambda c: c.SerializeToString())
    cut = st.tuples(whole, st.floats(0, 1)).map(lambda p: p[0][: int(len(p[0]) * p[1])])
    return st.one_of(whole, st.binary(max_size=80), whole, cut)


def _decodable(payload: bytes) -> pb.Command | None:
    command = pb.Command()
    try:
        command.ParseFromString(payload)
    except Exception:
        return None
    return command


@pytest.mark.timeout(300)
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_agent_survives_fuzzed_commands(
    data: st.DataObject, mosquitto: EmbeddedBroker, endpoint: str, tmp_path: Path
) -> None:
    corpus = data.draw(st.lists(payloads(endpoint), min_size=40, max_size=40))
    root = tmp_path / uuid.uuid4().hex
    root.mkdir()
    key_file = root / "hub.pub"
    key_file.write_bytes(public_key_bytes(generate_private_key()).hex().encode())
    device = f"{DEV}-{uuid.uuid4().hex[:6]}"
    agent_settings = AgentSettings(
        device_id=device,
        data_dir=root / "agent",
        mqtt_url=mosquitto.url,
        public_key=key_file,
        probation_s=0.1,
        reconnect_initial_s=0.1,
    )
    # aim the corpus at this run's device (ids in the corpus say DEV)
    corpus = [p.replace(DEV.encode(), device.encode()) for p in corpus]

    async def scenario() -> None:
        async with (
            Observer(broker_port=mosquitto.port).running(
                client_id=f"fuzz-{uuid.uuid4().hex[:6]}"
            ) as hub,
            Agent(settings=agent_settings) as agent,
        ):
            await hub.online(device)
            assert hub.client is not None
            topic = f"edgeloop/v1/default/devices/{device}/cmd"
            for payload in corpus:
                await hub.client.publish(topic, payload, qos=1)
            sentinel = uuid.uuid4().hex
            await hub.command(
                device,
                pb.Command(command_id=sentinel, device_id=device, config=pb.Config()),
            )
            await hub.wait(lambda: bool(hub.kinds(device, sentinel)), within=120)
            decoded = [_decodable(p) for p in corpus]
            garbage = sum(1 for c in decoded if c is None or not c.command_id)
            assert agent.malformed_commands == garbage
            ours = {
                c.command_id
                for c in decoded
                if c is not None and c.command_id and c.device_id in {"", device}
            }
            answered = {e.command_id for e in hub.events[device]}
            assert ours <= answered, f"unanswered commands: {sorted(ours - answered)}"
            assert answered <= ours | {sentinel}

    asyncio.run(scenario())
