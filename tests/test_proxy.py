"""The test proxy forwards bytes and cuts connections when told to."""

from __future__ import annotations

import asyncio

import pytest

from tests.proxy import flaky_proxy
from tests.services import LOOPBACK


@pytest.mark.asyncio
async def test_proxy_forwards_then_cuts() -> None:
    """Bytes echo through the proxy; after cut() the client sees end of stream."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    async with server, flaky_proxy(port) as proxy:
        reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        assert proxy.open_connections == 1
        await proxy.cut()
        assert await reader.read(10) == b""
        assert proxy.open_connections == 0
        writer.close()
        assert proxy.connections_total == 1
