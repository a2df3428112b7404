"""Telemetry state: newest-wins values, derived figures and the ICD section 6 accounting.

Packets are built with the encoder (or hand-packed with `struct` from the ICD where the
layout itself is under test), decoded by the real PacketDecoder, fed to a Telemetry, and
read back through the collector from a fresh registry, as Prometheus would see them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from groundstation.simulators.faults import FAULT_KINDS, parse_faults
from groundstation.simulators.run import Simulation, SimulationOptions
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry

from groundstation.consumers.pipeline import Pipeline
from groundstation.consumers.telemetry import (
    MAX_RELAYS_PER_VEHICLE,
    MAX_UNKNOWN_APID_LABELS,
    Telemetry,
)
from groundstation.core.decoder import RESULTS, DecodeResult, PacketDecoder
from groundstation.core.definitions import VehicleDictionary, load_dictionaries, parse_dictionary
from groundstation.core.encoder import encode_packet, encode_packets
from groundstation.core.envelope import Arrival, check_payload
from groundstation.errors import DefinitionError
from groundstation.service.metrics import PipelineStatus, TelemetryCollector
from tests.icd_packets import HELI_HK, hand_pack

T0 = 1_700_000_000.0  # a packet time well inside the SCLK range
LIGHT_TIME_S = 600.0
HELI, ROVER = "ingenuity", "perseverance"


class Station:
    """One Telemetry, one real decoder per vehicle, and a fresh registry scraping them."""

    def __init__(self, dictionaries: Mapping[str, VehicleDictionary]) -> None:
        self.dictionaries = dictionaries
        self.telemetry = Telemetry(dictionaries)
        self.decoders = {vehicle: PacketDecoder(d) for vehicle, d in dictionaries.items()}
        self.next_seq: dict[str, int] = {}
        self.registry = CollectorRegistry()
        self.registry.register(
            TelemetryCollector(
                snapshot=self.telemetry.snapshot,
                pipeline=lambda: PipelineStatus(
                    mqtt_connected=True, reconnects_total=0, queue_depth=0
                ),
            )
        )

    def packets(
        self,
        vehicle: str,
        name: str,
        times: Sequence[float],
        *,
        seq: Sequence[int] | None = None,
        **columns: Any,
    ) -> bytes:
        """Packets of one fixed-length APID, seq continuing per APID unless given."""
        packet = self.dictionaries[vehicle].by_name(name)
        count = len(times)
        shape = (count, packet.samples) if packet.samples > 1 else (count,)
        values: dict[str, Any] = {f.name: np.zeros(shape) for f in packet.numeric_fields}
        values.update(columns)
        if seq is None:
            first = self.next_seq.get(name, 0)
            seq = [(first + i) % 16384 for i in range(count)]
            self.next_seq[name] = (first + count) % 16384
        return encode_packets(
            packet, seq=np.asarray(seq), time=np.asarray(times, dtype=float), columns=values
        )

    def feed(self, vehicle: str, *buffers: bytes, ert: float | None = None) -> DecodeResult:
        """Decode buffers (one per envelope) as one batch and record it."""
        result = self.decoders[vehicle].decode(list(buffers))
        erts: NDArray[np.float64] = np.full(len(buffers), T0 + LIGHT_TIME_S if ert is None else ert)
        self.telemetry.record_packets(vehicle=vehicle, result=result, ert=erts)
        return result

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture(scope="module")
def dictionaries() -> dict[str, VehicleDictionary]:
    return load_dictionaries()


@pytest.fixture
def station(dictionaries: dict[str, VehicleDictionary]) -> Station:
    return Station(dictionaries)


def hk(station: Station, times: Sequence[float], **columns: Any) -> bytes:
    return station.packets(HELI, "HELI_HK", times, **columns)


def nav(station: Station, times: Sequence[float], **columns: Any) -> bytes:
    return station.packets(HELI, "HELI_NAV", times, **columns)


def test_hand_packed_hk_sets_health_values(station: Station) -> None:
    """A HELI_HK packed with struct from the ICD table sets every Health gauge it feeds."""
    body = HELI_HK.pack(3, 0b10101, 7912, -1234, 87, -61, 2150, -325, 2537, 2541)
    station.feed(HELI, hand_pack(100, 0, body, coarse=800_000_000, fine=0x4000))

    assert station.value("gs_battery_voltage_volts", vehicle=HELI) == pytest.approx(7.912)
    assert station.value("gs_battery_current_amperes", vehicle=HELI) == pytest.approx(-12.34)
    assert station.value("gs_battery_charge_ratio", vehicle=HELI) == pytest.approx(0.87)
    temperature = "gs_temperature_celsius"
    assert station.value(temperature, vehicle=HELI, sensor="battery") == pytest.approx(21.5)
    assert station.value(temperature, vehicle=HELI, sensor="avionics") == pytest.approx(-3.25)
    assert station.value("gs_rotor_speed_rpm", vehicle=HELI, rotor="upper") == 2537
    assert station.value("gs_rotor_speed_rpm", vehicle=HELI, rotor="lower") == 2541
    assert station.value("gs_link_rssi_dbm", vehicle=HELI, end="helicopter") == -61
    packet_time = 946728000 + 800_000_000 + 0.25
    assert station.value("gs_last_packet_time_seconds", vehicle=HELI, apid="100") == packet_time


def test_vehicle_mode_is_one_hot_over_every_enum_name(station: Station) -> None:
    """Mode FLIGHT: FLIGHT is 1 and each other name of the dictionary's table is 0."""
    station.feed(HELI, hk(station, [T0], mode=["FLIGHT"]))
    modes = station.dictionaries[HELI].by_name("HELI_HK").field("mode").enum
    assert modes is not None
    for name in modes.values():
        expected = 1.0 if name == "FLIGHT" else 0.0
        assert station.value("gs_vehicle_mode", vehicle=HELI, mode=name) == expected


