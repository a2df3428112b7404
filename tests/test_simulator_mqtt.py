"""The simulator against a real Mosquitto: what it reports is what a subscriber gets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiomqtt
import pytest
from groundstation.simulators.report import payload_digest_update
from groundstation.simulators.run import Simulation, SimulationOptions, simulate

from groundstation.config import parse_broker_url
from groundstation.core.decoder import PacketDecoder
from groundstation.core.definitions import load_dictionaries
from groundstation.core.envelope import Envelope, unpack_envelope
from tests.services import LOOPBACK, Mosquitto

TOPIC_FILTER = "mars/tm/+"
RECEIVE_TIMEOUT_S = 60.0


@dataclass
class Subscriber:
    """A plain aiomqtt subscriber at QoS 1 that reconnects whenever the broker goes away."""

    port: int
    client_id: str
    persistent: bool = False
    received: list[tuple[str, bytes]] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    LOOPBACK,
                    self.port,
                    identifier=self.client_id,
                    clean_session=not self.persistent,
                ) as client:
                    await client.subscribe(TOPIC_FILTER, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        self.received.append((str(message.topic), message.payload))
                        self.arrived.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)  # broker down: retry, as any client would

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(RECEIVE_TIMEOUT_S):
            while not condition():
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def subscribed(subscriber: Subscriber) -> AsyncIterator[Subscriber]:
    task = asyncio.create_task(subscriber.run())
    try:
        async with asyncio.timeout(RECEIVE_TIMEOUT_S):
            await subscriber.subscribed.wait()
        yield subscriber
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def digests(messages: list[tuple[str, bytes]]) -> dict[str, str]:
    """Per topic, the report's payload digest of the messages in arrival order."""
    by_topic: dict[str, hashlib._Hash] = {}
    for topic, payload in messages:
        payload_digest_update(by_topic.setdefault(topic, hashlib.sha256()), payload)
    return {topic: digest.hexdigest() for topic, digest in by_topic.items()}


@pytest.mark.integration
@pytest.mark.asyncio
async def test_flight3_store_and_forward_arrives_exactly_as_reported(
    mosquitto: Mosquitto,
) -> None:
    """1. A plain subscriber subscribes to mars/tm/+ at QoS 1.
    2. The simulator publishes flight 3 store-and-forward (one burst) to the broker.
    3. The subscriber receives exactly the envelopes the report lists: the same number per
       topic, and the same payloads in the same order (the report's per-topic digest)."""
    options = SimulationOptions(
        profile="flight3",
        broker=parse_broker_url(mosquitto.url),
        store_and_forward=True,
        light_time_s=900.0,
        seed=21,
    )
    async with subscribed(Subscriber(mosquitto.port, "sim-test-plain")) as subscriber:
        report = (await simulate(options)).document
        published = sum(v["envelopes_published"] for v in report["vehicles"].values())
        await subscriber.wait_until(lambda: len(subscriber.received) >= published)
    assert len(subscriber.received) == published
    assert report["publish"]["reconnects"] == 0
    assert digests(subscriber.received) == {
        vehicle["topic"]: vehicle["payload_sha256"] for vehicle in report["vehicles"].values()
    }


@pytest.mark.integration
@pytest.mark.asyncio
async def test_simulator_reconnects_when_the_broker_restarts(mosquitto: Mosquitto) -> None:
    """1. A persistent subscriber (fixed id, clean session off) subscribes at QoS 1.
    2. The simulator publishes flight 3 live at 40x (about 4 s).
    3. After 60 envelopes have arrived the broker is stopped (SIGTERM: it saves the
       subscriber's queue) and started again on the same port.
    4. The simulator reconnects with backoff and resends what was not confirmed; the
       subscriber reconnects too.
    5. Every envelope of the run arrives (QoS 1 may add duplicates, nothing is missing)."""
    options = SimulationOptions(
        profile="flight3",
        broker=parse_broker_url(mosquitto.url),
        speed=40.0,
        seed=22,
        start_time=1_700_000_000.0,
        publish_timeout_s=1.0,
    )
    expected = [
        (d.topic, d.payload)
        for d in Simulation(replace(options, broker=None), start_time=1_700_000_000.0).deliveries()
        if d.payload is not None
    ]
    subscriber = Subscriber(mosquitto.port, "sim-test-persistent", persistent=True)
    async with subscribed(subscriber):
        run = asyncio.create_task(simulate(options))
        await subscriber.wait_until(lambda: len(subscriber.received) >= 60)
        assert not run.done(), "the flight must still be publishing when the broker stops"
        await asyncio.to_thread(mosquitto.stop)
        await asyncio.to_thread(mosquitto.start)
        report = (await run).document
        await subscriber.wait_until(lambda: set(expected) <= set(subscriber.received))
    assert report["publish"]["reconnects"] >= 1
    published = sum(v["envelopes_published"] for v in report["vehicles"].values())
    assert published == len(expected)
    assert set(subscriber.received) == set(expected)


@dataclass
class TimedSubscriber(Subscriber):
    """A Subscriber that also notes the wall clock at which each message arrived."""

    arrival_times: list[float] = field(default_factory=list)

    async def run(self) -> None:
        async with aiomqtt.Client(LOOPBACK, self.port, identifier=self.client_id) as client:
            await client.subscribe(TOPIC_FILTER, qos=1)
            self.subscribed.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                self.arrival_times.append(time.time())
                self.received.append((str(message.topic), message.payload))
                self.arrived.set()


@pytest.mark.integration
@pytest.mark.asyncio
@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"speed": 20.0, "light_time_s": 600.0}, id="live-at-20x"),
        pytest.param({"speed": 0.0}, id="live-unpaced"),
        pytest.param({"store_and_forward": True, "light_time_s": 600.0}, id="store-and-forward"),
    ],
)
async def test_nothing_is_received_before_its_ert(
    mosquitto: Mosquitto, changes: dict[str, Any]
) -> None:
    """1. A subscriber notes the wall clock at which each envelope arrives.
    2. The simulator publishes flight 1 with the default start time, faster than real time
       (20x, unpaced, or one store-and-forward burst).
    3. Every envelope arrives at or after its ert, and every packet's time is at least one
       light time before its envelope's ert (ICD section 6: nothing arrives before it was
       sent); and the run did go faster than real time."""
    options = SimulationOptions(
        profile="flight1", broker=parse_broker_url(mosquitto.url), seed=23, **changes
    )
    decoders = {vehicle: PacketDecoder(d) for vehicle, d in load_dictionaries().items()}
    subscriber = TimedSubscriber(mosquitto.port, "sim-test-timed")
    started = time.monotonic()
    async with subscribed(subscriber):
        report = (await simulate(options)).document
        published = sum(v["envelopes_published"] for v in report["vehicles"].values())
        await subscriber.wait_until(lambda: len(subscriber.received) >= published)
    wall_s = time.monotonic() - started
    erts = []
    for (_, payload), arrived in zip(subscriber.received, subscriber.arrival_times, strict=True):
        envelope = unpack_envelope(payload, max_payload_bytes=1 << 24, vehicles=decoders)
        assert isinstance(envelope, Envelope)
        assert envelope.ert <= arrived + 0.01
        newest = decoders[envelope.vehicle].decode([envelope.packets]).time.max()
        assert newest <= envelope.ert - options.light_time_s + 1e-6
        erts.append(envelope.ert)
    assert max(erts) - min(erts) > 2 * wall_s or changes.get("store_and_forward")
