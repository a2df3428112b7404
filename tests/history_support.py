"""History tests' shared helpers: flight 3 archived store-and-forward, the samples ICD
section 7 gives it, and queries of a Prometheus-compatible store (Prometheus or
VictoriaMetrics, anything with `url` and the /api/v1 query API)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest
from groundstation.simulators.output import packets_file, read_envelopes
from groundstation.simulators.run import SimulationOptions, simulate

from groundstation.config import ArchiveConfig, HistoryConfig
from groundstation.consumers.history.writer import POSITION_FILE, HistoryWriter
from groundstation.core.decoder import PacketDecoder
from groundstation.core.definitions import load_dictionaries
from groundstation.ingest.archive import ArchiveRecord, ArchiveWriter

HOUR_S = 3600.0


class Store(Protocol):
    """A Prometheus-compatible store: its base URL (remote write at /api/v1/write) and its
    query API."""

    @property
    def url(self) -> str: ...

    def api(self, path: str, **params: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Flight:
    archive: Path
    start: float  # first packet time
    end: float  # last packet time
    expected: dict[str, int]  # per series (rendered labels): sample count by ICD section 7


def fly(directory: Path, *, start_time: float, arrive_after_s: float, repeat: int = 1) -> Flight:
    """Flight 3 store-and-forward, archived `arrive_after_s` after it flew."""
    sim = directory / "sim"
    asyncio.run(
        simulate(
            SimulationOptions(
                profile="flight3",
                output_dir=sim,
                store_and_forward=True,
                start_time=start_time,
                repeat=repeat,
            )
        )
    )
    archive = directory / "archive"
    with ArchiveWriter(ArchiveConfig(directory=archive, fsync="never")) as writer:
        writer.append(
            [
                ArchiveRecord(
                    topic=e.topic,
                    received_at=start_time + arrive_after_s + e.send_at_s,
                    payload=e.payload,
                    valid=True,
                )
                for e in read_envelopes(sim / "envelopes.msgpack")
            ]
        )
    return Flight(archive=archive, **expected_samples(sim))


def expected_samples(sim: Path) -> dict[str, Any]:
    """ICD section 7's counts, from the packets the simulator sent (decoded directly)."""
    dictionaries = load_dictionaries()
    columns = {}
    for vehicle in ("ingenuity", "perseverance"):
        data = (sim / packets_file(vehicle)).read_bytes()
        result = PacketDecoder(dictionaries[vehicle]).decode([data])
        columns.update({c.name: c for c in result.columns.values()})
    hk, nav, imu, rover = (columns[n] for n in ("HELI_HK", "HELI_NAV", "HELI_IMU", "ROVER_NAV"))
    takeoff = float(hk.time[np.isin(hk.fields["mode"], [2, 3])].min())  # SPINUP, FLIGHT
    imu_seconds = np.unique(np.floor((imu.time[:, None] + np.arange(10) / 500).ravel()))
    heli, rover_v = 'vehicle="ingenuity"', 'vehicle="perseverance"'
    counts = {
        f"gs_battery_voltage_volts{{{heli}}}": hk.time.size,
        f'gs_vehicle_mode{{mode="SAFE",{heli}}}': hk.time.size,
        f'gs_fault_active{{fault="heater_on",{heli}}}': hk.time.size,
        f"gs_altitude_meters{{{heli}}}": nav.time.size,
        f'gs_position_meters{{axis="y",{heli}}}': nav.time.size,
        f"gs_ground_speed_meters_per_second{{{heli}}}": nav.time.size,
        f"gs_flight_distance_meters{{{heli}}}": int((nav.time >= takeoff).sum()),
        f"gs_range_to_rover_meters{{{heli}}}": int((nav.time >= rover.time.min()).sum()),
        # Every whole second of IMU sample time but the newest, which is still open.
        f'gs_vibration_rms_mps2{{axis="z",{heli}}}': imu_seconds.size - 1,
        f'gs_position_meters{{axis="x",{rover_v}}}': rover.time.size,
        f"gs_odometry_meters{{{rover_v}}}": rover.time.size,
    }
    every = (hk, nav, imu, rover)
    return {
        "start": float(min(c.time.min() for c in every)),
        # Of every packet: the rover's or the housekeeping's last may come after the
        # helicopter's last NAV and IMU packets, as the start time's fraction falls.
        "end": float(max(c.time.max() for c in every)),
        "expected": counts,
    }