def test_mode_outside_the_table_is_exported_as_its_number(station: Station) -> None:
    """1. Mode 9 (not in the table) arrives: mode="9" is 1, every named mode 0.
    2. Mode SAFE arrives: SAFE is 1 and the mode="9" series is gone."""
    station.feed(HELI, hk(station, [T0], mode=[9]))
    assert station.value("gs_vehicle_mode", vehicle=HELI, mode="9") == 1.0
    assert station.value("gs_vehicle_mode", vehicle=HELI, mode="IDLE") == 0.0

    station.feed(HELI, hk(station, [T0 + 1], mode=["SAFE"]))
    assert station.value("gs_vehicle_mode", vehicle=HELI, mode="SAFE") == 1.0
    assert station.value("gs_vehicle_mode", vehicle=HELI, mode="9") is None


def test_fault_bits_by_their_dictionary_names(station: Station) -> None:
    """flags = heater_on | imu_fault | motor_overtemp: those are 1, the other named bits 0."""
    station.feed(HELI, hk(station, [T0], flags=[0b10101]))
    expected = {
        "heater_on": 1.0,
        "battery_low": 0.0,
        "imu_fault": 1.0,
        "lidar_fault": 0.0,
        "motor_overtemp": 1.0,
    }
    for fault, value in expected.items():
        assert station.value("gs_fault_active", vehicle=HELI, fault=fault) == value


def test_values_absent_until_their_first_packet(station: Station) -> None:
    """Before any packet no gauge is invented; the counters of known series exist at 0."""
    assert station.value("gs_battery_voltage_volts", vehicle=HELI) is None
    assert station.value("gs_position_meters", vehicle=ROVER, axis="x") is None
    assert station.value("gs_flight_distance_meters", vehicle=HELI) is None
    assert station.value("gs_last_receive_time_seconds", vehicle=HELI) is None
    for vehicle, dictionary in station.dictionaries.items():
        for apid in dictionary.packets:
            for result in RESULTS:
                labels = {"vehicle": vehicle, "apid": str(apid), "result": result}
                assert station.value("gs_packets_total", **labels) == 0.0
            assert station.value("gs_packets_lost_total", vehicle=vehicle, apid=str(apid)) == 0
        assert station.value("gs_envelopes_total", vehicle=vehicle, result="ok") == 0.0
        assert station.value("gs_envelopes_lost_total", vehicle=vehicle) == 0.0
        assert station.value("gs_events_total", vehicle=vehicle, severity="FATAL") == 0.0
    assert station.value("gs_envelopes_total", vehicle="unknown", result="invalid") == 0.0


def test_newest_packet_time_wins_whatever_the_arrival_order(station: Station) -> None:
    """1. One batch holds t0+30 (8.0 V) and then t0+25 (7.0 V): 8.0 V, the newer, shows.
    2. A later batch brings t0+10 (6.0 V), late: still 8.0 V, last packet time t0+30,
       but the late packet is counted ok.
    3. A batch with t0+31 (7.5 V) takes over."""
    station.feed(HELI, hk(station, [T0 + 30, T0 + 25], battery_voltage=[8.0, 7.0]))
    assert station.value("gs_battery_voltage_volts", vehicle=HELI) == pytest.approx(8.0)

    station.feed(HELI, hk(station, [T0 + 10], battery_voltage=[6.0]))
    assert station.value("gs_battery_voltage_volts", vehicle=HELI) == pytest.approx(8.0)
    assert station.value("gs_last_packet_time_seconds", vehicle=HELI, apid="100") == T0 + 30
    assert station.value("gs_packets_total", vehicle=HELI, apid="100", result="ok") == 3

    station.feed(HELI, hk(station, [T0 + 31], battery_voltage=[7.5]))
    assert station.value("gs_battery_voltage_volts", vehicle=HELI) == pytest.approx(7.5)


