"""The MQTT subscriber: persistent QoS 1 session, acknowledged once archived, reconnects.

No data loss needs the PUBACK to leave only after the payload is in the archive. aiomqtt 2.x
acknowledges QoS 1 on receipt and has no option against it (aiomqtt issue #345). paho-mqtt
>= 2.0, the client aiomqtt drives, has public manual acknowledgement (`manual_ack_set`,
`ack`); the workaround documented in that issue reaches it as `client._client`. That one
handle is taken in `_paho`, and only paho's public API is used through it.

Everything else is aiomqtt as designed: its `Client`, its `client.messages` iterator to
wait for a message or the loss of the connection, and its `queue_type` option, through
which the message queue is our `_Inbox`, which counts what it holds.

Backpressure: every message we have not acknowledged counts against the broker's in-flight
window (MQTT 5 Receive Maximum, which we send in CONNECT; on MQTT 3.1.1 the broker's own
limit, Mosquitto's `max_inflight_messages`). When the pipeline stops taking batches, acks
stop, and the broker stops sending and queues for us instead.

Mosquitto 2.0.11 does not keep to that window when a persistent session resumes: it sends
the whole offline backlog at once (measured: 1,073 unacknowledged 65 KiB messages queued
in aiomqtt with Receive Maximum 100). So the inbox is bounded here, in messages and in
bytes: at its high mark the socket's reader is removed (the event loop's public
`remove_reader` on paho's public `socket()`; TCP flow control then holds the broker back),
and below the low mark a reader that calls paho's public `loop_read`, as aiomqtt's own
does, is added back (`_ReadGate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from groundstation.config import BrokerConfig, make_tls_context
from groundstation.core.envelope import bad_topic_name

logger = logging.getLogger(__name__)

QOS: Final = 1  # ICD section 2
# A connection that stayed up this long was a working one: the next reconnect starts the
# backoff again from `reconnect_min_s`. Shorter, and a broker that accepts and drops at
# once (a session taken over, a failing plugin) is retried ever more slowly, as it should.
STABLE_CONNECTION_S: Final = 5.0
_DISCARD_CHUNK_BYTES: Final = 1 << 20  # read size while waiting for the broker to close
_SUBSCRIBE_FAILED: Final = 0x80  # SUBACK failure (MQTT 3.1.1 3.9.3; MQTT 5 codes >= 0x80)
SESSION_TAKEN_OVER: Final = 0x8E  # MQTT 5 DISCONNECT reason code (section 3.14.2.1)
_CLOSED_WITHOUT_DISCONNECT: Final = -1  # the link ended with no DISCONNECT from either side


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message from the broker, not yet acknowledged."""

    topic: str
    payload: bytes
    received_at: float  # wall clock, UTC seconds
    qos: int
    mid: int
    after_takeover: bool = False  # the first message after another client had our session


class Sink(Protocol):
    """Where batches go before they are acknowledged: the archive. Nothing else sits on the
    ack path; the consumers read the archive."""

    async def store(self, batch: list[Delivery]) -> None: ...


@dataclass(frozen=True, slots=True)
class SubscriberStatus:
    """For gs_mqtt_connected and gs_mqtt_reconnects_total (ICD section 5)."""

    connected: bool
    reconnects_total: int
    unacked_total: int  # acks that could not be sent: the connection dropped meanwhile
    session_takeovers_total: int = 0  # sessions ended by another client with our client id


def backoff_delay_s(
    attempt: int, *, minimum_s: float, maximum_s: float, rng: random.Random
) -> float:
    """Capped exponential backoff with jitter: uniform in [cap/2, cap], cap = min * 2**attempt."""
    cap = min(maximum_s, minimum_s * 2.0 ** min(attempt, 32))
    return rng.uniform(cap / 2, cap)


def _paho(client: aiomqtt.Client) -> paho.Client:
    """The paho client inside aiomqtt's, for manual acknowledgement.

    aiomqtt issue #345 (https://github.com/empicano/aiomqtt/issues/345): aiomqtt has no
    manual-ack option; the workaround given there is paho's own, on `Client._client`. The
    only private access to aiomqtt or paho in the code base; callers use paho's public API.
    """
    return client._client


