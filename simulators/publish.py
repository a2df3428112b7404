"""MQTT output: QoS 1 publishing with a bounded window, surviving a broker that drops.

Up to `window` publishes are in flight; each is awaited until the broker's PUBACK. When
the connection fails, every unconfirmed envelope is resent, in order, on a new connection
after a capped exponential backoff (QoS 1 is at-least-once: a resent envelope may arrive
twice, and `resent` says how many could have). aiomqtt does not fail a pending publish
when the connection drops (it waits for its timeout), hence the per-publish timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import aiomqtt
from groundstation.simulators.delivery import Delivery

from groundstation.config import BrokerConfig, make_tls_context
from groundstation.errors import GroundstationError
from groundstation.ingest.mqtt import backoff_delay_s

logger = logging.getLogger(__name__)

QOS_AT_LEAST_ONCE: Final = 1  # ICD section 2
PROTOCOLS: Final = {"3.1.1": aiomqtt.ProtocolVersion.V311, "5": aiomqtt.ProtocolVersion.V5}
DAEMON_CLIENT_ID: Final = BrokerConfig().client_id


class BrokerUnavailableError(GroundstationError):
    """The broker could not be reached within the reconnect budget."""


@dataclass
class _Outgoing:
    topic: str
    payload: bytes
    task: asyncio.Task[None] | None = None


class MqttSink:
    """Publishes deliveries to a broker; the one owner of its connection (async with)."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        window: int = 16,
        publish_timeout_s: float = 5.0,
        reconnect_timeout_s: float | None = 60.0,
    ) -> None:
        self.config = config
        self.window = window
        self.publish_timeout_s = publish_timeout_s
        self.reconnect_timeout_s = reconnect_timeout_s
        # Never take the daemon's client id: the broker would disconnect the daemon.
        self.client_id = (
            f"groundstation-sim-{os.getpid()}"
            if config.client_id == DAEMON_CLIENT_ID
            else config.client_id
        )
        self.reconnects = 0
        self.resent = 0
        self._pending: deque[_Outgoing] = deque()
        self._client: aiomqtt.Client | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    async def __aenter__(self) -> MqttSink:
        await self._connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for item in self._pending:
            if item.task is not None:
                item.task.cancel()
        await self._close()

    async def send(self, delivery: Delivery) -> None:
        """Queue one envelope for publishing; returns when it is in flight."""
        if delivery.payload is None:
            return
        while len(self._pending) >= self.window:
            await self._confirm_oldest()
        item = _Outgoing(topic=delivery.topic, payload=delivery.payload)
        self._pending.append(item)
        self._start(item)

    async def drain(self) -> None:
        """Wait until the broker has confirmed every envelope sent so far."""
        while self._pending:
            await self._confirm_oldest()

    def _start(self, item: _Outgoing) -> None:
        assert self._client is not None
        item.task = asyncio.create_task(
            self._client.publish(
                item.topic,
                item.payload,
                qos=QOS_AT_LEAST_ONCE,
                timeout=self.publish_timeout_s,
            )
        )

    async def _confirm_oldest(self) -> None:
        item = self._pending[0]
        assert item.task is not None
        try:
            await item.task
        except aiomqtt.MqttError as error:
            await self._recover(error)
            return
        self._pending.popleft()

    async def _recover(self, error: aiomqtt.MqttError) -> None:
        """Reconnect and resend, in order, everything the broker has not confirmed."""
        logger.warning(
            "broker connection lost, reconnecting",
            extra={"broker": self.config.url, "error": str(error)},
        )
        unconfirmed: deque[_Outgoing] = deque()
        for item in self._pending:
            task = item.task
            if task is not None and task.done() and not task.cancelled() and not task.exception():
                continue  # confirmed before the failure
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task
            unconfirmed.append(item)
        self._pending = unconfirmed
        await self._close()
        self.reconnects += 1
        await self._connect()
        for item in self._pending:
            self.resent += 1
            self._start(item)

    async def _connect(self) -> None:
        """Connect, retrying with the daemon's capped, jittered backoff within the budget."""
        config = self.config
        loop = asyncio.get_running_loop()
        deadline = (
            None if self.reconnect_timeout_s is None else loop.time() + self.reconnect_timeout_s
        )
        tls_context = make_tls_context(config)
        rng = random.Random()
        attempt = 0
        while True:
            stack = contextlib.AsyncExitStack()
            client = aiomqtt.Client(
                config.host,
                config.port,
                username=config.username,
                password=config.password,
                identifier=self.client_id,
                protocol=PROTOCOLS[config.mqtt_version],
                tls_context=tls_context,
                keepalive=config.keepalive_s,
                timeout=config.connect_timeout_s,
                max_inflight_messages=self.window,
            )
            client.pending_calls_threshold = self.window + 1  # our window is the bound
            try:
                self._client = await stack.enter_async_context(client)
                self._stack = stack
                return
            except aiomqtt.MqttError as error:
                await stack.aclose()
                delay = backoff_delay_s(
                    attempt,
                    minimum_s=config.reconnect_min_s,
                    maximum_s=config.reconnect_max_s,
                    rng=rng,
                )
                attempt += 1
                if deadline is not None and loop.time() + delay > deadline:
                    raise BrokerUnavailableError(
                        f"broker {config.url} unreachable for {self.reconnect_timeout_s:g} s: "
                        f"{error}"
                    ) from error
                logger.info(
                    "broker not reachable, retrying",
                    extra={"broker": config.url, "retry_in_s": delay},
                )
                await asyncio.sleep(delay)

    async def _close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(aiomqtt.MqttError, OSError):
                await stack.aclose()