def test_helicopter_navigation_and_ground_speed(station: Station) -> None:
    """HELI_NAV sets position, velocity, attitude, lidar altitude and |(vx, vy)|."""
    station.feed(
        HELI,
        nav(
            station,
            [T0],
            pos_x=[10.0],
            pos_y=[-20.0],
            pos_z=[5.0],
            vel_x=[3.0],
            vel_y=[-4.0],
            vel_z=[1.5],
            roll=[0.125],
            pitch=[-0.25],
            yaw=[1.5],
            lidar_alt=[4.987],
            nav_state=["VISUAL_NAV"],
            nav_flags=[0b01],
        ),
    )
    value = station.value
    assert value("gs_position_meters", vehicle=HELI, axis="y") == -20.0
    assert value("gs_velocity_meters_per_second", vehicle=HELI, axis="z") == 1.5
    assert value("gs_ground_speed_meters_per_second", vehicle=HELI) == pytest.approx(5.0)
    assert value("gs_attitude_radians", vehicle=HELI, axis="pitch") == -0.25
    assert value("gs_altitude_meters", vehicle=HELI) == pytest.approx(4.987)
    assert value("gs_nav_state", vehicle=HELI, state="VISUAL_NAV") == 1.0
    assert value("gs_nav_state", vehicle=HELI, state="GROUND") == 0.0
    assert value("gs_nav_valid", vehicle=HELI, flag="lidar_valid") == 1.0
    assert value("gs_nav_valid", vehicle=HELI, flag="vision_valid") == 0.0


def test_rover_values_and_range_to_rover(station: Station) -> None:
    """1. A helicopter position alone gives no range.
    2. The rover's position arrives: range is the 3-D distance (3, 4, 12) -> 13 m.
    3. The rover moves: the range follows; heading, odometry and drive state are set."""
    station.feed(HELI, nav(station, [T0], pos_x=[3.0], pos_y=[4.0], pos_z=[12.0]))
    assert station.value("gs_range_to_rover_meters", vehicle=HELI) is None

    rover_nav = "ROVER_NAV"
    station.feed(ROVER, station.packets(ROVER, rover_nav, [T0]))
    assert station.value("gs_range_to_rover_meters", vehicle=HELI) == pytest.approx(13.0)

    station.feed(
        ROVER,
        station.packets(
            ROVER,
            rover_nav,
            [T0 + 1],
            pos_x=[3.0],
            pos_y=[4.0],
            heading=[0.5],
            odometry=[412.25],
            drive_state=["DRIVING"],
        ),
    )
    assert station.value("gs_range_to_rover_meters", vehicle=HELI) == pytest.approx(12.0)
    assert station.value("gs_position_meters", vehicle=ROVER, axis="x") == 3.0
    assert station.value("gs_heading_radians", vehicle=ROVER) == 0.5
    assert station.value("gs_odometry_meters", vehicle=ROVER) == 412.25
    assert station.value("gs_drive_state", vehicle=ROVER, state="DRIVING") == 1.0
    assert station.value("gs_drive_state", vehicle=ROVER, state="PARKED") == 0.0


def test_hbs_link_values(station: Station) -> None:
    """HBS_LINK sets the rover-side RSSI, quality/100, link up and the relay buffer."""
    station.feed(
        ROVER,
        station.packets(
            ROVER,
            "HBS_LINK",
            [T0],
            heli_link_up=[1],
            hbs_rssi=[-72],
            link_quality=[93],
            packets_relayed=[123456],
            buffer_used=[3_000_000],
        ),
    )
    assert station.value("gs_link_rssi_dbm", vehicle=ROVER, end="rover") == -72
    assert station.value("gs_link_quality_ratio", vehicle=ROVER) == pytest.approx(0.93)
    assert station.value("gs_link_up", vehicle=ROVER) == 1.0
    assert station.value("gs_relay_buffer_bytes", vehicle=ROVER) == 3_000_000
    assert station.value("gs_relay_packets_relayed_total", vehicle=ROVER) == 123456


