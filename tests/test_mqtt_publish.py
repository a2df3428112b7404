"""The subscriber's own PUBLISH parsing: hand-packed from the MQTT specs, checked against
paho's parser, and the buffered socket that feeds it (no broker: a socket pair)."""

from __future__ import annotations

import select
import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet as paho_packet
from paho.mqtt.enums import MQTTProtocolVersion

from groundstation.mqtt import _READ_CHUNK_BYTES, Received, _BufferedReads, parse_publish


def varint(value: int) -> bytes:
    """MQTT Variable Byte Integer (3.1.1 section 2.2.3, MQTT 5 section 1.5.5)."""
    out = bytearray()
    while True:
        value, byte = divmod(value, 128)
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def publish(
    topic: bytes, payload: bytes, *, qos: int = 1, mid: int = 1, properties: bytes | None = None
) -> bytes:
    """A PUBLISH packed by hand: fixed header, topic, packet id (QoS > 0), properties (MQTT 5)."""
    variable = struct.pack("!H", len(topic)) + topic
    if qos:
        variable += struct.pack("!H", mid)
    if properties is not None:
        variable += varint(len(properties)) + properties
    body = variable + payload
    return bytes([0x30 | qos << 1]) + varint(len(body)) + body


# MQTT 5 properties: Payload Format Indicator (0x01) = 1, User Property (0x26) "k" = "v".
PROPERTIES = b"\x01\x01" + b"\x26\x00\x01k\x00\x01v"


@pytest.mark.parametrize(
    ("packet", "mqtt5", "expected"),
    [
        (publish(b"mars/tm/ingenuity", b"\x81\xa1v\x01", mid=513), False,
         Received("mars/tm/ingenuity", b"\x81\xa1v\x01", 1, 513)),
        (publish(b"a/b", b"", qos=0), False, Received("a/b", b"", 0, 0)),
        (publish(b"a/b", b"x" * 300, mid=65535, properties=PROPERTIES), True,
         Received("a/b", b"x" * 300, 1, 65535)),
        (publish(b"a/b", b"p", properties=b""), True, Received("a/b", b"p", 1, 1)),
    ],
)  # fmt: skip
def test_parse_publish_reads_what_the_spec_packs(
    packet: bytes, mqtt5: bool, expected: Received
) -> None:
    data = b"\xd0\x00" + packet + b"\x40"  # a PINGRESP before, a PUBACK's first byte after
    assert parse_publish(data, 2, len(data), mqtt5=mqtt5) == (expected, 2 + len(packet))
    assert parse_publish(memoryview(data), 2, len(data), mqtt5=mqtt5) == (
        expected,
        2 + len(packet),
    )


@pytest.mark.parametrize(
    "packet",
    [
        publish(b"a/b", b"p", qos=2),  # QoS 2: paho's to answer with PUBREC
        b"\x40\x02\x00\x01",  # PUBACK
        b"\xd0\x00",  # PINGRESP
        publish(b"", b"p"),  # empty topic (an alias, never asked for)
        publish(b"\xff\xfe", b"p"),  # topic not UTF-8
        b"\x32\x01\x00",  # remaining length too short for a topic length
        b"\x32\xff\xff\xff\xff\x01",  # remaining length of five bytes
        b"\x32\x05\x00\x09abc",  # topic longer than the packet
    ],
)
def test_parse_publish_leaves_everything_else_to_paho(packet: bytes) -> None:
    assert parse_publish(packet, 0, len(packet), mqtt5=False) is None


@settings(max_examples=200, deadline=None)
@given(
    topic=st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t),
    payload=st.binary(max_size=2000),
    header=st.tuples(st.integers(0, 1), st.integers(1, 65535), st.booleans()),
    cut=st.integers(0, 3000),
)
def test_parse_publish_agrees_with_paho_and_waits_for_whole_packets(
    topic: str, payload: bytes, header: tuple[int, int, bool], cut: int
) -> None:
    qos, mid, mqtt5 = header
    packet = publish(
        topic.encode(), payload, qos=qos, mid=mid, properties=PROPERTIES if mqtt5 else None
    )
    parsed = parse_publish(packet, 0, len(packet), mqtt5=mqtt5)
    assert parsed is not None
    message, end = parsed
    assert end == len(packet)
    header_bytes = 1 + len(varint(len(packet) - 1 - len(varint(len(packet)))))
    protocol = MQTTProtocolVersion.MQTTv5 if mqtt5 else MQTTProtocolVersion.MQTTv311
    theirs = paho_packet.decode_publish(packet[0], packet[header_bytes:], protocol)
    assert (message.topic.encode(), message.payload, message.qos, message.mid) == (
        theirs.topic,
        theirs.payload,
        theirs.qos,
        theirs.mid,
    )
    if cut < len(packet):  # any prefix is not yet a packet
        assert parse_publish(packet, 0, cut, mqtt5=mqtt5) is None


def socket_pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return ours, theirs


def test_buffered_reads_join_a_publish_split_across_reads() -> None:
    ours, theirs = socket_pair()
    with ours, theirs:
        reads = _BufferedReads(ours)
        first, second = publish(b"t/1", b"a" * 1000), publish(b"t/2", b"b" * 5000, mid=2)
        theirs.sendall(first + second[:100])
        assert reads.take_publish(mqtt5=False) == Received("t/1", b"a" * 1000, 1, 1)
        assert reads.take_publish(mqtt5=False) is None  # half a PUBLISH: nothing yet
        assert reads.pending() == 100
        theirs.sendall(second[100:])
        assert reads.take_publish(mqtt5=False) == Received("t/2", b"b" * 5000, 1, 2)
        assert reads.take_publish(mqtt5=False) is None
        assert reads.pending() == 0


def test_buffered_reads_leave_other_packets_and_huge_publishes_to_paho() -> None:
    ours, theirs = socket_pair()
    with ours, theirs:
        reads = _BufferedReads(ours)
        huge = publish(b"t/h", b"h" * (3 * _READ_CHUNK_BYTES))  # more than the buffer holds
        # More than a socket pair buffers: sent while we read.
        sender = threading.Thread(target=theirs.sendall, args=(b"\xd0\x00" + huge,))
        sender.start()
        select.select([ours], [], [], 10.0)  # the first bytes are there
        # A PINGRESP first: not ours. paho reads it through `recv`, byte by byte.
        assert reads.take_publish(mqtt5=False) is None
        assert reads.recv(1) + reads.recv(1) == b"\xd0\x00"
        # The huge PUBLISH cannot be whole in the buffer: paho gets it, in order and whole.
        assert reads.take_publish(mqtt5=False) is None
        got = b""
        while len(got) < len(huge):
            try:
                got += reads.recv(len(huge) - len(got))
            except BlockingIOError:
                select.select([ours], [], [], 1.0)  # nothing yet: the sender is still sending
        sender.join()
        assert got == huge


def test_buffered_reads_report_the_end_of_the_stream_as_a_socket_does() -> None:
    ours, theirs = socket_pair()
    with ours:
        reads = _BufferedReads(ours)
        theirs.sendall(publish(b"t/1", b"x")[:5])
        theirs.close()
        assert reads.take_publish(mqtt5=False) is None
        assert reads.recv(100) == publish(b"t/1", b"x")[:5]
        assert reads.recv(100) == b""  # paho reads this as the connection lost
    idle, peer = socket_pair()
    with idle, peer, pytest.raises(BlockingIOError):  # nothing to read yet, as a socket says
        _BufferedReads(idle).recv(1)
