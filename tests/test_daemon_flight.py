"""The simulator flies flight 3 through Mosquitto into the daemon; /metrics must tell the story."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from groundstation.simulators.run import SimulationOptions, simulate

from groundstation.cli.replay import replay
from groundstation.config import parse_broker_url
from groundstation.core.decoder import RESULTS
from groundstation.service.daemon import Daemon, running_daemon
from tests.daemon_support import counters, daemon_config, processed, publish, scrape
from tests.services import Mosquitto

pytestmark = [pytest.mark.integration]

ALTITUDE = 'gs_altitude_meters{vehicle="ingenuity"}'
RANGE = 'gs_range_to_rover_meters{vehicle="ingenuity"}'
DISTANCE = 'gs_flight_distance_meters{vehicle="ingenuity"}'


def simulator_options(mosquitto: Mosquitto, **options: Any) -> SimulationOptions:
    broker = dataclasses.replace(parse_broker_url(mosquitto.url), client_id="simulator")
    return SimulationOptions(profile="flight3", broker=broker, **options)


def envelopes_published(report: Mapping[str, Any]) -> int:
    return sum(vehicle["envelopes_published"] for vehicle in report["vehicles"].values())


def assert_counts_match_report(metrics: dict[str, float], report: Mapping[str, Any]) -> None:
    """Every ICD counter the report predicts, per vehicle, APID and result class."""
    for vehicle, tally in report["vehicles"].items():
        expected = tally["expected"]
        key = f'gs_envelopes_total{{result="ok",vehicle="{vehicle}"}}'
        assert metrics[key] == expected["envelopes"]["ok"], key
        key = f'gs_envelopes_lost_total{{vehicle="{vehicle}"}}'
        assert metrics[key] == expected["envelopes_lost"], key
        for apid, results in expected["packets"].items():
            for result in RESULTS:
                key = f'gs_packets_total{{apid="{apid}",result="{result}",vehicle="{vehicle}"}}'
                assert metrics.get(key, 0.0) == results[result], key
        for apid, lost in expected["packets_lost"].items():
            key = f'gs_packets_lost_total{{apid="{apid}",vehicle="{vehicle}"}}'
            assert metrics.get(key, 0.0) == lost, key


async def watch_peaks(daemon: Daemon, done: asyncio.Task[Any]) -> dict[str, float]:
    """Scrape /metrics until `done` finishes; the highest altitude and range seen."""
    peaks = {ALTITUDE: 0.0, RANGE: 0.0}
    while not done.done():
        metrics = await scrape(daemon.metrics_address)
        for key, peak in peaks.items():
            peaks[key] = max(peak, metrics.get(key, 0.0))
        await asyncio.wait([done], timeout=0.02)
    return peaks


@pytest.mark.asyncio
async def test_flight3_live_shows_the_flight(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Flight 3 flown live at 40x through Mosquitto.

    1. start the daemon; 2. the simulator flies flight 3 (about 80 s of flight) at 40x;
    3. while it flies, scrape /metrics every 20 ms and keep the highest altitude and range;
    4. altitude peaks at about 5 m, range to the rover at about 85 m, and the flight
       distance ends at about 100 m; 5. every packet count equals the simulator's report;
    6. `groundstation replay` of the archive gives the same counters as the live scrape.
    """
    config = daemon_config(mosquitto, tmp_path)
    async with running_daemon(config) as daemon:
        await daemon.subscriber.connected_event.wait()  # type: ignore[union-attr]
        flight = asyncio.create_task(simulate(simulator_options(mosquitto, speed=40)))
        peaks = await watch_peaks(daemon, flight)
        report = flight.result().document
        await processed(daemon, envelopes_published(report))
        metrics = await scrape(daemon.metrics_address)
    assert peaks[ALTITUDE] == pytest.approx(5.0, abs=0.3)
    assert peaks[RANGE] == pytest.approx(85.0, abs=3.0)
    assert metrics[DISTANCE] == pytest.approx(100.0, abs=5.0)
    assert_counts_match_report(metrics, report)
    summary = await asyncio.to_thread(
        replay, config.archive.directory, max_payload_bytes=2**24, batch_size=256
    )
    assert summary["counters"] == counters(metrics)


@pytest.mark.asyncio
async def test_faults_and_garbage_are_counted_by_class(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Store-and-forward flight 3 with every fault kind, plus hostile payloads.

    1. start the daemon; 2. publish three garbage payloads (not msgpack, a msgpack list,
       an envelope of an unknown vehicle); 3. the simulator sends flight 3 with faults;
    4. gs_packets_total per result class, lost counts and envelope counts equal the
       report's expectations; the invalid envelopes include the garbage;
    5. the daemon is still connected and healthy after all of it.
    """
    config = daemon_config(mosquitto, tmp_path)
    faults = {
        "drop_envelope": 0.02,
        "garbage": 0.02,
        "wrong_version": 0.02,
        "truncate": 0.02,
        "reorder": 0.02,
        "drop_packet": 0.001,
        "flip_bits": 0.001,
        "duplicate_packet": 0.001,
        "unknown_apid": 0.001,
    }
    async with running_daemon(config) as daemon:
        await daemon.subscriber.connected_event.wait()  # type: ignore[union-attr]
        hostile = [b"\xff\x00garbage", b"\x93\x01\x02\x03", b"\x81\xa7vehicle\xa7voyager"]
        await publish(mosquitto.port, hostile, topic="mars/tm/voyager")
        options = simulator_options(
            mosquitto, store_and_forward=True, faults=faults, seed=3, packets_per_envelope=32
        )
        report = (await simulate(options)).document
        await processed(daemon, envelopes_published(report) + len(hostile))
        metrics = await scrape(daemon.metrics_address)
        assert daemon.health().ok
    assert_counts_match_report(metrics, report)
    invalid = dict(report["expected_invalid_envelopes"])
    invalid["unknown"] += len(hostile)  # none of them names a vehicle we know
    for label, count in invalid.items():
        assert metrics[f'gs_envelopes_total{{result="invalid",vehicle="{label}"}}'] == count
    assert sum(invalid.values()) > len(hostile)
    injected = {kind for t in report["vehicles"].values() for kind, n in t["faults"].items() if n}
    assert {"garbage", "truncate", "flip_bits", "duplicate_packet"} <= injected
