"""Sample a flown profile at the ICD's packet rates and encode both vehicles' packets.

Rates are ICD section 4's: HELI_HK 1 Hz; HELI_NAV 30 Hz in the air and 1 Hz on the ground;
HELI_IMU 50 packets/s of 10 samples (500 samples/s); event reports at milestones;
ROVER_NAV and HBS_LINK 1 Hz. Values are engineering units handed to the encoder, which
inverts the calibrations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Final

import numpy as np
from groundstation.simulators.physics import (
    G_MARS_MPS2,
    ROTOR_RPM,
    Flight,
    body_from_world,
    ground_height_m,
)
from groundstation.simulators.stream import ApidBlock, PacketStream, event_block, fixed_block
from numpy.typing import NDArray

from groundstation.core.definitions import PacketDef, VehicleDictionary

Floats = NDArray[np.float64]

INGENUITY: Final = "ingenuity"
PERSEVERANCE: Final = "perseverance"
HELI_HK, HELI_NAV, HELI_IMU, HELI_EVR = 100, 101, 102, 103
ROVER_NAV, HBS_LINK, ROVER_EVR = 200, 201, 203

NAV_AIR_HZ: Final = 30.0
IMU_PACKETS_HZ: Final = 50.0
IMU_SAMPLES: Final = 10
NAV_INIT_S: Final = 2.0  # navigation filter initialising after power-on
ROVER_OFFSET_S: Final = 0.5  # rover packets half a second after the helicopter's 1 Hz ones

# Severity codes of the EVR enum (ICD section 4).
DEBUG, INFO = 0, 1


@dataclass(frozen=True, kw_only=True)
class FlightTelemetry:
    """Both vehicles' packets for one flight, and the flight they describe."""

    flight: Flight
    start_time: float
    streams: Mapping[str, PacketStream]

    @property
    def takeoff_time(self) -> float:
        return self.start_time + self.flight.timeline.takeoff_s

    @property
    def touchdown_time(self) -> float:
        return self.start_time + self.flight.timeline.touchdown_s

    @property
    def end_time(self) -> float:
        return self.start_time + self.flight.duration_s


def _next_counts(counts: MutableMapping[int, int], apid: int, n: int) -> int:
    """First unwrapped sequence count for n new packets of an APID; advances the counter."""
    first = counts.get(apid, 0)
    counts[apid] = first + n
    return first


def link_rssi_dbm(distance_m: Floats) -> Floats:
    """900 MHz link budget between helicopter and base station: free-space fall-off."""
    return np.asarray(-32.0 - 20.0 * np.log10(np.maximum(distance_m, 1.0)), dtype=np.float64)


def fly(
    flight: Flight,
    *,
    dictionaries: Mapping[str, VehicleDictionary],
    rng: np.random.Generator,
    start_time: float,
    counts: MutableMapping[int, int],
    store_and_forward: bool,
) -> FlightTelemetry:
    """Encode the packets of both vehicles for one flight; `counts` carries sequence counters."""
    heli = dictionaries[INGENUITY].packets
    rover = dictionaries[PERSEVERANCE].packets
    line = flight.timeline
    duration = flight.duration_s
    rover_position = np.array(flight.rover_position)

    # HELI_IMU: the densest stream, and the one whose vibration shows the rotors.
    imu_rel = np.arange(0.0, duration, 1.0 / IMU_PACKETS_HZ)
    imu_columns = _imu_columns(flight, imu_rel, rng)
    # HELI_NAV: 30 Hz from takeoff to touchdown, 1 Hz on the ground.
    air = line.takeoff_s + np.arange(
        0.0, line.touchdown_s - line.takeoff_s + 1e-9, 1.0 / NAV_AIR_HZ
    )
    ground = np.arange(0.0, duration, 1.0)
    ground = ground[(ground < line.takeoff_s) | (ground > line.touchdown_s)]
    nav_rel = np.sort(np.concatenate([ground, air]))
    nav_columns = _nav_columns(flight, nav_rel, rng)
    # HELI_HK: 1 Hz.
    hk_rel = np.arange(0.0, duration, 1.0)
    hk_position = flight.kinematics(hk_rel).position
    hk_rssi = link_rssi_dbm(np.linalg.norm(hk_position - rover_position, axis=1))
    hk_columns = _hk_columns(flight, hk_rel, hk_rssi + rng.normal(0.0, 1.0, hk_rel.shape))

    heli_blocks = [
        fixed_block(
            heli[HELI_HK],
            first_count=_next_counts(counts, HELI_HK, hk_rel.shape[0]),
            time=start_time + hk_rel,
            columns=hk_columns,
        ),
        fixed_block(
            heli[HELI_NAV],
            first_count=_next_counts(counts, HELI_NAV, nav_rel.shape[0]),
            time=start_time + nav_rel,
            columns=nav_columns,
        ),
        fixed_block(
            heli[HELI_IMU],
            first_count=_next_counts(counts, HELI_IMU, imu_rel.shape[0]),
            time=start_time + imu_rel,
            columns=imu_columns,
        ),
    ]
    heli_events = _helicopter_events(flight, start_time)
    heli_blocks.append(
        event_block(
            heli[HELI_EVR],
            first_count=_next_counts(counts, HELI_EVR, len(heli_events)),
            events=heli_events,
        )
    )
    heli_stream = PacketStream.merge(INGENUITY, heli_blocks)

    rover_rel = np.arange(ROVER_OFFSET_S, duration, 1.0)
    rover_blocks = _rover_blocks(
        flight,
        rover,
        rover_rel=rover_rel,
        start_time=start_time,
        counts=counts,
        heli_stream=heli_stream,
        rssi=np.interp(rover_rel, hk_rel, hk_rssi) - 2.0 + rng.normal(0.0, 1.0, rover_rel.shape),
        store_and_forward=store_and_forward,
    )
    return FlightTelemetry(
        flight=flight,
        start_time=start_time,
        streams={
            INGENUITY: heli_stream,
            PERSEVERANCE: PacketStream.merge(PERSEVERANCE, rover_blocks),
        },
    )


