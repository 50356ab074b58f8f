"""A hub side for rollout tests: real bundles in a registry, gRPC, ingest, controller, agents."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings
from hub.core.artifacts import FileArtifactStore
from hub.core.db import make_engine, session_scope
from hub.mqtt.broker import EmbeddedBroker
from hub.rollouts import service
from hub.rpc.server import start_grpc_server
from hub.tables import Device, create_all
from model_packager.signing import generate_private_key
from tests.agent.harness import Bundles, make_bundles


@dataclass(frozen=True, kw_only=True)
class Hub:
    bundles: Bundles
    bad: str  # a validly signed, healthy but much less accurate model (version "3")
    endpoint: str
    root: Path


@pytest.fixture(scope="package")
def rollout_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    from hub.datasets import service as datasets
    from hub.packaging.service import PackageOptions, package
    from hub.training.service import train

    root = tmp_path_factory.mktemp("rollout-hub")
    engine = make_engine(f"sqlite:///{root / 'hub.db'}")
    create_all(engine)
    store = FileArtifactStore(root=root / "artifacts")
    key = generate_private_key()
    with session_scope(engine) as s:
        datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
    raw = []
    for seed, params in (
        (0, {"epochs": 3, "hidden": 32}),
        (1, {"epochs": 3, "hidden": 32}),
        (2, {"epochs": 1, "hidden": 2}),
    ):
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
    bundles = make_bundles(built=raw[:2], key=key, store=store, tmp=root)
    bad = store.put_bytes(raw[2])
    bundles.sizes[bad.digest] = bad.size
    server, port = start_grpc_server(store=store, host="127.0.0.1", port=0)
    yield Hub(bundles=bundles, bad=bad.digest, endpoint=f"127.0.0.1:{port}", root=root)
    server.stop(None)


class Fleet:
    """Agents of one private fleet (unique topic level) on a shared broker."""

    def __init__(self, *, hub: Hub, broker: EmbeddedBroker, engine: Engine, tmp: Path) -> None:
        self.hub, self.broker, self.engine, self.tmp = hub, broker, engine, tmp
        self.name = f"t{uuid.uuid4().hex[:10]}"
        self.agents: dict[str, Agent] = {}
        self._stack = contextlib.AsyncExitStack()
        self._stacks: dict[str, contextlib.AsyncExitStack] = {}

    def register(self, device_id: str, *, group: str = "default", **tags: str) -> None:
        with session_scope(self.engine) as s:
            s.add(Device(id=device_id, group=group, tags=tags))

    def settings(self, device_id: str) -> AgentSettings:
        return AgentSettings(
            device_id=device_id,
            data_dir=self.tmp / "agents" / device_id,
            mqtt_url=self.broker.url,
            fleet=self.name,
            public_key=self.hub.bundles.public_key_file,
            probation_s=0.0,
            reconnect_initial_s=0.1,
            reconnect_max_s=0.5,
            telemetry_tick_s=0.1,
            telemetry_window_s=0.5,
            delivery="hub_ack",  # fleet_of runs the hub's ingest worker, which acks
            hub_ack_timeout_s=2.0,
        )

    async def start(self, device_id: str) -> Agent:
        stack = contextlib.AsyncExitStack()
        agent = await stack.enter_async_context(Agent(settings=self.settings(device_id)))
        self._stacks[device_id], self.agents[device_id] = stack, agent
        return agent

    async def stop(self, device_id: str) -> None:
        await self._stacks.pop(device_id).aclose()
        self.agents.pop(device_id)

    async def close(self) -> None:
        for device_id in list(self._stacks):
            await self.stop(device_id)

    def create(self, *, digest: str, version: str, **kw: Any) -> str:
        kw.setdefault("probation_s", 0)
        kw.setdefault("bake_s", 0.5)
        with session_scope(self.engine) as s:
            r = service.create_rollout(
                s,
                model="digits-mlp",
                version=version,
                bundle_digest=digest,
                bundle_size=self.hub.bundles.sizes[digest],
                **kw,
            )
            return r.id

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        from hub.rollouts.views import rollout_view

        with session_scope(self.engine) as s:
            return rollout_view(s, service.get_rollout(s, rollout_id=rollout_id))

    async def until(
        self,
        rollout_id: str,
        check: Callable[[dict[str, Any]], bool],
        *,
        within: float = 60,
        tick: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            view = self.rollout(rollout_id)
            if check(view):
                return view
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"rollout never got there: {view['state']} {view['reason']} "
                    f"{view['device_states']} {view['events'][-8:]}"
                )
            if tick is not None:
                tick()
            await asyncio.sleep(0.1)

    async def online(self, *device_ids: str, within: float = 60) -> None:
        """Until the hub has each device's online state (it subscribed to its commands
        before sending it, so a command published from now on reaches it or its session).
        ``within``: an upper bound for a loaded box, never a measurement."""
        deadline = time.monotonic() + within
        while True:
            with session_scope(self.engine) as s:
                found = s.exec(
                    select(Device.id).where(col(Device.id).in_(device_ids), col(Device.online))
                ).all()
            if set(found) == set(device_ids):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not online within {within:g}s: {set(device_ids) - set(found)}"
                )
            await asyncio.sleep(0.05)

    def serving(self, device_id: str) -> str:
        active = self.agents[device_id].slots.active()
        return active.digest if active is not None else ""


@contextlib.asynccontextmanager
async def fleet_of(
    hub: Hub,
    broker: EmbeddedBroker,
    tmp: Path,
    *,
    endpoint: str | None = None,
    capacity: Callable[[], Any] | None = None,
) -> AsyncIterator[tuple[Fleet, Any]]:
    """A fleet, with the hub's ingest and rollout controller running (threads) on SQLite.
    ``endpoint``/``capacity``: another artifact server for the deploys, and its slots."""
    from hub.ingest import IngestWorker
    from hub.rollouts.controller import RolloutController

    engine = make_engine(f"sqlite:///{tmp / 'hub.db'}")
    create_all(engine)
    fleet = Fleet(hub=hub, broker=broker, engine=engine, tmp=tmp)
    ingest = IngestWorker(
        engine=engine,
        mqtt_url=broker.url,
        fleet=fleet.name,
        client_id=f"ingest-{fleet.name}",
        batch_interval_s=0.1,
    )
    controller = RolloutController(
        engine=engine,
        mqtt_url=broker.url,
        fleet=fleet.name,
        artifact_endpoint=endpoint or hub.endpoint,
        tick_s=0.2,
        capacity=capacity,
    )
    with ingest, controller:
        try:
            yield fleet, controller
        finally:
            await fleet.close()
    engine.dispose()