def _usable_topics(on_message: paho.CallbackOnMessage) -> paho.CallbackOnMessage:
    """aiomqtt's message callback, given a topic name it accepts whatever bytes arrived.

    paho decodes the topic name (`MQTTMessage.topic`) only when asked, and aiomqtt asks,
    then refuses wildcards and empty names (`aiomqtt.Topic`). A broker that does not check
    can send either, or bytes that are not UTF-8; the error raised inside paho's read ends
    the connection before anything of that read is archived or acknowledged, and the
    broker redelivers the same message on every reconnect. So such a name is replaced by
    its placeholder (`bad_topic_name`, from the bytes the decode error carries), which the
    archive keeps and validation counts invalid (ICD section 6, `bad_topic`).
    """

    def on_message_usable(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            aiomqtt.Topic(message.topic)
        except UnicodeDecodeError as error:
            message.topic = bad_topic_name(bytes(error.object)).encode()
        except ValueError:
            message.topic = bad_topic_name(message.topic.encode()).encode()
        on_message(client, userdata, message)

    return on_message_usable


def _noting_disconnects(
    on_disconnect: paho.CallbackOnDisconnect_v2, noted: Callable[[int], None]
) -> paho.CallbackOnDisconnect_v2:
    """aiomqtt's disconnect callback, after telling `noted` the reason code of a DISCONNECT
    the broker sent (MQTT 5), or `_CLOSED_WITHOUT_DISCONNECT` for a connection that ended
    otherwise and not by our DISCONNECT: aiomqtt's error says neither."""

    def on_disconnect_noted(
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: Any,
        properties: Properties | None,
    ) -> None:
        code = int(reason_code.value) if hasattr(reason_code, "value") else int(reason_code)
        if flags.is_disconnect_packet_from_server:
            noted(code)
        elif code != paho.MQTT_ERR_SUCCESS:
            noted(_CLOSED_WITHOUT_DISCONNECT)
        on_disconnect(client, userdata, flags, reason_code, properties)

    return on_disconnect_noted


def _noting_connects(
    on_connect: paho.CallbackOnConnect_v2, noted: Callable[[bool], None]
) -> paho.CallbackOnConnect_v2:
    """aiomqtt's connect callback, after telling `noted` whether the broker still had our
    session (CONNACK's session-present flag), which aiomqtt does not pass on."""

    def on_connect_noted(
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: Any,
        properties: Properties | None,
    ) -> None:
        noted(flags.session_present)
        on_connect(client, userdata, flags, reason_code, properties)

    return on_connect_noted


class _ReadGate:
    """Stops reading paho's socket at the inbox's high marks, reads again below the low ones.

    Items and bytes both count: a resumed backlog of 65 KiB messages reaches the message
    mark first, one of 16 MiB messages the byte mark. The inbox can exceed a mark by what
    one read delivers: one message (plus, over TLS, what one decrypted record holds).
    """

    def __init__(self, *, high_messages: int, high_bytes: int) -> None:
        self._high_messages = high_messages
        self._high_bytes = high_bytes
        self._low_messages = high_messages // 2
        self._low_bytes = high_bytes // 2
        self._loop = asyncio.get_running_loop()
        self._paho: paho.Client | None = None
        self._paused_fd: int | None = None
        self._enabled = True
        self.failed: asyncio.Future[None] = self._loop.create_future()
        self.peak_messages = 0
        self.peak_bytes = 0
        self._puts = 0  # messages ever put in the inbox: did a read bring one?

    def attach(self, paho_client: paho.Client) -> None:
        self._paho = paho_client

    def disable(self) -> None:
        """On stop: pause nothing more, resume nothing more (the caller removes the reader)."""
        self._enabled = False
        self._paused_fd = None

    def after_put(self, messages: int, size: int) -> None:
        self._puts += 1
        self.peak_messages = max(self.peak_messages, messages)
        self.peak_bytes = max(self.peak_bytes, size)
        if not self._enabled or self._paused_fd is not None or self._paho is None:
            return
        if messages >= self._high_messages or size >= self._high_bytes:
            sock = self._paho.socket()
            if sock is not None:
                self._paused_fd = sock.fileno()
                self._loop.remove_reader(self._paused_fd)

    def after_get(self, messages: int, size: int) -> None:
        if self._paused_fd is None or messages > self._low_messages or size > self._low_bytes:
            return
        fd, self._paused_fd = self._paused_fd, None
        sock = self._paho.socket() if self._paho is not None else None
        if sock is None or sock.fileno() != fd:
            return  # the connection closed meanwhile
        self._loop.add_reader(fd, self._read)
        # Over TLS, decrypted bytes may wait in the SSL object with nothing in the kernel.
        self._loop.call_soon(self._read)

    def _read(self) -> None:
        """What aiomqtt's reader does (the callback it adds when paho opens the socket):
        paho's `loop_read`, again while a TLS socket holds decrypted bytes; a failure ends
        the connection. And again while each call brings a message, up to the high mark:
        paho reads one packet per call, and one event-loop turn per message of a backlog
        costs more than the message's parsing."""
        paho_client = self._paho
        try:
            while self._enabled and self._paused_fd is None and paho_client is not None:
                puts = self._puts
                paho_client.loop_read()
                sock = paho_client.socket()
                if sock is None:
                    break
                if self._puts == puts and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                    break
        except Exception as error:  # as aiomqtt's: a failure here means the link is broken
            sock = paho_client.socket() if paho_client is not None else None
            if sock is not None:
                self._loop.remove_reader(sock.fileno())
            if not self.failed.done():
                self.failed.set_exception(aiomqtt.MqttError(f"reading from the broker: {error}"))


class _Inbox(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's message queue (its `queue_type` option): unbounded, never discarding, and
    kept small by its read gate, which it tells its size after every put and get."""

    gate: _ReadGate  # set by `_inbox_type`
    created: Callable[[_Inbox], None]

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.bytes = 0
        type(self).created(self)

    def put_nowait(self, item: aiomqtt.Message) -> None:
        super().put_nowait(item)
        self.bytes += len(item.payload)
        self.gate.after_put(self.qsize(), self.bytes)

    def get_nowait(self) -> aiomqtt.Message:
        item = super().get_nowait()  # asyncio.Queue.get() takes its item through here too
        self.bytes -= len(item.payload)
        self.gate.after_get(self.qsize(), self.bytes)
        return item


def _inbox_type(gate: _ReadGate, created: Callable[[_Inbox], None]) -> type[_Inbox]:
    """The inbox class for one connection: aiomqtt builds one instance of it."""

    class ConnectionInbox(_Inbox):
        pass

    ConnectionInbox.gate = gate
    ConnectionInbox.created = staticmethod(created)
    return ConnectionInbox


class _Connection:
    """One aiomqtt client, its paho client, inbox and read gate, for one session."""

    def __init__(self, subscriber: Subscriber) -> None:
        config = subscriber.config
        self.gate = _ReadGate(
            high_messages=config.receive_maximum, high_bytes=subscriber.inbox_max_bytes
        )
        self._inboxes: list[_Inbox] = []
        v5 = config.mqtt_version == "5"
        properties: Properties | None = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = config.session_expiry_s
            properties.ReceiveMaximum = config.receive_maximum
        self.client = aiomqtt.Client(
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
            tls_context=subscriber.tls_context,
            max_queued_incoming_messages=0,  # never discards; bounded by the gate
            queue_type=cast(
                "type[asyncio.Queue[aiomqtt.Message]]",
                _inbox_type(self.gate, self._inboxes.append),
            ),
            logger=logging.getLogger(f"{__name__}.paho"),
        )
        (self.inbox,) = self._inboxes
        self.paho = _paho(self.client)
        self.paho.manual_ack_set(True)
        if self.paho.on_message is not None:
            self.paho.on_message = _usable_topics(self.paho.on_message)
        self.broker_disconnect_reason: int | None = None  # of the broker's DISCONNECT, if any
        self.session_present: bool | None = None  # CONNACK's flag, once connected
        if self.paho.on_connect is not None:
            self.paho.on_connect = _noting_connects(
                cast("paho.CallbackOnConnect_v2", self.paho.on_connect), self._connected
            )
        if self.paho.on_disconnect is not None:
            self.paho.on_disconnect = _noting_disconnects(
                cast("paho.CallbackOnDisconnect_v2", self.paho.on_disconnect), self._noted
            )
        self.gate.attach(self.paho)
        self.next_message: asyncio.Task[aiomqtt.Message] | None = None
        self.connected_at: float | None = None  # monotonic, once CONNACK arrived

    def _noted(self, reason_code: int) -> None:
        self.broker_disconnect_reason = reason_code

    def _connected(self, session_present: bool) -> None:
        self.session_present = session_present

    @property
    def taken_over(self) -> bool:
        """The broker ended the session for another connection with our client id.

        Said by MQTT 5 DISCONNECT 0x8E; brokers that close the old connection without it
        (Mosquitto 2.0.11, and any on MQTT 3.1.1) are recognised by the connection ending
        with no DISCONNECT within `STABLE_CONNECTION_S` of its CONNACK: what two daemons
        with one client id do to each other, and what a link cut that soon looks like too.
        """
        reason = self.broker_disconnect_reason
        if reason == SESSION_TAKEN_OVER:
            return True
        return (
            reason == _CLOSED_WITHOUT_DISCONNECT
            and self.connected_at is not None
            and time.monotonic() - self.connected_at < STABLE_CONNECTION_S
        )

    def close(self) -> None:
        if self.next_message is not None:
            # A message it already took stays unacknowledged: redelivered next session.
            self.next_message.cancel()
        if self.gate.failed.done():
            self.gate.failed.exception()  # seen: the session ended on this or another error
        else:
            self.gate.failed.cancel()


class Subscriber:
    """Keeps one persistent session with the broker and feeds a Sink until `stop` is set."""

    def __init__(
        self,
        config: BrokerConfig,
        sink: Sink,
        *,
        batch_max_messages: int,
        batch_max_bytes: int,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._sink = sink
        self._batch_max_messages = batch_max_messages
        self._batch_max_bytes = batch_max_bytes
        # The inbox holds at most about one batch's bytes (and `receive_maximum` messages).
        self.inbox_max_bytes = batch_max_bytes
        self._clock = clock
        self._rng = rng or random.Random()
        self.tls_context: ssl.SSLContext | None = make_tls_context(config)
        self._connection: _Connection | None = None
        self._connected = False
        self._connections_made = 0
        self._unacked = 0
        self._takeovers = 0
        self._after_takeover = False  # the next message stored is the first after one
        self.inbox_peak = 0  # most messages ever queued in aiomqtt at once (tests)
        self.inbox_peak_bytes = 0  # most payload bytes ever queued at once (tests)
        self.connected_event = asyncio.Event()  # set while subscribed; tests await it
        self.close_seconds: float | None = None  # last wait for the broker to close (tests)
        self.retry_delays_s: list[float] = []  # every backoff wait, in order (tests)

    @property
    def status(self) -> SubscriberStatus:
        connection = self._connection
        # paho's own state too: it turns false the moment a read finds the link gone,
        # before the session has unwound (read from the metrics thread: one attribute).
        connected = self._connected and connection is not None and connection.paho.is_connected()
        return SubscriberStatus(
            connected=connected,
            reconnects_total=max(0, self._connections_made - 1),
            unacked_total=self._unacked,
            session_takeovers_total=self._takeovers,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Receive until `stop` is set; reconnects by itself and returns only on stop."""
        attempt = 0
        while not stop.is_set():
            connection = _Connection(self)
            try:
                await self._session(connection, stop)
                attempt = 0
            except aiomqtt.MqttError as error:
                if connection.taken_over:
                    self._session_taken_over()
                if (
                    connection.connected_at is not None
                    and time.monotonic() - connection.connected_at >= STABLE_CONNECTION_S
                ):
                    attempt = 0
                delay = backoff_delay_s(
                    attempt,
                    minimum_s=self.config.reconnect_min_s,
                    maximum_s=self.config.reconnect_max_s,
                    rng=self._rng,
                )
                attempt += 1
                self.retry_delays_s.append(delay)
                logger.warning(
                    "MQTT connection to %s lost or refused (%s); retrying in %.1f s",
                    self.config.url,
                    error,
                    delay,
                    extra={"broker": self.config.url, "reason": str(error)},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    def _session_taken_over(self) -> None:
        """Another client connected with our client id (two daemons configured alike): each
        takes the session from the other, and each archives only part of the stream."""
        self._takeovers += 1
        self._after_takeover = True
        logger.error(
            "MQTT session of client id %r at %s taken over by another connection with the"
            " same client id (DISCONNECT 0x8E, or closed within %.0f s of connecting): is a"
            " second daemon running with it? Each receives only part of the stream",
            self.config.client_id,
            self.config.url,
            STABLE_CONNECTION_S,
            extra={
                "broker": self.config.url,
                "client_id": self.config.client_id,
                "reason": "session_taken_over",
            },
        )

    async def _session(self, connection: _Connection, stop: asyncio.Event) -> None:
        """One connection: subscribe, then batch -> store -> ack until stop."""
        client = connection.client
        self._connection = connection
        held: socket.socket | None = None
        stopping = asyncio.ensure_future(stop.wait())
        try:
            async with client:
                connection.connected_at = time.monotonic()
                self._connections_made += 1
                self._connected = True
                if self._after_takeover and connection.session_present is False:
                    # The broker lost our session (a crash): what is missing is its loss,
                    # not what another client took; count it lost.
                    self._after_takeover = False
                # Not awaited before receiving: a resumed session's backlog may arrive ahead
                # of the SUBACK, and reading it may be paused until we have worked through it.
                subscribing = asyncio.create_task(self._subscribe(client))
                try:
                    while not stop.is_set():
                        batch = await self._next_batch(connection, stopping, subscribing)
                        if not batch:
                            continue
                        if self._after_takeover:
                            # What went to the other client is not lost here (ICD section 6
                            # accounting counts the gap before this message taken over).
                            batch[0] = dataclasses.replace(batch[0], after_takeover=True)
                        await self._sink.store(batch)
                        self._after_takeover = False
                        self._ack(connection.paho, batch)
                    held = self._stop_reading(connection)
                finally:
                    self._connected = False
                    self.connected_event.clear()
                    connection.close()
                    subscribing.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await subscribing
            # aiomqtt has sent DISCONNECT (after our PUBACKs) and paho closed its descriptor.
        finally:
            self._connected = False
            self.connected_event.clear()
            stopping.cancel()
            self.inbox_peak = max(self.inbox_peak, connection.gate.peak_messages)
            self.inbox_peak_bytes = max(self.inbox_peak_bytes, connection.gate.peak_bytes)
            if held is not None:
                await self._close_after_broker(held)

    def _stop_reading(self, connection: _Connection) -> socket.socket | None:
        """On stop: read nothing more, and keep the connection open past paho's close.

        What the broker sends from now on stays unacknowledged and is redelivered to the
        persistent session; whatever is still in the inbox likewise. Closing a socket with
        unread data in it makes Linux send RST, and the broker then drops what it had not
        yet read, our last PUBACKs included (it would redeliver a batch we archived). So a
        duplicate of the descriptor keeps the connection open when paho closes its own after
        DISCONNECT, and `_close_after_broker` lets the broker close first.
        """
        connection.gate.disable()
        sock = connection.paho.socket()
        if sock is None or not connection.paho.is_connected():
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
            async with asyncio.timeout(self.config.connect_timeout_s):
                while await loop.sock_recv(held, _DISCARD_CHUNK_BYTES):
                    pass
        except TimeoutError:
            logger.warning(
                "the broker did not close the connection within %.1f s of DISCONNECT;"
                " it may redeliver the last batch",
                self.config.connect_timeout_s,
                extra={"broker": self.config.url},
            )
        except OSError:
            pass  # reset or already closed by the broker: it has read all we sent
        finally:
            held.close()
        self.close_seconds = time.monotonic() - started

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        """Subscribe (no timeout: the SUBACK may queue behind a backlog), then announce it."""
        granted = await client.subscribe(self.config.topic_filter, qos=QOS, timeout=math.inf)
        codes = [int(code.value) if hasattr(code, "value") else int(code) for code in granted]
        if not codes or any(code >= _SUBSCRIBE_FAILED for code in codes):
            raise aiomqtt.MqttError(f"subscription to {self.config.topic_filter} refused: {codes}")
        if any(code < QOS for code in codes):
            logger.warning(
                "broker granted QoS %s < %d: messages may be lost in transit",
                codes,
                QOS,
                extra={"topic": self.config.topic_filter},
            )
        self.connected_event.set()
        logger.info(
            "MQTT subscribed to %s at %s as %s",
            self.config.topic_filter,
            self.config.url,
            self.config.client_id,
            extra={"broker": self.config.url, "topic": self.config.topic_filter},
        )

    async def _next_batch(
        self,
        connection: _Connection,
        stopping: asyncio.Future[Any],
        subscribing: asyncio.Task[None],
    ) -> list[Delivery]:
        """The inbox's messages, bounded; when it is empty, wait for one first.

        The wait is aiomqtt's `client.messages`, which ends with MqttError when the
        connection is lost. Its pending step is kept across waits that end otherwise (the
        SUBACK): cancelling it could drop a message it already took, which the broker
        would redeliver only on the next connection.
        """
        inbox = connection.inbox
        messages = connection.client.messages
        taken: list[aiomqtt.Message] = []
        if not len(messages):
            if connection.next_message is None:
                connection.next_message = asyncio.ensure_future(anext(messages))
            waits: set[asyncio.Future[Any]] = {connection.next_message, stopping}
            waits.add(connection.gate.failed)
            if not subscribing.done():
                waits.add(subscribing)
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if connection.gate.failed.done():
                connection.gate.failed.result()  # our reader found the link broken
            if subscribing.done():
                subscribing.result()  # a refused subscription ends the session
            if not connection.next_message.done():
                return []
            next_message, connection.next_message = connection.next_message, None
            taken.append(next_message.result())  # MqttError when the connection was lost
        size = sum(len(message.payload) for message in taken)
        while (
            len(messages) and len(taken) < self._batch_max_messages and size < self._batch_max_bytes
        ):
            message = inbox.get_nowait()
            taken.append(message)
            size += len(message.payload)
        if not connection.paho.is_connected():
            # Neither archived nor acknowledged: the broker redelivers it all.
            raise aiomqtt.MqttError("disconnected while receiving")
        now = self._clock()
        return [
            Delivery(
                topic=message.topic.value,
                payload=message.payload,
                received_at=now,
                qos=message.qos,
                mid=message.mid,
            )
            for message in taken
        ]

    def _ack(self, paho_client: paho.Client, batch: list[Delivery]) -> None:
        """PUBACK each QoS 1 message, in arrival order (MQTT 3.1.1 section 4.6).

        paho queues them; aiomqtt's writer sends them on the loop's next turn. The
        subscription is QoS 1, so no message arrives at QoS 2 (delivered QoS is at most the
        granted one); QoS 0 messages are not acknowledged.
        """
        mids = [delivery.mid for delivery in batch if delivery.qos == QOS]
        if not paho_client.is_connected():
            # The connection dropped after the archive write: the broker redelivers the
            # messages on the next session and the archive holds them twice (replay and
            # the decoder count the second copies' packets as duplicates).
            self._unacked += len(mids)
            return
        for mid in mids:
            paho_client.ack(mid, QOS)
