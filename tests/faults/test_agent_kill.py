"""Fault: the agent (``edgeloop agent run``, a child process) SIGKILLed in the middle of a
deploy: while downloading (the gRPC stream paused at a byte mark), right after the download
(verify + unpack into the standby slot), after VERIFIED (load + self-test + switch) and on
probation after ACTIVATED.

Expected each time: the slot the agent would serve right after the kill loads and passes its
self-test (old or new model, never a half-installed one); after the restart the agent serves
that model, and the *same* command ends with a final event (HEALTHY, or FAILED/ROLLED_BACK
with a reason) without the hub sending anything new.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

from edge_agent import health_check, load_slot
from edge_agent._slots import SlotStore
from hub.mqtt.broker import EmbeddedBroker
from proto import messages_pb2 as pb
from tests.agent.harness import Observer
from tests.faults._world import CHUNK, FaultHub, agent_process, stop_process

K = pb.EventKind
FINAL = {K.EVENT_KIND_HEALTHY, K.EVENT_KIND_FAILED, K.EVENT_KIND_ROLLED_BACK}
DEVICE = "kill-1"


def _served_slot_is_whole(agent_dir: Path) -> str:
    """With the agent dead: the active slot (if any) loads and passes its self-test."""
    active = SlotStore(agent_dir / DEVICE).active()
    if active is None:
        return ""
    report = health_check(load_slot(active.path, verify_files=True), check_latency=False)
    assert report.ok, f"half-installed model in {active.path}: {report.reason}"
    return active.digest


def test_agent_sigkill_during_download_unpack_activation(
    fault_hub: FaultHub, mosquitto_fresh: EmbeddedBroker, tmp_path: Path
) -> None:
    hub, b = fault_hub, fault_hub.bundles
    agent_dir = tmp_path / "agents"
    log = tmp_path / "agent.log"

    def start() -> subprocess.Popen[bytes]:
        return agent_process(
            device_id=DEVICE,
            mqtt_url=mosquitto_fresh.url,
            public_key=b.public_key_file,
            agent_dir=agent_dir,
            fleet="default",
            log=log,
        )

    async def scenario(obs: Observer) -> list[str]:
        proc = start()
        results: list[str] = []
        try:
            await obs.online(DEVICE, within=60)
            size = b.sizes
            first = await obs.deploy(DEVICE, digest=b.v1, size=size[b.v1], endpoint=hub.endpoint)
            assert (await obs.until_done(DEVICE, first, within=60))[-1] == K.EVENT_KIND_HEALTHY

            # (digest, kill when this event of the command arrives, probation seconds)
            steps = [
                (hub.big, K.EVENT_KIND_DOWNLOADING, 0.0),
                (b.v2, K.EVENT_KIND_DOWNLOADED, 0.0),
                (hub.big, K.EVENT_KIND_VERIFIED, 0.0),
                (b.v1, K.EVENT_KIND_ACTIVATED, 60.0),
            ]
            for planned, kill_on, probation in steps:
                old = obs.states[DEVICE].active.bundle_digest
                # Each step may end either way (HEALTHY, or the old model kept): after a
                # rolled-back step the next step's bundle can be the one served, and
                # deploying that is answered HEALTHY at once ("already serving"), without the
                # event to kill on (a 60 s timeout on a loaded box). Deploy one not served.
                digest = next(d for d in (planned, hub.big, b.v2, b.v1) if d != old)
                hub.throttle.reset()
                if kill_on == K.EVENT_KIND_DOWNLOADING:
                    hub.throttle.pause_at = 3 * CHUNK  # > 25 % of the big bundle, then hold
                    hub.throttle.gate.clear()
                cid = await obs.deploy(
                    DEVICE,
                    digest=digest,
                    size=size[digest],
                    endpoint=hub.endpoint,
                    probation=probation,
                )

                def reached(c: str = cid, k: int = kill_on) -> bool:
                    events = [e for e in obs.events[DEVICE] if e.command_id == c]
                    if k == K.EVENT_KIND_DOWNLOADING:
                        return any(e.kind == k and e.progress >= 0.25 for e in events)
                    return any(e.kind == k for e in events)

                await obs.wait(reached, within=60)
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                on_disk = _served_slot_is_whole(agent_dir)
                assert on_disk in {old, digest}, (on_disk, old, digest)
                hub.throttle.reset()
                proc = start()
                # the same command ends, with nothing new from the hub
                kinds = await obs.until_done(DEVICE, cid, within=60)
                final = kinds[-1]
                assert final in FINAL, kinds
                last = [e for e in obs.events[DEVICE] if e.command_id == cid][-1]
                if final != K.EVENT_KIND_HEALTHY:
                    assert last.reason, "a failed deploy says why"
                expect = digest if final == K.EVENT_KIND_HEALTHY else old

                def serving(e: str = expect) -> bool:
                    return obs.states[DEVICE].active.bundle_digest == e

                await obs.wait(serving, within=20)
                results.append(f"{K.Name(kill_on)} -> {K.Name(final)} ({last.reason})")
                if kill_on == K.EVENT_KIND_DOWNLOADING:
                    assert hub.throttle.offsets[-1:] > [0], (results, hub.throttle.offsets)
        finally:
            stop_process(proc)
        return results

    async def main() -> list[str]:
        async with Observer(broker_port=mosquitto_fresh.port).running() as obs:
            return await scenario(obs)

    results = asyncio.run(main())
    print("\n".join(results))
