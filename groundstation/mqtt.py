"""The MQTT subscriber: persistent QoS 1 session, manual acknowledgement, reconnect with backoff.

No data loss needs the PUBACK to leave only after the payload is in the
archive. aiomqtt 2.x acknowledges on receipt and cannot be told otherwise, and its bounded
queue drops messages it has already acknowledged (aiomqtt issue #345; the fix, PR #346, is
not merged). paho-mqtt >= 2.0 has manual acknowledgement (`manual_ack_set`, `ack`), and
aiomqtt drives a paho client it keeps as `Client._client`; we switch it on there, as the
workaround in issue #345 does, and send a batch's PUBACKs ourselves in one write
(`_ack`). Those private accesses are confined to this module.

Backpressure: every message we have not acknowledged counts against the broker's in-flight
window (MQTT 5 Receive Maximum, which we send in CONNECT; on MQTT 3.1.1 the broker's own
limit, Mosquitto's `max_inflight_messages`). So aiomqtt's queue, left unbounded so that it
never discards, holds at most that window: when the pipeline stops taking batches, acks
stop, and the broker stops sending and queues for us instead.

Mosquitto 2.0.11 does not keep to that window when a persistent session resumes: it sends
the whole offline backlog at once (measured: 1,073 unacknowledged 65 KiB messages queued
in aiomqtt with Receive Maximum 100). So the subscriber bounds its inbox itself: at
`receive_maximum` queued messages it stops reading the socket (TCP flow control then
holds the broker back), and resumes below half of that.

Stopping reads nothing more: the broker keeps what it has not had acknowledged, and the
connection closes only after the broker has processed our last PUBACKs (`_stop_reading`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, NamedTuple, Protocol, TypeVar, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from groundstation.config import BrokerConfig, make_tls_context

logger = logging.getLogger(__name__)

QOS: Final = 1  # ICD section 2
_DISCARD_CHUNK_BYTES: Final = 1 << 20  # read size while waiting for the broker to close
_READ_CHUNK_BYTES: Final = 1 << 18  # socket read size: several messages per system call
_PUBLISH: Final = 3  # control packet type, the fixed header's high nibble
_SUBSCRIBE_FAILED: Final = 0x80  # SUBACK failure (MQTT 3.1.1 3.9.3; MQTT 5 codes >= 0x80)
# PUBACK: fixed header, remaining length 2, packet identifier (MQTT 3.1.1 3.4; on MQTT 5 the
# reason code may be left out when it is 0, Success: 3.4.2.1), as paho packs it.
_PUBACK: Final = struct.Struct("!BBH")
_PUBACK_REMAINING: Final = 2

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message from the broker, not yet acknowledged."""

    topic: str
    payload: bytes
    received_at: float  # wall clock, UTC seconds
    qos: int
    mid: int


class Received(NamedTuple):
    """One PUBLISH as it waits in the inbox: parsed by us, or by paho (`_Inbox.put_nowait`)."""

    topic: str
    payload: bytes
    qos: int
    mid: int


def parse_publish(
    data: bytes | memoryview, at: int, stop: int, *, mqtt5: bool
) -> tuple[Received, int] | None:
    """A whole QoS 0 or 1 PUBLISH in `data[at:stop]`, and where it ends; None for anything else.

    The fast path of `_read_available` (MQTT 3.1.1 section 3.3, MQTT 5 section 3.3): one copy
    of the payload, against paho's five and its per-message callbacks. Whatever this does
    not take (another packet type, QoS 2, a packet not yet whole, a malformed one, a topic
    that is not UTF-8) is left where it is, for paho to read and judge as it always has.
    Properties are skipped: we ask for none (no Topic Alias Maximum, so no alias arrives).
    """
    if stop - at < 2 or data[at] >> 4 != _PUBLISH or (data[at] >> 1) & 3 > QOS:
        return None
    qos = (data[at] >> 1) & 3
    remaining, start = _varint(data, at + 1, stop)
    if remaining is None:
        return None
    end = start + remaining
    if end > stop or remaining < 2:
        return None
    topic_end = start + 2 + (data[start] << 8 | data[start + 1])
    position = topic_end + (2 if qos else 0)
    if position > end or topic_end == start + 2:  # an empty topic needs an alias, or is wrong
        return None
    mid = data[topic_end] << 8 | data[topic_end + 1] if qos else 0
    if mqtt5:
        properties, position = _varint(data, position, end)
        if properties is None or position + properties > end:
            return None
        position += properties
    try:
        topic = str(data[start + 2 : topic_end], "utf-8")
    except UnicodeDecodeError:
        return None
    return Received(topic, bytes(data[position:end]), qos, mid), end


