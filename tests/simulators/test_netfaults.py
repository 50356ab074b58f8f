"""The fault proxy on a real Mosquitto: traffic passes, cuts and partitions break it."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from hub.mqtt.broker import EmbeddedBroker
from simulators.netfaults import FaultProxy


def test_proxy_forwards_cuts_and_partitions(mosquitto: EmbeddedBroker) -> None:
    async def run() -> None:
        async with FaultProxy(upstream=("127.0.0.1", mosquitto.port)) as proxy:
            async with aiomqtt.Client("127.0.0.1", proxy.port, identifier="nf-1") as client:
                await client.publish("sim/netfaults/ok", b"1", qos=1)  # PUBACK came back
                assert proxy.open_connections == 1 and proxy.stats.bytes_up > 0
                assert proxy.partition() == 1
                await asyncio.sleep(0.2)
                assert proxy.open_connections == 0 and proxy.stats.cut == 1
            with pytest.raises(aiomqtt.MqttError):  # refused while partitioned
                async with aiomqtt.Client(
                    "127.0.0.1", proxy.port, identifier="nf-2", timeout=2
                ) as c:
                    await c.publish("sim/netfaults/no", b"3", qos=1)
            assert proxy.stats.refused >= 1
            proxy.heal()
            async with aiomqtt.Client("127.0.0.1", proxy.port, identifier="nf-3") as client:
                await client.publish("sim/netfaults/back", b"4", qos=1)

    asyncio.run(run())