def _hk_columns(flight: Flight, t: Floats, rssi: Floats) -> dict[str, object]:
    slow = flight.slow_at(t)
    rpm = flight.rotor_rpm(t)
    battery_low = slow.soc < 0.2
    flags = slow.heater_on.astype(np.int64) | (battery_low.astype(np.int64) << 1)
    return {
        "mode": flight.timeline.mode(t),
        "flags": flags,
        "battery_voltage": slow.voltage,
        "battery_current": np.clip(slow.current, -327.0, 327.0),
        "battery_soc": np.clip(np.rint(slow.soc * 100.0), 0, 100),
        "link_rssi": np.clip(np.rint(rssi), -128, 127),
        "battery_temp": slow.battery_temp,
        "avionics_temp": slow.avionics_temp,
        # Coaxial rotors, counter-rotating at the same commanded speed.
        "rotor_rpm_upper": np.rint(rpm),
        "rotor_rpm_lower": np.rint(np.where(rpm > 0, rpm * 0.9995, 0.0)),
    }


def _nav_columns(flight: Flight, t: Floats, rng: np.random.Generator) -> dict[str, object]:
    kinematics = flight.kinematics(t)
    position = kinematics.position
    line = flight.timeline
    in_air = (t >= line.takeoff_s) & (t <= line.touchdown_s)
    terrain = ground_height_m(position[:, 0], position[:, 1])
    lidar = position[:, 2] - terrain + np.where(in_air, rng.normal(0.0, 0.003, t.shape), 0.0)
    nav_state = np.where(t < NAV_INIT_S, 0, np.where(in_air, 2, 1))
    lidar_valid = in_air.astype(np.int64)
    vision_valid = (in_air & (lidar > 1.0)).astype(np.int64) << 1
    return {
        "pos_x": position[:, 0],
        "pos_y": position[:, 1],
        "pos_z": position[:, 2],
        "vel_x": kinematics.velocity[:, 0],
        "vel_y": kinematics.velocity[:, 1],
        "vel_z": kinematics.velocity[:, 2],
        "roll": kinematics.roll,
        "pitch": kinematics.pitch,
        "yaw": kinematics.yaw,
        "lidar_alt": np.clip(lidar, 0.0, 65.535),
        "nav_state": nav_state,
        "nav_flags": lidar_valid | vision_valid,
    }


def _imu_columns(flight: Flight, packet_t: Floats, rng: np.random.Generator) -> dict[str, object]:
    """Specific force and body rates at 500 Hz, with rotor vibration while the rotors turn."""
    t = (packet_t[:, None] + np.arange(IMU_SAMPLES) / (IMU_PACKETS_HZ * IMU_SAMPLES)).ravel()
    kinematics = flight.kinematics(t)
    force = kinematics.acceleration + np.array([0.0, 0.0, G_MARS_MPS2])
    accel = body_from_world(force, kinematics.roll, kinematics.pitch, kinematics.yaw)
    roll, pitch = kinematics.roll, kinematics.pitch
    yaw = np.unwrap(kinematics.yaw)
    d_roll, d_pitch, d_yaw = (np.gradient(angle, t) for angle in (roll, pitch, yaw))
    # Euler angle rates to body rates (Z-Y-X convention, as in physics.tilt_for).
    gyro = np.stack(
        [
            d_roll - d_yaw * np.sin(pitch),
            d_pitch * np.cos(roll) + d_yaw * np.cos(pitch) * np.sin(roll),
            -d_pitch * np.sin(roll) + d_yaw * np.cos(pitch) * np.cos(roll),
        ],
        axis=1,
    )
    strength = (flight.rotor_rpm(t) / ROTOR_RPM) ** 2
    angle = 2.0 * math.pi * flight.rotor_phase(t)
    once, twice = angle, 2.0 * angle  # 1/rev and blade-pass lines of the 2-bladed rotors
    vibration = np.stack(
        [
            0.60 * np.sin(once) + 0.25 * np.sin(twice + 1.0),
            0.60 * np.cos(once) + 0.25 * np.cos(twice + 0.4),
            0.40 * np.sin(twice + 0.3),
        ],
        axis=1,
    )
    accel = accel + strength[:, None] * vibration + rng.normal(0.0, 0.02, accel.shape)
    gyro = gyro + strength[:, None] * 0.03 * vibration + rng.normal(0.0, 0.002, gyro.shape)
    accel = np.clip(accel, -32.0, 32.0).reshape(-1, IMU_SAMPLES, 3)
    gyro = np.clip(gyro, -3.2, 3.2).reshape(-1, IMU_SAMPLES, 3)
    return {
        "ax": accel[:, :, 0],
        "ay": accel[:, :, 1],
        "az": accel[:, :, 2],
        "gx": gyro[:, :, 0],
        "gy": gyro[:, :, 1],
        "gz": gyro[:, :, 2],
    }