def test_flight_distance_resets_on_takeoff(station: Station) -> None:
    """1. PREFLIGHT on the ground: no takeoff yet, so no flight distance.
    2. SPINUP at t0+1 (takeoff); NAV (0,0) -> (3,4) -> (3,10): 5 + 6 = 11 m.
    3. FLIGHT (no new takeoff) and a purely vertical move: still 11 m.
    4. One batch: LANDED at t0+5, SPINUP at t0+6 (a new takeoff), NAV at t0+5 far away
       (before the takeoff), then (100,100) -> (100,103): the distance restarts: 3 m."""
    station.feed(HELI, hk(station, [T0], mode=["PREFLIGHT"]), nav(station, [T0]))
    assert station.value("gs_flight_distance_meters", vehicle=HELI) is None

    station.feed(
        HELI,
        hk(station, [T0 + 1], mode=["SPINUP"]),
        nav(station, [T0 + 1, T0 + 2, T0 + 3], pos_x=[0.0, 3.0, 3.0], pos_y=[0.0, 4.0, 10.0]),
    )
    assert station.value("gs_flight_distance_meters", vehicle=HELI) == pytest.approx(11.0)

    station.feed(
        HELI,
        hk(station, [T0 + 4], mode=["FLIGHT"]),
        nav(station, [T0 + 4], pos_x=[3.0], pos_y=[10.0], pos_z=[5.0]),
    )
    assert station.value("gs_flight_distance_meters", vehicle=HELI) == pytest.approx(11.0)

    station.feed(
        HELI,
        hk(station, [T0 + 5, T0 + 6], mode=["LANDED", "SPINUP"]),
        nav(
            station,
            [T0 + 5, T0 + 6, T0 + 7],
            pos_x=[-50.0, 100.0, 100.0],
            pos_y=[-50.0, 100.0, 103.0],
        ),
    )
    assert station.value("gs_flight_distance_meters", vehicle=HELI) == pytest.approx(3.0)


def test_flight_distance_sorts_a_batch_and_skips_late_positions(station: Station) -> None:
    """1. Takeoff, then NAV points (0,0) (0,1) (0,2) (0,3) arrive shuffled in one batch:
       sorted by packet time they make 3 m, not the zig-zag of the arrival order.
    2. A later batch brings a NAV packet older than the newest one used, far off the
       path: it is not fitted into the summed path, and does not move the position."""
    times = [T0 + 1, T0 + 3, T0 + 2, T0 + 4]
    station.feed(
        HELI,
        hk(station, [T0], mode=["FLIGHT"]),
        nav(station, times, pos_y=[0.0, 2.0, 1.0, 3.0]),
    )
    assert station.value("gs_flight_distance_meters", vehicle=HELI) == pytest.approx(3.0)

    station.feed(HELI, nav(station, [T0 + 3.5], pos_x=[40.0], pos_y=[2.5]))
    assert station.value("gs_flight_distance_meters", vehicle=HELI) == pytest.approx(3.0)
    assert station.value("gs_position_meters", vehicle=HELI, axis="x") == 0.0


def test_flight_distance_ignores_non_finite_positions(station: Station) -> None:
    """A CRC-valid NAV packet with a NaN position is skipped by the path, not summed."""
    station.feed(
        HELI,
        hk(station, [T0], mode=["FLIGHT"]),
        nav(station, [T0, T0 + 1, T0 + 2], pos_x=[0.0, math.nan, 2.0]),
    )
    assert station.value("gs_flight_distance_meters", vehicle=HELI) == pytest.approx(2.0)


def imu(station: Station, times: Sequence[float], **axes: Any) -> bytes:
    return station.packets(HELI, "HELI_IMU", times, **axes)


def alternating(count: int, amplitude: float, offset: float = 0.0) -> NDArray[np.float64]:
    """(count, 10) samples +a, -a, +a, ... around an offset: RMS about the mean is a."""
    signs = np.where(np.arange(10) % 2 == 0, 1.0, -1.0)
    return np.tile(offset + amplitude * signs, (count, 1))


def test_vibration_rms_removes_the_mean(station: Station) -> None:
    """Constant ax, ay +-0.3, az = Mars gravity +-0.5: RMS about the mean is 0, 0.3, 0.5."""
    station.feed(
        HELI,
        imu(
            station,
            [T0, T0 + 0.02],
            ax=np.full((2, 10), 1.25),
            ay=alternating(2, 0.3),
            az=alternating(2, 0.5, offset=3.711),
        ),
    )
    vibration = "gs_vibration_rms_mps2"
    assert station.value(vibration, vehicle=HELI, axis="x") == pytest.approx(0.0, abs=1e-12)
    assert station.value(vibration, vehicle=HELI, axis="y") == pytest.approx(0.3)
    assert station.value(vibration, vehicle=HELI, axis="z") == pytest.approx(0.5)


def test_vibration_uses_the_newest_second_of_samples(station: Station) -> None:
    """1. One batch: strong vibration at t0, quiet at t0+5: only the newest second counts.
    2. A late packet from t0+3 (outside the newest second) changes nothing.
    3. A late packet from t0+4.5 (inside it) joins the window and raises the RMS."""
    station.feed(
        HELI,
        imu(station, [T0, T0 + 5], ay=np.vstack([alternating(1, 2.0), alternating(1, 0.1)])),
    )
    vibration = "gs_vibration_rms_mps2"
    assert station.value(vibration, vehicle=HELI, axis="y") == pytest.approx(0.1)

    station.feed(HELI, imu(station, [T0 + 3], ay=alternating(1, 2.0)))
    assert station.value(vibration, vehicle=HELI, axis="y") == pytest.approx(0.1)

    station.feed(HELI, imu(station, [T0 + 4.5], ay=alternating(1, 2.0)))
    assert station.value(vibration, vehicle=HELI, axis="y") == pytest.approx(
        math.sqrt((2.0**2 + 0.1**2) / 2)
    )


