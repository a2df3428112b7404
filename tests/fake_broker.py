"""A minimal MQTT broker on loopback that sends what a test scripts, checked or not.

Mosquitto refuses to forward what MQTT forbids (a topic that is not UTF-8); a broker that
does not check exists, and the daemon must survive it. This one speaks just enough of
MQTT 3.1.1 and 5 for one subscriber: CONNACK, SUBACK, PINGRESP, and after the SUBACK the
scripted QoS 1 PUBLISHes; what is not acknowledged is sent again on the next connection,
as a persistent session would. It records connections and PUBACKs.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.services import LOOPBACK

MQTT_5 = 5
CONNECT, PUBACK, SUBSCRIBE, PINGREQ, DISCONNECT = 1, 4, 8, 12, 14


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _varint(len(body)) + body


def publish_qos1(topic: bytes, payload: bytes, packet_id: int, *, version: int) -> bytes:
    properties = b"\x00" if version == MQTT_5 else b""
    body = len(topic).to_bytes(2, "big") + topic + packet_id.to_bytes(2, "big") + properties
    return packet(0x32, body + payload)


def _read_exact(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def read_packet(connection: socket.socket) -> tuple[int, bytes]:
    """(packet type, body) of the next packet the client sends."""
    first = _read_exact(connection, 1)[0]
    length = multiplier = 0
    multiplier = 1
    while True:
        byte = _read_exact(connection, 1)[0]
        length += (byte & 0x7F) * multiplier
        multiplier *= 128
        if not byte & 0x80:
            break
    return first >> 4, _read_exact(connection, length)


@dataclass
class FakeBroker:
    """Serves `messages` (topic bytes, payload) at QoS 1 to whoever subscribes."""

    messages: list[tuple[bytes, bytes]]
    port: int = 0
    connections: int = 0
    pubacks: list[int] = field(default_factory=list)
    _server: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def unacknowledged(self) -> list[int]:
        with self._lock:
            acked = set(self.pubacks)
        return [n for n in range(1, len(self.messages) + 1) if n not in acked]

    def start(self) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((LOOPBACK, 0))
        server.listen(8)
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._accept, name="fake-broker", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError, ConnectionError):
            kind, body = read_packet(connection)
            assert kind == CONNECT
            name_length = int.from_bytes(body[:2], "big")
            version = body[2 + name_length]
            v5 = version == MQTT_5
            connection.sendall(packet(0x20, b"\x00\x00\x00" if v5 else b"\x00\x00"))
            while True:
                kind, body = read_packet(connection)
                if kind == SUBSCRIBE:
                    suback = body[:2] + (b"\x00" if v5 else b"") + b"\x01"
                    connection.sendall(packet(0x90, suback))
                    for number in self.unacknowledged:
                        topic, payload = self.messages[number - 1]
                        connection.sendall(publish_qos1(topic, payload, number, version=version))
                elif kind == PUBACK:
                    with self._lock:
                        self.pubacks.append(int.from_bytes(body[:2], "big"))
                elif kind == PINGREQ:
                    connection.sendall(packet(0xD0, b""))
                elif kind == DISCONNECT:
                    return


@contextlib.contextmanager
def running_fake_broker(messages: list[tuple[bytes, bytes]]) -> Iterator[FakeBroker]:
    broker = FakeBroker(messages)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