def _helicopter_events(flight: Flight, start_time: float) -> list[tuple[float, int, int, str]]:
    """Milestone event reports: power-on, arming, spin-up, takeoff, landing, disarm."""
    line = flight.timeline
    profile = flight.profile
    return [
        (start_time + 0.2, DEBUG, 1000, f"helicopter awake, profile {profile.name}"),
        (start_time + line.preflight_s, INFO, 1001, "preflight checks started"),
        (start_time + line.spinup_s - 1.0, INFO, 1002, "motors armed"),
        (start_time + line.spinup_s, INFO, 1003, "rotor spin-up started"),
        (
            start_time + line.spinup_s + profile.spinup_s,
            INFO,
            1004,
            f"rotors at {ROTOR_RPM:.0f} rpm",
        ),
        (start_time + line.takeoff_s, INFO, 1005, "takeoff"),
        (start_time + line.touchdown_s, INFO, 1006, "touchdown: landed"),
        (start_time + line.spindown_end_s, INFO, 1007, "rotors stopped, motors disarmed"),
    ]


def _rover_blocks(
    flight: Flight,
    definitions: Mapping[int, PacketDef],
    *,
    rover_rel: Floats,
    start_time: float,
    counts: MutableMapping[int, int],
    heli_stream: PacketStream,
    rssi: Floats,
    store_and_forward: bool,
) -> list[ApidBlock]:
    """Perseverance parked nearby: pose and base-station link at 1 Hz, a few events."""
    profile = flight.profile
    n = rover_rel.shape[0]
    times = start_time + rover_rel
    east, north, up = flight.rover_position
    pose = {
        "pos_x": east,
        "pos_y": north,
        "pos_z": up,
        "heading": math.radians(profile.rover_heading_deg),
        "odometry": profile.rover_odometry_m,
        "drive_state": "PARKED",
        "reserved": 0,
    }
    # What the base station has received from the helicopter by each rover packet.
    received = np.searchsorted(heli_stream.time, times, side="right")
    received_bytes = np.concatenate([[0], np.cumsum(heli_stream.length)])[received]
    if store_and_forward:
        buffered = received_bytes  # nothing relayed until the pass after the flight
    else:
        earlier = np.searchsorted(heli_stream.time, times - 1.0, side="right")
        buffered = received_bytes - np.concatenate([[0], np.cumsum(heli_stream.length)])[earlier]
    quality = np.clip(np.rint(100.0 - 2.0 * np.maximum(0.0, -60.0 - rssi)), 0, 100)
    link = {
        "heli_link_up": 1,
        "hbs_rssi": np.clip(np.rint(rssi), -128, 127),
        "link_quality": quality,
        "reserved": 0,
        "packets_relayed": received,
        "buffer_used": buffered,
    }
    line = flight.timeline
    events = [
        (start_time + 0.3, INFO, 2001, "HBS: helicopter flight sequence uplinked"),
        (start_time + line.takeoff_s - 5.0, INFO, 2002, "Mastcam-Z: imaging the helicopter"),
        (
            start_time + line.touchdown_s + 1.0,
            INFO,
            2003,
            f"HBS: flight data stored, {int(heli_stream.length.sum())} bytes",
        ),
    ]
    return [
        fixed_block(
            definitions[ROVER_NAV],
            first_count=_next_counts(counts, ROVER_NAV, n),
            time=times,
            columns=pose,
        ),
        fixed_block(
            definitions[HBS_LINK],
            first_count=_next_counts(counts, HBS_LINK, n),
            time=times,
            columns=link,
        ),
        event_block(
            definitions[ROVER_EVR],
            first_count=_next_counts(counts, ROVER_EVR, len(events)),
            events=events,
        ),
    ]