def test_envelope_loss_duplicates_and_late_arrivals(station: Station) -> None:
    """Relay `perseverance`, vehicle ingenuity, ert running on with seq:
    1. seq 0, 1, 2, 5: two envelopes lost.
    2. seq 2 again with its ert (a redelivery): a duplicate (still valid: counted ok).
    3. seq 3 arrives late (its ert older than seq 5's): it takes one back from lost.
    4. Another relay's counter is accounted apart; a wrap from 2^32-1 to 0 loses nothing.
    5. The relay restarts: seq 0 again with a newer ert is a restart, not a duplicate."""
    record = station.telemetry.record_envelope
    for seq in (0, 1, 2, 5):
        record(relay="perseverance", vehicle=HELI, seq=seq, ert=T0 + seq, received_at=T0 + seq)
    assert station.value("gs_envelopes_lost_total", vehicle=HELI) == 2.0

    assert record(relay="perseverance", vehicle=HELI, seq=2, ert=T0 + 2, received_at=T0 + 6) == (
        "duplicate"
    )
    assert station.value("gs_envelopes_duplicate_total", vehicle=HELI) == 1.0
    assert station.value("gs_envelopes_total", vehicle=HELI, result="ok") == 5.0

    record(relay="perseverance", vehicle=HELI, seq=3, ert=T0 + 3, received_at=T0 + 7)
    assert station.value("gs_envelopes_lost_total", vehicle=HELI) == 1.0

    for at, seq in enumerate((2**32 - 1, 0, 1)):
        record(relay="mro", vehicle=HELI, seq=seq, ert=T0 + at, received_at=T0 + 8)
    assert station.value("gs_envelopes_lost_total", vehicle=HELI) == 1.0
    assert station.value("gs_envelopes_lost_total", vehicle=ROVER) == 0.0

    assert record(relay="perseverance", vehicle=HELI, seq=0, ert=T0 + 9, received_at=T0 + 9) == (
        "ok"
    )
    assert station.value("gs_envelope_restarts_total", vehicle=HELI) == 1.0
    assert station.value("gs_envelopes_duplicate_total", vehicle=HELI) == 1.0
    assert station.value("gs_envelopes_lost_total", vehicle=HELI) == 1.0


def test_relays_beyond_the_cap_are_forgotten_least_recent_first(station: Station) -> None:
    """1. Relay r0 sends seq 0, then as many other relays as the cap allows send seq 0.
    2. r0 was forgotten: its seq 10 starts afresh and counts nothing lost.
    3. The relay heard most recently is remembered: its gap of 9 is lost."""
    record = station.telemetry.record_envelope
    relays = [f"r{i}" for i in range(MAX_RELAYS_PER_VEHICLE + 1)]
    for relay in relays:
        record(relay=relay, vehicle=ROVER, seq=0, ert=T0, received_at=T0)
    record(relay="r0", vehicle=ROVER, seq=10, ert=T0 + 10, received_at=T0)
    assert station.value("gs_envelopes_lost_total", vehicle=ROVER) == 0.0

    record(relay=relays[-1], vehicle=ROVER, seq=10, ert=T0 + 10, received_at=T0)
    assert station.value("gs_envelopes_lost_total", vehicle=ROVER) == 9.0


def test_last_receive_time_is_the_newest_wall_clock(station: Station) -> None:
    """Receive times 100, 300, 200: the gauge shows 300."""
    for seq, received_at in enumerate((100.0, 300.0, 200.0)):
        station.telemetry.record_envelope(
            relay="perseverance", vehicle=ROVER, seq=seq, ert=T0 + seq, received_at=received_at
        )
    assert station.value("gs_last_receive_time_seconds", vehicle=ROVER) == 300.0


def test_invalid_envelopes_by_vehicle(station: Station) -> None:
    """Invalid envelopes count per known vehicle; unknown or undictionaried ones as `unknown`."""
    station.telemetry.record_invalid(vehicle=HELI)
    station.telemetry.record_invalid(vehicle="unknown")
    station.telemetry.record_invalid(vehicle="mallory")
    assert station.value("gs_envelopes_total", vehicle=HELI, result="invalid") == 1.0
    assert station.value("gs_envelopes_total", vehicle="unknown", result="invalid") == 2.0
    assert station.value("gs_envelopes_total", vehicle="mallory", result="invalid") is None