def _varint(data: bytes | memoryview, at: int, stop: int) -> tuple[int | None, int]:
    """An MQTT Variable Byte Integer at `at` (1-4 bytes, before `stop`), and where it ends."""
    value = 0
    for index in range(at, min(stop, at + 4)):
        byte = data[index]
        value |= (byte & 0x7F) << (7 * (index - at))
        if byte < 0x80:
            return value, index + 1
    return None, at


class Sink(Protocol[_T]):
    """Where batches go: `store` (archive) before the ack, `forward` (decode) after it."""

    async def store(self, batch: list[Delivery]) -> _T: ...

    async def forward(self, stored: _T) -> None: ...


@dataclass(frozen=True, slots=True)
class SubscriberStatus:
    """For gs_mqtt_connected and gs_mqtt_reconnects_total (ICD section 5)."""

    connected: bool
    reconnects_total: int
    unacked_total: int  # acks that could not be sent: the connection dropped meanwhile


def backoff_delay_s(
    attempt: int, *, minimum_s: float, maximum_s: float, rng: random.Random
) -> float:
    """Capped exponential backoff with jitter: uniform in [cap/2, cap], cap = min * 2**attempt."""
    cap = min(maximum_s, minimum_s * 2.0 ** min(attempt, 32))
    return rng.uniform(cap / 2, cap)


