"""A flaky network for a group of simulated devices: an asyncio TCP proxy in front of the broker.

    async with FaultProxy(upstream=("127.0.0.1", 1883)) as proxy:
        url = proxy.url                 # give this to the group's agents
        proxy.disconnect()              # cut every open connection once (they reconnect)
        proxy.partition()               # cut them and refuse new ones ...
        proxy.heal()                    # ... until healed

One proxy per group, two sockets per proxied connection; bytes are copied as they come
(no parsing), so anything the agents send before a cut either reached the broker or is
resent from their durable queue after they reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

log = logging.getLogger("edgeloop.sim.net")

CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0
    cut: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class FaultProxy:
    """Forwards ``host:port`` to ``upstream``; cuts and refuses connections on demand."""

    def __init__(self, *, upstream: tuple[str, int], host: str = "127.0.0.1", port: int = 0):
        self.upstream = upstream
        self.host, self._port = host, port
        self.stats = ProxyStats()
        self.partitioned = False
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.disconnect()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self._port}"

    @property
    def open_connections(self) -> int:
        return len(self._pipes)

    def disconnect(self) -> int:
        """Cut every open connection (the agents see a broken socket); returns how many."""
        cut = len(self._pipes)
        for task in list(self._pipes):
            task.cancel()
        self.stats.cut += cut
        return cut

    def partition(self) -> int:
        """Cut every connection and refuse new ones until :meth:`heal`."""
        self.partitioned = True
        return self.disconnect()

    def heal(self) -> None:
        self.partitioned = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.partitioned:
            self.stats.refused += 1
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        self.stats.accepted += 1
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            await asyncio.gather(
                self._copy(reader, up_writer, up=True), self._copy(up_reader, writer, up=False)
            )
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug("proxied connection ended: %s", exc)
        except asyncio.CancelledError:
            pass  # a cut: both sides are aborted below
        finally:
            self._pipes.discard(task)
            for w in (writer, up_writer):
                if w is not None:
                    w.transport.abort()

    async def _copy(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                await writer.drain()
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()