def test_packet_loss_is_net_of_late_packets(station: Station) -> None:
    """1. HK seq 0 and 3: two lost.
    2. seq 1 arrives late in a later batch: one lost.
    3. seq 1 again at its time: a duplicate, counted but not lost and not used for values.
    4. seq 1 at a newer time (the vehicle rebooted): a restart, its values shown."""
    station.feed(HELI, hk(station, [T0, T0 + 3], seq=[0, 3], battery_voltage=[7.0, 8.0]))
    assert station.value("gs_packets_lost_total", vehicle=HELI, apid="100") == 2.0

    station.feed(HELI, hk(station, [T0 + 1], seq=[1], battery_voltage=[5.0]))
    assert station.value("gs_packets_lost_total", vehicle=HELI, apid="100") == 1.0
    assert station.value("gs_battery_voltage_volts", vehicle=HELI) == pytest.approx(8.0)

    station.feed(HELI, hk(station, [T0 + 1], seq=[1], battery_voltage=[5.0]))
    assert station.value("gs_packets_total", vehicle=HELI, apid="100", result="duplicate") == 1
    assert station.value("gs_packets_lost_total", vehicle=HELI, apid="100") == 1.0
    assert station.value("gs_battery_voltage_volts", vehicle=HELI) == pytest.approx(8.0)

    station.feed(HELI, hk(station, [T0 + 9], seq=[1], battery_voltage=[6.0]))
    assert station.value("gs_packets_total", vehicle=HELI, apid="100", result="duplicate") == 1
    assert station.value("gs_sequence_restarts_total", vehicle=HELI, apid="100") == 1
    assert station.value("gs_packets_lost_total", vehicle=HELI, apid="100") == 1.0
    assert station.value("gs_battery_voltage_volts", vehicle=HELI) == pytest.approx(6.0)


def test_crc_error_counts_as_lost_and_is_not_used(station: Station) -> None:
    """HK seq 0, 1 (bad CRC, 9 V), 2: one crc_error, one lost, 9 V never shown."""
    body_7v = HELI_HK.pack(0, 0, 7000, 0, 50, 0, 0, 0, 0, 0)
    body_9v = HELI_HK.pack(0, 0, 9000, 0, 50, 0, 0, 0, 0, 0)
    buffer = (
        hand_pack(100, 0, body_7v, coarse=800_000_000)
        + hand_pack(100, 1, body_9v, coarse=800_000_001, crc=0)
        + hand_pack(100, 2, body_7v, coarse=800_000_002)
    )
    station.feed(HELI, buffer)
    assert station.value("gs_packets_total", vehicle=HELI, apid="100", result="crc_error") == 1
    assert station.value("gs_packets_total", vehicle=HELI, apid="100", result="ok") == 2
    assert station.value("gs_packets_lost_total", vehicle=HELI, apid="100") == 1.0
    assert station.value("gs_battery_voltage_volts", vehicle=HELI) == pytest.approx(7.0)


def test_unknown_apid_labels_are_capped(station: Station) -> None:
    """1. Four more unknown APIDs than the cap arrive: the first ones get their own label,
       the rest share apid="other" (all five results present for each new label).
    2. A buffer ending in one stray byte: the malformed tail has no APID: apid="none"."""
    extra = 4
    apids = range(300, 300 + MAX_UNKNOWN_APID_LABELS + extra)
    station.feed(HELI, b"".join(hand_pack(apid, 0, b"\x00" * 4) for apid in apids))
    unknown = "unknown_apid"
    for apid in list(apids)[:MAX_UNKNOWN_APID_LABELS]:
        assert station.value("gs_packets_total", vehicle=HELI, apid=str(apid), result=unknown) == 1
        assert station.value("gs_packets_total", vehicle=HELI, apid=str(apid), result="ok") == 0
    assert station.value("gs_packets_total", vehicle=HELI, apid="other", result=unknown) == extra
    last = str(apids[-1])
    assert station.value("gs_packets_total", vehicle=HELI, apid=last, result=unknown) is None

    station.feed(HELI, hk(station, [T0]) + b"\x08")
    assert station.value("gs_packets_total", vehicle=HELI, apid="none", result="malformed") == 1
    labels = {
        sample.labels["apid"]
        for family in station.registry.collect()
        if family.name == "gs_packets"
        for sample in family.samples
        if sample.labels["vehicle"] == HELI
    }
    assert len(labels) == len(station.dictionaries[HELI].packets) + MAX_UNKNOWN_APID_LABELS + 2


def test_packet_latency_histogram(station: Station) -> None:
    """An HK packet received 600 s after its packet time falls in the le=600 bucket."""
    station.feed(HELI, hk(station, [T0]), ert=T0 + 600.0)
    bucket = "gs_packet_latency_seconds_bucket"
    assert station.value(bucket, vehicle=HELI, le="480.0") == 0.0
    assert station.value(bucket, vehicle=HELI, le="600.0") == 1.0
    assert station.value(bucket, vehicle=HELI, le="+Inf") == 1.0
    assert station.value("gs_packet_latency_seconds_count", vehicle=HELI) == 1.0
    assert station.value("gs_packet_latency_seconds_sum", vehicle=HELI) == 600.0
    assert station.value(bucket, vehicle=HELI, le="3600.0") == 1.0
    assert station.value("gs_packet_latency_seconds_count", vehicle=ROVER) == 0.0