def writer_for(
    archive: Path, prometheus: Store, *, envelopes: int = 256, **settings: Any
) -> HistoryWriter:
    config = HistoryConfig(
        url=f"{prometheus.url}/api/v1/write", backoff_min_s=0.1, backoff_max_s=0.5, **settings
    )
    return HistoryWriter(
        config,
        archive_dir=archive,
        dictionaries=load_dictionaries(),
        max_payload_bytes=2**24,
        batch_max_envelopes=envelopes,
        batch_max_bytes=1 << 23,
    )


def stored(prometheus: Store, flight: Flight) -> dict[str, list[list[Any]]]:
    """Every raw sample of every history series over the flight's own time."""
    span = math.ceil(flight.end - flight.start) + 5
    answer = prometheus.api(
        "query", query=f'{{timeline="spacecraft"}}[{span}s]', time=f"{flight.end + 2:.3f}"
    )
    assert answer["status"] == "success", answer
    return {
        str(sorted(item["metric"].items())): item["values"] for item in answer["data"]["result"]
    }


def counts(prometheus: Store, flight: Flight) -> dict[str, int]:
    # count_over_time drops __name__: ask per name instead.
    out = {}
    span = math.ceil(flight.end - flight.start) + 5
    for key in flight.expected:
        answer = prometheus.api(
            "query", query=f"count_over_time({key}[{span}s])", time=f"{flight.end + 2:.3f}"
        )
        assert answer["status"] == "success", answer
        result = answer["data"]["result"]
        out[key] = int(float(result[0]["value"][1])) if result else 0
    return out


def peak(prometheus: Store, flight: Flight, selector: str) -> float:
    span = math.ceil(flight.end - flight.start) + 5
    answer = prometheus.api(
        "query", query=f"max_over_time({selector}[{span}s])", time=f"{flight.end + 2:.3f}"
    )
    return float(answer["data"]["result"][0]["value"][1])


def assert_hk_and_nav_counts(server: Store, report: Mapping[str, Any], *, start: float) -> None:
    """Prometheus holds one HK and one NAV sample per ok packet the simulator reports."""
    hk = report["vehicles"]["ingenuity"]["expected"]["packets"]["100"]["ok"]
    nav = report["vehicles"]["ingenuity"]["expected"]["packets"]["101"]["ok"]
    for name, expected in (("gs_battery_voltage_volts", hk), ("gs_altitude_meters", nav)):
        answer = server.api(
            "query",
            query=f'count_over_time({name}{{timeline="spacecraft"}}[1h])',
            time=f"{start + 1800:.3f}",
        )
        [item] = answer["data"]["result"]
        assert int(item["value"][1]) == expected, name


def assert_flight3_history(directory: Path, store: Store, *, rel: float = 0.0) -> Flight:
    """Flight 3 flown 3 h ago, archived, written: per-series counts, peaks; written twice,
    nothing changes (values to `rel`, for a store that keeps fewer digits than float64).
    Returns the flight, for further checks of what the store holds."""
    flight = fly(directory, start_time=time.time() - 3 * HOUR_S, arrive_after_s=2 * HOUR_S)
    writer = writer_for(flight.archive, store)
    assert writer.catch_up()
    assert writer.status.samples["rejected"] == 0
    assert writer.status.samples["backfill"] == 0
    assert writer.status.up
    assert writer.status.lag_seconds() == 0.0
    first = counts(store, flight)
    assert first == flight.expected
    assert peak(store, flight, 'gs_altitude_meters{timeline="spacecraft"}') == pytest.approx(
        5.0, abs=0.1
    )
    distance = peak(store, flight, 'gs_flight_distance_meters{timeline="spacecraft"}')
    assert distance == pytest.approx(100.0, abs=3.0)
    rover = peak(store, flight, 'gs_range_to_rover_meters{timeline="spacecraft"}')
    assert rover == pytest.approx(85.0, abs=1.0)
    values = stored(store, flight)
    assert sum(map(len, values.values())) == writer.status.samples["ok"]
    assert not writer.catch_up()  # caught up: nothing new
    (flight.archive / POSITION_FILE).unlink()
    again = writer_for(flight.archive, store)
    assert again.catch_up()
    assert again.status.samples["ok"] == writer.status.samples["ok"]
    assert counts(store, flight) == first
    after = stored(store, flight)
    if rel == 0.0:
        assert after == values
        return flight
    assert after.keys() == values.keys()
    for series, samples in values.items():
        assert [t for t, _ in after[series]] == [t for t, _ in samples], series
        expected = [float(v) for _, v in samples]
        assert [float(v) for _, v in after[series]] == pytest.approx(expected, rel=rel), series
    return flight