class Subscriber(Generic[_T]):
    """Keeps one persistent session with the broker and feeds a Sink until `stop` is set."""

    def __init__(
        self,
        config: BrokerConfig,
        sink: Sink[_T],
        *,
        batch_max_messages: int,
        batch_max_bytes: int,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._sink = sink
        self._batch_max_messages = batch_max_messages
        self._batch_max_bytes = batch_max_bytes
        self._inbox_high = config.receive_maximum
        self._inbox_low = config.receive_maximum // 2
        self._paused_fd: int | None = None
        self._client: aiomqtt.Client | None = None
        self._reads: _BufferedReads | None = None  # this session's socket reads
        self._pausing_allowed = True
        self.inbox_peak = 0  # most messages ever queued in aiomqtt at once (bounded: tests)
        self._clock = clock
        self._rng = rng or random.Random()
        self._tls_context: ssl.SSLContext | None = make_tls_context(config)
        self._connected = False
        self._connections_made = 0
        self._unacked = 0
        self.connected_event = asyncio.Event()  # set while subscribed; tests await it
        self.close_seconds: float | None = None  # last wait for the broker to close (tests)

    @property
    def status(self) -> SubscriberStatus:
        return SubscriberStatus(
            connected=self._connected,
            reconnects_total=max(0, self._connections_made - 1),
            unacked_total=self._unacked,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Receive until `stop` is set; reconnects by itself and returns only on stop."""
        attempt = 0
        while not stop.is_set():
            try:
                await self._session(stop)
                attempt = 0
            except aiomqtt.MqttError as error:
                delay = backoff_delay_s(
                    attempt,
                    minimum_s=self._config.reconnect_min_s,
                    maximum_s=self._config.reconnect_max_s,
                    rng=self._rng,
                )
                attempt += 1
                logger.warning(
                    "MQTT connection to %s lost or refused (%s); retrying in %.1f s",
                    self._config.url,
                    error,
                    delay,
                    extra={"broker": self._config.url, "reason": str(error)},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            finally:
                self._connected = False
                self.connected_event.clear()

    def _make_client(self) -> aiomqtt.Client:
        config = self._config
        v5 = config.mqtt_version == "5"
        properties: Properties | None = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = config.session_expiry_s
            properties.ReceiveMaximum = config.receive_maximum
        client = aiomqtt.Client(
            config.host,
            config.port,
            username=config.username,
            password=config.password,
            identifier=config.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            # A persistent session (ICD section 2): the broker queues while we are away.
            clean_session=None if v5 else False,
            # paho refuses clean_start on 3.1.1; FIRST_ONLY is its "not set" value there.
            clean_start=False if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
            keepalive=config.keepalive_s,
            timeout=config.connect_timeout_s,
            tls_context=self._tls_context,
            # Never discards; bounded by the window and by pausing the socket (docstring).
            max_queued_incoming_messages=0,
            # aiomqtt puts its Messages in; the inbox keeps them as `Received`, as ours.
            queue_type=cast(
                "type[asyncio.Queue[aiomqtt.Message]]", _inbox_type(self._inbox_filled)
            ),
            logger=logging.getLogger(f"{__name__}.paho"),
        )
        # aiomqtt issue #345: aiomqtt has no manual-ack option; paho's is set here.
        _paho(client).manual_ack_set(True)
        return client

    async def _session(self, stop: asyncio.Event) -> None:
        """One connection: subscribe, then batch -> store -> ack -> forward until stop."""
        client = self._make_client()
        self._client = client
        self._reads = None
        self._paused_fd = None
        self._pausing_allowed = True
        held: socket.socket | None = None
        try:
            async with client:
                self._connections_made += 1
                self._connected = True
                self._read_with_our_reader(client)
                # Not awaited before receiving: a resumed session's backlog may arrive ahead
                # of the SUBACK, and reading it may be paused until we have worked through it.
                subscribing = asyncio.create_task(self._subscribe(client))
                try:
                    while not stop.is_set():
                        if subscribing.done():
                            subscribing.result()  # a refused subscription ends the session
                        batch = await self._next_batch(client, stop, subscribing)
                        if not batch:
                            continue
                        stored = await self._sink.store(batch)
                        self._ack(client, batch)
                        await self._sink.forward(stored)
                    held = self._stop_reading(client)
                finally:
                    subscribing.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await subscribing
            # aiomqtt has sent DISCONNECT (after our PUBACKs) and paho closed its descriptor.
        finally:
            if held is not None:
                await self._close_after_broker(held)

    def _stop_reading(self, client: aiomqtt.Client) -> socket.socket | None:
        """On stop: read nothing more, and keep the connection open past paho's close.

        What the broker sends from now on stays unacknowledged and is redelivered to the
        persistent session; whatever is still in the inbox likewise. Closing a socket with
        unread data in it makes Linux send RST, and the broker then drops what it had not
        yet read, our last PUBACKs included (it would redeliver a batch we archived). So a
        duplicate of the descriptor keeps the connection open when paho closes its own after
        DISCONNECT, and `_close_after_broker` lets the broker close first.
        """
        self._pausing_allowed = False
        self._paused_fd = None
        sock = _paho(client).socket()
        if sock is None or _disconnected(client).done():
            return None
        descriptor = sock.fileno()
        asyncio.get_running_loop().remove_reader(descriptor)
        held = socket.socket(fileno=os.dup(descriptor))
        held.setblocking(False)
        return held

    async def _close_after_broker(self, held: socket.socket) -> None:
        """Half-close, then discard what arrives until the broker closes: acks confirmed.

        The broker handles a connection's packets in order, so once it closes the connection
        in answer to our DISCONNECT it has processed every PUBACK before it. Discarding raw
        bytes costs nothing like parsing the PUBLISHes queued ahead (a backlog of thousands
        took the whole shutdown budget when an UNSUBSCRIBE's UNSUBACK was the barrier).
        """
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            held.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(self._config.connect_timeout_s):
                while await loop.sock_recv(held, _DISCARD_CHUNK_BYTES):
                    pass
        except TimeoutError:
            logger.warning(
                "the broker did not close the connection within %.1f s of DISCONNECT;"
                " it may redeliver the last batch",
                self._config.connect_timeout_s,
                extra={"broker": self._config.url},
            )
        except OSError:
            pass  # reset or already closed by the broker: it has read all we sent
        finally:
            held.close()
        self.close_seconds = time.monotonic() - started

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        """Subscribe (no timeout: the SUBACK may queue behind a backlog), then announce it."""
        granted = await client.subscribe(self._config.topic_filter, qos=QOS, timeout=math.inf)
        codes = [int(code.value) if hasattr(code, "value") else int(code) for code in granted]
        if not codes or any(code >= _SUBSCRIBE_FAILED for code in codes):
            raise aiomqtt.MqttError(f"subscription to {self._config.topic_filter} refused: {codes}")
        if any(code < QOS for code in codes):
            logger.warning(
                "broker granted QoS %s < %d: messages may be lost in transit",
                codes,
                QOS,
                extra={"topic": self._config.topic_filter},
            )
        self.connected_event.set()
        logger.info(
            "MQTT subscribed to %s at %s as %s",
            self._config.topic_filter,
            self._config.url,
            self._config.client_id,
            extra={"broker": self._config.url, "topic": self._config.topic_filter},
        )

    async def _next_batch(
        self, client: aiomqtt.Client, stop: asyncio.Event, subscribing: asyncio.Task[None]
    ) -> list[Delivery]:
        """Wait for a message (or stop, or the SUBACK), then take what is queued, bounded.

        Waiting is on the inbox's `filled` event, never on a `get()` that a cancellation
        could cut off after it took a message (aiomqtt's iterator can lose one that way,
        and the broker redelivers an unacknowledged message only on the next connection).
        """
        inbox = _inbox(client)
        disconnected = _disconnected(client)
        if inbox.empty() and not disconnected.done():
            inbox.filled.clear()
            helpers = [
                asyncio.ensure_future(inbox.filled.wait()),
                asyncio.ensure_future(stop.wait()),
            ]
            waits: set[asyncio.Future[Any]] = {*helpers, disconnected}
            if not subscribing.done():
                waits.add(subscribing)
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for helper in helpers:
                    helper.cancel()
        if disconnected.done():
            # What is still queued was neither archived nor acked: the broker redelivers it.
            error = disconnected.exception() if not disconnected.cancelled() else None
            raise aiomqtt.MqttError("disconnected while receiving") from error
        received: list[Received] = []
        size = 0
        while (
            not inbox.empty()
            and len(received) < self._batch_max_messages
            and size < self._batch_max_bytes
        ):
            message = inbox.get_nowait()
            received.append(message)
            size += len(message.payload)
        if self._paused_fd is not None and inbox.qsize() <= self._inbox_low:
            self._resume_reading(client)
        now = self._clock()
        return [
            Delivery(topic=topic, payload=payload, received_at=now, qos=qos, mid=mid)
            for topic, payload, qos, mid in received
        ]

    def _inbox_filled(self, size: int) -> None:
        """Called by the inbox on each put: stop reading the socket at the high mark."""
        self.inbox_peak = max(self.inbox_peak, size)
        if (
            size >= self._inbox_high
            and self._pausing_allowed
            and self._paused_fd is None
            and self._client is not None
        ):
            sock = _paho(self._client).socket()
            if sock is not None:
                self._paused_fd = sock.fileno()
                asyncio.get_running_loop().remove_reader(self._paused_fd)

    def _resume_reading(self, client: aiomqtt.Client) -> None:
        fd, self._paused_fd = self._paused_fd, None
        if fd is not None and _paho(client).socket() is not None:
            loop = asyncio.get_running_loop()
            loop.add_reader(fd, self._read_available, client)
            # Whole messages may wait in the read buffer, with nothing new in the kernel's.
            loop.call_soon(self._read_available, client)

    def _read_with_our_reader(self, client: aiomqtt.Client) -> None:
        """Buffer paho's socket reads, and replace aiomqtt's socket reader by ours."""
        paho_client = _paho(client)
        sock = paho_client.socket()
        if sock is None:
            return
        self._reads = _BufferedReads(sock)
        _wrap_socket(paho_client, self._reads)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read_available, client)

    def _read_available(self, client: aiomqtt.Client) -> None:
        """Read messages while they keep arriving whole, up to the inbox's high mark.

        What aiomqtt's reader (client.py, `_on_socket_open`) does: read, drain buffered
        data, report a broken connection. But paho's `loop_read` parses one packet per
        call, and one call per readiness event cost an event-loop pass per message, and made
        batches as small as the archive write was quick; reading on while whole messages
        arrive fills the inbox in one go. It stops once paused, or at the first call that
        queues nothing with nothing left buffered (a partial message, or an empty socket).

        Between packets, a whole PUBLISH at the front of the buffer is ours to parse
        (`parse_publish`): paho's parsing and callbacks took half the parent's time.
        Everything else, and any PUBLISH the fast path declines, goes through paho.
        """
        paho_client = _paho(client)
        inbox = _inbox(client)
        reads = self._reads
        mqtt5 = self._config.mqtt_version == "5"
        parsed_any = False
        try:
            while self._paused_fd is None:
                if reads is not None and _between_packets(paho_client):
                    message = reads.take_publish(mqtt5=mqtt5)
                    if message is not None:
                        inbox.put_nowait(message)
                        parsed_any = True
                        continue
                queued = inbox.qsize()
                paho_client.loop_read()
                sock = paho_client.socket()
                if sock is None:
                    break
                if inbox.qsize() == queued and not sock.pending():  # _BufferedReads
                    break
        except Exception as error:  # as aiomqtt: any failure here means the link broke
            disconnected = client._disconnected
            if not disconnected.done():
                disconnected.set_exception(error)
        finally:
            if parsed_any:
                _bytes_received(paho_client)

    def _ack(self, client: aiomqtt.Client, batch: list[Delivery]) -> None:
        """PUBACK each message in arrival order (MQTT 3.1.1 section 4.6), in one write.

        paho's `ack` queues one PUBACK per message, and each then costs a system call of its
        own; the batch's PUBACKs are the same bytes back to back, queued as one packet.
        Our subscription is QoS 1, so no message arrives at QoS 2 (delivered QoS is at most
        the granted one); QoS 0 messages are not acknowledged.
        """
        mids = [delivery.mid for delivery in batch if delivery.qos == QOS]
        if not mids:
            return
        pubacks = b"".join([_PUBACK.pack(paho.PUBACK, _PUBACK_REMAINING, mid) for mid in mids])
        if _paho(client)._packet_queue(paho.PUBACK, pubacks, 0, 0) != paho.MQTT_ERR_SUCCESS:
            # The connection dropped after the archive write: the broker redelivers the
            # messages on the next session and the archive holds them twice (replay and
            # the decoder count the second copies' packets as duplicates).
            self._unacked += len(mids)


class _ManualAck(Protocol):
    """The paho-mqtt >= 2.0 methods we use (the installed paho 1.x stubs lack
    `manual_ack_set`; `_packet_queue` is private: it queues raw bytes for paho's writer)."""

    def manual_ack_set(self, on: bool) -> None: ...

    def _packet_queue(self, command: int, packet: bytes, mid: int, qos: int) -> int: ...

    def socket(self) -> Any: ...

    def loop_read(self) -> int: ...


def _paho(client: aiomqtt.Client) -> _ManualAck:
    # aiomqtt issue #345 workaround: the wrapped paho client (private attribute).
    return cast(_ManualAck, client._client)


class _Inbox(asyncio.Queue[Received]):
    """aiomqtt's message queue (its `queue_type` option), with a "not empty" event.

    Two writers: aiomqtt's callback, with paho's messages, and `_read_available`'s fast path.
    """

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.filled = asyncio.Event()

    def put_nowait(self, item: Received | aiomqtt.Message) -> None:
        if isinstance(item, aiomqtt.Message):
            item = Received(item.topic.value, _payload_bytes(item.payload), item.qos, item.mid)
        super().put_nowait(item)
        self.filled.set()
        self.on_put(self.qsize())

    def on_put(self, size: int) -> None:
        """Overridden per subscriber by `_inbox_type`."""


def _inbox_type(on_put: Callable[[int], None]) -> type[_Inbox]:
    """The inbox class for one subscriber: reports its size after each message put in."""

    class SubscriberInbox(_Inbox):
        def on_put(self, size: int) -> None:
            on_put(size)

    return SubscriberInbox


class _BufferedReads:
    """paho's socket, its reads served from one buffer filled up to 256 KiB at a time.

    paho reads a PUBLISH in four to six `recv` calls (the command byte, the length byte by
    byte, the rest): a system call each, a fifth of the parent's time receiving 65 KiB
    messages. One large read serves several messages. `pending()` reports what is
    buffered (as TLS sockets report decrypted bytes), which the reader drains before it
    waits for the socket again. Everything else is the socket's own.

    The buffer is allocated once and read into (`recv_into`): a fresh 256 KiB object per
    read costs a page fault per 4 KiB, dear on a virtual machine (docs/decisions.md, the
    archive's page cache). It holds the unread rest of one read plus the next: at most 512 KiB.
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = bytearray(2 * _READ_CHUNK_BYTES)
        self._view = memoryview(self._buffer)
        self._start = 0  # the unread bytes are _buffer[_start:_end]
        self._end = 0

    def recv(self, size: int) -> bytes:
        if self._start >= self._end:
            # Raises BlockingIOError when nothing is there, as paho expects of a socket.
            self._end = self._sock.recv_into(self._view, _READ_CHUNK_BYTES)
            self._start = 0
        stop = min(self._start + size, self._end)
        chunk = bytes(self._view[self._start : stop])
        self._start = stop
        return chunk

    def take_publish(self, *, mqtt5: bool) -> Received | None:
        """A whole QoS 0/1 PUBLISH from the front of the buffer (`parse_publish`), or None.

        When the buffer is empty or ends in less than a read's worth of the start of a
        PUBLISH, the socket is read once first. A PUBLISH that outgrows the buffer is left
        to paho, whose own buffer grows without copying the start again and again.
        """
        parsed = parse_publish(self._view, self._start, self._end, mqtt5=mqtt5)
        if parsed is None and self._read_more():
            parsed = parse_publish(self._view, self._start, self._end, mqtt5=mqtt5)
        if parsed is None:
            return None
        message, self._start = parsed
        return message

    def _read_more(self) -> bool:
        """One socket read after a short rest of the last; False if nothing was added."""
        left = self._end - self._start
        if left >= _READ_CHUNK_BYTES or (left and self._buffer[self._start] >> 4 != _PUBLISH):
            return False
        if self._start:
            self._buffer[:left] = self._buffer[self._start : self._end]  # a copy: may overlap
            self._start, self._end = 0, left
        try:
            added: int = self._sock.recv_into(self._view[left:], _READ_CHUNK_BYTES)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False  # nothing yet; paho's next read meets the same and handles it
        self._end += added
        return added > 0  # 0: end of stream, which paho's next read finds and reports

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return self._end - self._start + int(inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _between_packets(paho_client: _ManualAck) -> bool:
    # paho's read state (private): command 0 means it holds no part of a packet.
    return bool(cast(Any, paho_client)._in_packet["command"] == 0)


def _bytes_received(paho_client: _ManualAck) -> None:
    # What paho notes after each packet it reads (private); its keepalive check reads it.
    cast(Any, paho_client)._last_bytes_received = time.monotonic()


def _wrap_socket(paho_client: _ManualAck, wrapped: _BufferedReads) -> None:
    # paho keeps its socket as `_sock` (private) and reads it only through `_sock.recv`.
    cast(Any, paho_client)._sock = wrapped


def _inbox(client: aiomqtt.Client) -> _Inbox:
    # aiomqtt has no batch read; its message queue (private; ours, via queue_type) is
    # drained without a task per message, which at ~7,000 messages/s would cost more
    # than the rest of the loop.
    inbox = client._queue
    if not isinstance(inbox, _Inbox):
        raise TypeError("aiomqtt client was not built with the subscriber's inbox")
    return inbox


def _disconnected(client: aiomqtt.Client) -> asyncio.Future[None]:
    # aiomqtt's "connection lost" future (private), which its own message iterator watches.
    return client._disconnected


def _payload_bytes(payload: object) -> bytes:
    # paho hands over bytes for every received PUBLISH; aiomqtt types it more widely.
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    return str(payload).encode()