def test_latency_uses_the_ert_of_each_packets_envelope(station: Station) -> None:
    """Two envelopes in one batch with different ert: each packet gets its own envelope's."""
    first, second = hk(station, [T0]), hk(station, [T0 + 1])
    result = station.decoders[HELI].decode([first, second])
    ert = np.array([T0 + 100.0, T0 + 1 + 2000.0])
    station.telemetry.record_packets(vehicle=HELI, result=result, ert=ert)
    bucket = "gs_packet_latency_seconds_bucket"
    assert station.value(bucket, vehicle=HELI, le="120.0") == 1.0
    assert station.value(bucket, vehicle=HELI, le="2700.0") == 2.0
    assert station.value("gs_packet_latency_seconds_sum", vehicle=HELI) == pytest.approx(2100.0)


def test_decode_seconds_are_per_envelope(station: Station) -> None:
    """A batch of 4 envelopes decoded in 10 ms: four observations of 2.5 ms."""
    station.telemetry.record_decode_seconds(0.01, envelopes=4)
    assert station.value("gs_decode_seconds_count") == 4.0
    assert station.value("gs_decode_seconds_sum") == pytest.approx(0.01)
    assert station.value("gs_decode_seconds_bucket", le="0.001") == 0.0
    assert station.value("gs_decode_seconds_bucket", le="0.0025") == 4.0
    with pytest.raises(ValueError, match="at least one envelope"):
        station.telemetry.record_decode_seconds(0.01, envelopes=0)


def test_events_counted_by_severity_name(station: Station) -> None:
    """Two WARNING, one FATAL and one severity 7 (outside the table) event reports."""
    evr = station.dictionaries[HELI].by_name("HELI_EVR")
    buffer = b"".join(
        encode_packet(
            evr,
            seq=seq,
            time=T0 + seq,
            values={"severity": severity, "event_id": 7, "message": "rotor check"},
        )
        for seq, severity in enumerate(["WARNING", "FATAL", "WARNING", 7])
    )
    station.feed(HELI, buffer)
    assert station.value("gs_events_total", vehicle=HELI, severity="WARNING") == 2.0
    assert station.value("gs_events_total", vehicle=HELI, severity="FATAL") == 1.0
    assert station.value("gs_events_total", vehicle=HELI, severity="7") == 1.0
    assert station.value("gs_events_total", vehicle=HELI, severity="INFO") == 0.0


def test_unknown_vehicle_is_a_programmer_error(station: Station) -> None:
    """The pipeline only records vehicles it has a decoder for: anything else raises."""
    with pytest.raises(ValueError, match="mallory"):
        station.telemetry.record_envelope(
            relay="r", vehicle="mallory", seq=0, ert=T0, received_at=T0
        )


def test_a_snapshot_never_changes_after_it_was_taken(station: Station) -> None:
    """A snapshot taken before a batch still shows the old values after the batch."""
    station.feed(HELI, hk(station, [T0], battery_voltage=[7.0]))
    before = station.telemetry.snapshot()
    station.feed(HELI, hk(station, [T0 + 1], battery_voltage=[8.0]))
    registry = CollectorRegistry()
    registry.register(
        TelemetryCollector(
            snapshot=lambda: before,
            pipeline=lambda: PipelineStatus(
                mqtt_connected=False, reconnects_total=0, queue_depth=0
            ),
        )
    )
    assert registry.get_sample_value("gs_battery_voltage_volts", {"vehicle": HELI}) == 7.0
    assert station.value("gs_battery_voltage_volts", vehicle=HELI) == 8.0


@settings(max_examples=50, deadline=None)
@given(order=st.permutations(range(20)), cuts=st.sets(st.integers(1, 19), max_size=6))
def test_any_arrival_order_ends_with_the_newest_values_and_no_loss(
    dictionaries: dict[str, VehicleDictionary], order: list[int], cuts: set[int]
) -> None:
    """HK packets 0..19 (seq = index, voltage rising with time) arrive in any order, cut
    into batches anywhere: once all are in, the newest packet's voltage shows, nothing is
    lost net, and every packet was counted ok."""
    station = Station(dictionaries)
    volts = [6.0 + 0.1 * i for i in range(20)]
    bounds = [0, *sorted(cuts), 20]
    for low, high in itertools.pairwise(bounds):
        batch = order[low:high]
        station.feed(
            HELI,
            hk(
                station,
                [T0 + i for i in batch],
                seq=batch,
                battery_voltage=[volts[i] for i in batch],
            ),
        )
    assert station.value("gs_battery_voltage_volts", vehicle=HELI) == pytest.approx(volts[-1])
    assert station.value("gs_last_packet_time_seconds", vehicle=HELI, apid="100") == T0 + 19
    assert station.value("gs_packets_lost_total", vehicle=HELI, apid="100") == 0.0
    assert station.value("gs_packets_total", vehicle=HELI, apid="100", result="ok") == 20.0


