"""A loopback TCP proxy the test controls, to cut connections between daemon and broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tests.services import LOOPBACK

CHUNK_BYTES = 64 * 1024


@dataclass
class FlakyProxy:
    """Forwards 127.0.0.1:port to a target; `cut()` drops every open connection at once."""

    target_port: int
    port: int = 0
    accepting: bool = True
    connections_total: int = 0
    _server: asyncio.Server | None = None
    _pipes: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> None:
        """Listen on a free loopback port (read it from `port`)."""
        self._server = await asyncio.start_server(self._handle, LOOPBACK, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self.cut()

    async def cut(self) -> None:
        """Close both ends of every forwarded connection, as a network failure would."""
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        self._writers.clear()
        self._pipes.clear()

    @property
    def open_connections(self) -> int:
        return len(self._writers) // 2

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.accepting:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                LOOPBACK, self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        self.connections_total += 1
        self._writers.update({writer, upstream_writer})
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(CHUNK_BYTES):
                sink.write(chunk)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(sink)
            sink.transport.abort()


@contextlib.asynccontextmanager
async def flaky_proxy(target_port: int) -> AsyncIterator[FlakyProxy]:
    """A started proxy to loopback:target_port, closed on exit."""
    proxy = FlakyProxy(target_port=target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
