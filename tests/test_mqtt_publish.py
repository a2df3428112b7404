"""The subscriber against a minimal broker on loopback, which sends hand-packed PUBLISHes
(MQTT 3.1.1 and MQTT 5 section 3.3) and reads what comes back byte for byte: messages
arrive as packed, and a PUBACK leaves only once the sink's `store` has returned."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator

import pytest

from groundstation.config import BrokerConfig, MqttVersion
from groundstation.ingest.mqtt import Delivery, Subscriber
from tests.services import LOOPBACK

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, DISCONNECT = 1, 2, 3, 4, 8, 9, 14
# MQTT 5 properties: Payload Format Indicator (0x01) = 1, User Property (0x26) "k" = "v".
PROPERTIES = b"\x01\x01" + b"\x26\x00\x01k\x00\x01v"


def varint(value: int) -> bytes:
    """MQTT Variable Byte Integer (3.1.1 section 2.2.3, MQTT 5 section 1.5.5)."""
    out = bytearray()
    while True:
        value, byte = divmod(value, 128)
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def publish(topic: bytes, payload: bytes, *, qos: int, mid: int, properties: bytes | None) -> bytes:
    """A PUBLISH packed by hand: fixed header, topic, packet id (QoS > 0), properties (MQTT 5)."""
    variable = struct.pack("!H", len(topic)) + topic
    if qos:
        variable += struct.pack("!H", mid)
    if properties is not None:
        variable += varint(len(properties)) + properties
    body = variable + payload
    return bytes([PUBLISH << 4 | qos << 1]) + varint(len(body)) + body


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One control packet: its type (the first byte's high nibble) and its body."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    return first >> 4, await reader.readexactly(length)


class MinimalBroker:
    """Accepts one client: CONNACK, the PUBLISHes at once (as a resumed session's backlog
    arrives), SUBACK granting QoS 1; records the packet id of every PUBACK it reads."""

    def __init__(self, publishes: list[bytes], *, mqtt5: bool) -> None:
        self._publishes = publishes
        self._mqtt5 = mqtt5
        self.pubacks: asyncio.Queue[int] = asyncio.Queue()
        self.others: list[int] = []  # types of every other packet read

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        properties = b"\x00" if self._mqtt5 else b""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            kind, _ = await read_packet(reader)
            assert kind == CONNECT
            connack = b"\x00\x00" + properties  # no session present, accepted
            writer.write(bytes([CONNACK << 4, len(connack)]) + connack)
            writer.write(b"".join(self._publishes))
            await writer.drain()
            while True:
                kind, body = await read_packet(reader)
                if kind == SUBSCRIBE:
                    suback = body[:2] + properties + b"\x01"
                    writer.write(bytes([SUBACK << 4, len(suback)]) + suback)
                    await writer.drain()
                elif kind == PUBACK:
                    await self.pubacks.put(struct.unpack("!H", body[:2])[0])
                else:
                    self.others.append(kind)
        writer.close()


class GatedSink:
    """A sink whose `store` waits until released, as an archive's fsync may."""

    def __init__(self) -> None:
        self.storing = asyncio.Event()
        self.release = asyncio.Event()
        self.stored: list[Delivery] = []

    async def store(self, batch: list[Delivery]) -> None:
        self.storing.set()
        await self.release.wait()
        self.stored.extend(batch)


@contextlib.asynccontextmanager
async def serving(broker: MinimalBroker) -> AsyncIterator[int]:
    server = await asyncio.start_server(broker.handle, LOOPBACK, 0)
    async with server:
        yield int(server.sockets[0].getsockname()[1])


@pytest.mark.asyncio
@pytest.mark.parametrize("mqtt_version", ["3.1.1", "5"])
async def test_messages_arrive_as_packed_and_are_acked_only_after_store(
    mqtt_version: MqttVersion,
) -> None:
    """1. the broker sends two QoS 1 PUBLISHes (ids 513 and 65535, MQTT 5 properties) and
       one QoS 0, before the SUBACK;
    2. while `store` is held, no PUBACK reaches the broker (0.5 s);
    3. released: the broker reads PUBACKs for 513 and 65535, in that order, and none for
       the QoS 0 message; the sink holds all three with topic, payload, QoS and id as packed.
    """
    mqtt5 = mqtt_version == "5"
    properties = PROPERTIES if mqtt5 else None
    expected = [
        ("mars/tm/ingenuity", b"\x81\xa1v\x01", 1, 513),
        ("mars/tm/perseverance", b"x" * 300, 1, 65535),
        ("mars/tm/ingenuity", b"", 0, 0),
    ]
    broker = MinimalBroker(
        [
            publish(topic.encode(), payload, qos=qos, mid=mid, properties=properties)
            for topic, payload, qos, mid in expected
        ],
        mqtt5=mqtt5,
    )
    sink = GatedSink()
    stop = asyncio.Event()
    async with serving(broker) as port:
        config = BrokerConfig(
            host=LOOPBACK, port=port, mqtt_version=mqtt_version, client_id="ack-test"
        )
        subscriber = Subscriber(config, sink, batch_max_messages=100, batch_max_bytes=1 << 20)
        running = asyncio.create_task(subscriber.run(stop))
        try:
            await asyncio.wait_for(sink.storing.wait(), 10)
            await asyncio.sleep(0.5)
            assert broker.pubacks.empty(), "a PUBACK left before the archive returned"
            sink.release.set()
            acked = [await asyncio.wait_for(broker.pubacks.get(), 10) for _ in range(2)]
            await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)
    assert acked == [513, 65535]
    assert broker.pubacks.empty()
    assert broker.others == [DISCONNECT]  # on stop, after the PUBACKs
    stored = [(d.topic, d.payload, d.qos, d.mid) for d in sink.stored]
    assert stored == expected
