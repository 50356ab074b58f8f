"""The pre-rollout shadow phase and promotion, with real agents, broker, gRPC and ingest."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hub.core.artifacts import FileArtifactStore
from hub.core.db import session_scope
from hub.datasets.sources import load_source
from hub.mqtt.broker import EmbeddedBroker
from hub.registry import models as registry
from tests.rollouts.fleet import Fleet, Hub, fleet_of

DIGITS = load_source("sklearn:digits")


async def _traffic(fleet: Fleet, ids: list[str], stop: asyncio.Event) -> None:
    """Every device serves a few digits every 50 ms (shadowing devices also run the
    candidate on them)."""
    i = 0
    while not stop.is_set():
        for d in ids:
            if d in fleet.agents and fleet.agents[d].predictor.model is not None:
                fleet.agents[d].predict(DIGITS.features[i % 500 : i % 500 + 4])
        i += 4
        await asyncio.sleep(0.05)


def test_shadow_phase_gates_on_agreement_then_promotes(
    rollout_hub: Hub, mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    hub = rollout_hub

    async def scenario() -> None:
        async with fleet_of(hub, mosquitto, tmp_path) as (fleet, controller):
            store = FileArtifactStore(root=tmp_path / "registry")
            with session_scope(fleet.engine) as s:  # versions 1, 2, 3 known to this registry
                for n in range(3):
                    registry.register_version(
                        s, store, model_name="digits-mlp", data=f"model {n}".encode()
                    )
            ids = [f"sh-{i}" for i in range(6)]
            for i, d in enumerate(ids):
                fleet.register(d, group="a" if i % 2 else "b")
                await fleet.start(d)
            # nothing serves before v1, so its gates have no telemetry: production moves
            # only because this rollout allows an unverified promotion, and says so
            base = fleet.create(
                digest=hub.bundles.v1,
                version="1",
                selector="all",
                phases="100%",
                gates={"promote_unverified": True},
            )
            view = await fleet.until(base, lambda v: v["state"] == "completed")
            assert any(e["kind"] == "promoted" for e in view["events"])
            assert view["promotion"]["status"] == "unverified"
            with session_scope(fleet.engine) as s:
                assert registry.aliases_of(s, model_name="digits-mlp")["production"] == 1

            stop = asyncio.Event()
            driver = asyncio.create_task(_traffic(fleet, ids, stop))
            try:
                # a much less accurate candidate disagrees with v1 in shadow: it never
                # reaches phase 0, nothing serves it, and the shadows are stopped
                bad = fleet.create(
                    digest=hub.bad,
                    version="3",
                    selector="all",
                    phases="1,100%",
                    shadow={"fraction_of_devices": 0.3, "bake_s": 1.5, "min_agreement": 0.9},
                )
                assert fleet.rollout(bad)["state"] == "shadowing"
                view = await fleet.until(bad, lambda v: v["state"] == "rolled_back")
                shadow = view["shadow"]
                assert shadow["state"] == "failed" and shadow["devices"]["total"] == 2
                gates = {g["name"]: g for g in shadow["gates"]}
                agreement = gates["shadow_agreement"]
                assert not agreement["passed"] and not agreement["insufficient_data"]
                assert agreement["value"] < 0.9 and agreement["threshold"] == 0.9
                assert agreement["samples"] >= 20
                assert gates["shadow_install_failure_rate"]["passed"]
                assert "shadow_agreement" in view["reason"]
                assert view["device_states"] == {"skipped": 6}
                assert all(p["devices"]["total"] == 0 for p in view["phases"])
                await fleet.until(bad, lambda v: v["shadow"]["devices"].get("stopped") == 2)
                assert all(fleet.agents[d].predictor.shadow is None for d in ids)
                assert all(fleet.serving(d) == hub.bundles.v1 for d in ids)

                # an agreeing candidate passes its shadow phase, then the phases as usual
                good = fleet.create(
                    digest=hub.bundles.v2,
                    version="2",
                    selector="all",
                    phases="1,100%",
                    shadow={"fraction_of_devices": 0.3, "bake_s": 1.5, "min_agreement": 0.6},
                    # latency on a loaded CI machine is not what this test is about
                    gates={"max_latency_p95_increase": 100.0},
                )
                view = await fleet.until(good, lambda v: v["state"] == "completed")
            finally:
                stop.set()
                await driver
            shadow = view["shadow"]
            assert shadow["state"] == "passed" and shadow["devices"]["total"] == 2
            agreement = next(g for g in shadow["gates"] if g["name"] == "shadow_agreement")
            assert agreement["passed"] and agreement["value"] >= 0.6
            kinds = [e["kind"] for e in view["events"]]
            assert kinds.index("shadow_passed") < kinds.index("phase_started")
            assert view["device_states"] == {"healthy": 6}
            # the shadow devices are the first canaries (the same stable order)
            canary = {d["id"] for d in view["devices"] if d["phase"] == 0}
            assert canary <= set(shadow["device_ids"])
            assert all(fleet.serving(d) == hub.bundles.v2 for d in ids)
            assert "promoted" in kinds
            with session_scope(fleet.engine) as s:
                assert registry.aliases_of(s, model_name="digits-mlp")["production"] == 2
                moves = registry.alias_history(s, model_name="digits-mlp")
                assert [(m.from_version, m.to_version) for m in moves] == [(None, 1), (1, 2)]
                # v2 served traffic in its phases: the error-rate gate had data (no labels
                # flow here, so the accuracy gate's were not needed)
                assert [m.verified for m in moves] == [False, True]
            assert view["promotion"]["status"] == "verified"
            assert controller.errors == 0

    asyncio.run(scenario())