@settings(max_examples=100, deadline=None)
@given(buffers=st.lists(st.binary(min_size=1, max_size=400), min_size=1, max_size=4))
def test_hostile_bytes_are_counted_with_bounded_labels(
    dictionaries: dict[str, VehicleDictionary], buffers: list[bytes]
) -> None:
    """Arbitrary bytes decoded and recorded never raise; every decoder entry is counted
    exactly once in gs_packets_total, under at most the capped set of apid labels."""
    station = Station(dictionaries)
    result = station.feed(HELI, *buffers)
    samples = [
        sample
        for family in station.registry.collect()
        if family.name == "gs_packets"
        for sample in family.samples
        if sample.labels["vehicle"] == HELI
    ]
    assert sum(sample.value for sample in samples) == result.result.shape[0]
    labels = {sample.labels["apid"] for sample in samples}
    assert len(labels) <= len(dictionaries[HELI].packets) + MAX_UNKNOWN_APID_LABELS + 2


def one_packet_dictionary(
    vehicle: str, name: str, fields: list[dict[str, Any]]
) -> VehicleDictionary:
    """A dictionary with one packet of u8 fields at consecutive offsets."""
    document = {
        "vehicle": vehicle,
        "packet": [{"apid": 100, "name": name, "length": 14 + len(fields), "field": fields}],
    }
    return parse_dictionary(document, source="test")


def test_a_role_packet_without_its_tables_is_a_definition_error() -> None:
    """A HELI_HK whose `mode` has no enum table cannot feed gs_vehicle_mode: start-up fails
    naming the packet and field, instead of exporting nonsense."""
    fields = [{"name": "mode", "offset": 0, "type": "u8"}]
    dictionary = one_packet_dictionary(HELI, "HELI_HK", fields)
    with pytest.raises(DefinitionError, match=r"HELI_HK\.mode: telemetry needs an enum table"):
        Telemetry({HELI: dictionary})


def test_packets_without_a_role_are_counted_only() -> None:
    """A vehicle whose dictionary has no ICD packet names still gets its counters."""
    fields = [{"name": "value", "offset": 0, "type": "u8"}]
    telemetry = Telemetry({"lab": one_packet_dictionary("lab", "BENCH", fields)})
    registry = CollectorRegistry()
    status = PipelineStatus(mqtt_connected=False, reconnects_total=0, queue_depth=0)
    registry.register(TelemetryCollector(snapshot=telemetry.snapshot, pipeline=lambda: status))
    labels = {"vehicle": "lab", "apid": "100", "result": "ok"}
    assert registry.get_sample_value("gs_packets_total", labels) == 0.0
    assert (
        registry.get_sample_value("gs_events_total", {"vehicle": "lab", "severity": "INFO"}) is None
    )


def flight_and_stress_arrivals(dictionaries: Mapping[str, VehicleDictionary]) -> list[Arrival]:
    """Flight 1 with every fault at 4 %, then a stress burst (thousands of IMU packets in a
    few milliseconds, so the vibration window picks the newest packets of a batch)."""
    runs = [
        SimulationOptions(
            profile="flight1",
            seed=3,
            faults=parse_faults(",".join(f"{kind}=0.04" for kind in FAULT_KINDS)),
            store_and_forward=True,
        ),
        SimulationOptions(profile="stress", stress_packets=6000, packets_per_envelope=500),
    ]
    return [
        check_payload(
            delivery.topic,
            delivery.payload,
            T0 + 86400.0,  # received after everything was sent
            max_payload_bytes=1 << 24,
            vehicles=dictionaries,
        )
        for options in runs
        for delivery in Simulation(options, start_time=T0).deliveries()
        if delivery.payload is not None
    ]


def test_lazy_decoders_give_the_same_snapshots(dictionaries: dict[str, VehicleDictionary]) -> None:
    """One stream through two Pipelines, eager and lazy decoders, in batches of 7: after
    every batch the snapshots are equal (the stream has events, vibration and faults)."""
    arrivals = flight_and_stress_arrivals(dictionaries)
    pipelines = [
        Pipeline(
            dictionaries,
            telemetry=Telemetry(dictionaries),
            decoders={v: PacketDecoder(d, calibrate=mode) for v, d in dictionaries.items()},
            clock=lambda: 0.0,  # gs_decode_seconds would differ by timing alone
        )
        for mode in ("eager", "lazy")
    ]
    for start in range(0, len(arrivals), 7):
        for pipeline in pipelines:
            pipeline.process(arrivals[start : start + 7])
        eager_snapshot, lazy_snapshot = (p.telemetry.snapshot() for p in pipelines)
        assert lazy_snapshot == eager_snapshot
    families = {f.family.name: f.samples for f in pipelines[1].telemetry.snapshot().families}
    assert sum(value for _, value in families["gs_events_total"]) > 0
    assert families["gs_vibration_rms_mps2"]
