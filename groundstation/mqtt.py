"""The MQTT subscriber: persistent QoS 1 session, manual acknowledgement, reconnect with backoff.

No data loss (issue 6, item 2) needs the PUBACK to leave only after the payload is in the
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
from typing import Any, Final, Generic, Protocol, TypeVar, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from groundstation.config import BrokerConfig, make_tls_context

logger = logging.getLogger(__name__)

QOS: Final = 1  # ICD section 2
_DISCARD_CHUNK_BYTES: Final = 1 << 20  # read size while waiting for the broker to close
_READ_CHUNK_BYTES: Final = 1 << 18  # socket read size: several messages per system call
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
            queue_type=_inbox_type(self._inbox_filled),
            logger=logging.getLogger(f"{__name__}.paho"),
        )
        # aiomqtt issue #345: aiomqtt has no manual-ack option; paho's is set here.
        _paho(client).manual_ack_set(True)
        return client

    async def _session(self, stop: asyncio.Event) -> None:
        """One connection: subscribe, then batch -> store -> ack -> forward until stop."""
        client = self._make_client()
        self._client = client
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
        received: list[aiomqtt.Message] = []
        size = 0
        while (
            not inbox.empty()
            and len(received) < self._batch_max_messages
            and size < self._batch_max_bytes
        ):
            message = inbox.get_nowait()
            received.append(message)
            size += len(message.payload) if isinstance(message.payload, bytes) else 0
        if self._paused_fd is not None and inbox.qsize() <= self._inbox_low:
            self._resume_reading(client)
        now = self._clock()
        return [
            Delivery(
                topic=message.topic.value,
                payload=_payload_bytes(message.payload),
                received_at=now,
                qos=message.qos,
                mid=message.mid,
            )
            for message in received
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
        _wrap_socket(paho_client, _BufferedReads(sock))
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read_available, client)

    def _read_available(self, client: aiomqtt.Client) -> None:
        """Read messages while they keep arriving whole, up to the inbox's high mark.

        What aiomqtt's reader (client.py, `_on_socket_open`) does: read, drain buffered
        data, report a broken connection. But paho's `loop_read` parses one packet per
        call, and one call per readiness event cost an event-loop pass per message, and made
        batches as small as the archive write was quick; reading on while whole messages
        arrive fills the inbox in one go. It stops once paused, or at the first call that
        queues nothing with nothing left buffered (a partial message, or an empty socket).
        """
        paho_client = _paho(client)
        inbox = _inbox(client)
        try:
            while self._paused_fd is None:
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


class _Inbox(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's message queue (its `queue_type` option), with a "not empty" event."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.filled = asyncio.Event()

    def put_nowait(self, item: aiomqtt.Message) -> None:
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
    """paho's socket, its reads served from chunks of up to 256 KiB.

    paho reads a PUBLISH in four to six `recv` calls (the command byte, the length byte by
    byte, the rest): a system call each, a fifth of the parent's time receiving 65 KiB
    messages. One large read serves several messages. `pending()` reports what is
    buffered (as TLS sockets report decrypted bytes), which the reader drains before it
    waits for the socket again. Everything else is the socket's own.
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._data = b""
        self._offset = 0

    def recv(self, size: int) -> bytes:
        if self._offset >= len(self._data):
            # Raises BlockingIOError when nothing is there, as paho expects of a socket.
            self._data = self._sock.recv(max(size, _READ_CHUNK_BYTES))
            self._offset = 0
        chunk = self._data[self._offset : self._offset + size]
        self._offset += len(chunk)
        return chunk

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._data) - self._offset + int(inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


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
