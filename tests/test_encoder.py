"""The encoder against packets hand-packed with `struct` from the ICD tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from groundstation.core.definitions import (
    NUMERIC_TYPES,
    PacketDef,
    VehicleDictionary,
    load_dictionary,
)
from groundstation.core.encoder import encode_packet, encode_packets, packet_time, sclk_from_time
from tests.icd_packets import (
    EVR_FIXED,
    HBS_LINK,
    HELI_HK,
    HELI_IMU,
    HELI_NAV,
    ROVER_NAV,
    hand_pack,
    time_of,
)

COARSE, FINE = 700_000_000, 0x8000
TIME = time_of(COARSE, FINE)
AXES = ("ax", "ay", "az", "gx", "gy", "gz")


@pytest.fixture(scope="module")
def ingenuity() -> VehicleDictionary:
    return load_dictionary("ingenuity")


@pytest.fixture(scope="module")
def perseverance() -> VehicleDictionary:
    return load_dictionary("perseverance")


HK_VALUES: Mapping[str, object] = {
    "mode": "FLIGHT",
    "flags": 0b10101,
    "battery_voltage": 7.912,
    "battery_current": -12.34,
    "battery_soc": 87,
    "link_rssi": -61,
    "battery_temp": 21.5,
    "avionics_temp": -3.25,
    "rotor_rpm_upper": 2537,
    "rotor_rpm_lower": 2541,
}
HK_BODY = HELI_HK.pack(3, 0b10101, 7912, -1234, 87, -61, 2150, -325, 2537, 2541)


def test_heli_hk_matches_hand_packed(ingenuity: VehicleDictionary) -> None:
    """HELI_HK: enum by name, flags, scaled u16/i16, i8 and u16 fields land per ICD 4."""
    packet = encode_packet(ingenuity.packets[100], seq=42, time=TIME, values=HK_VALUES)
    assert packet == hand_pack(100, 42, HK_BODY, coarse=COARSE, fine=FINE)


def test_heli_nav_matches_hand_packed(ingenuity: VehicleDictionary) -> None:
    """HELI_NAV: nine f32, scaled lidar altitude, enum by number, flag byte."""
    floats = [1.5, -2.25, 5.0, 0.5, -0.125, 0.0, 0.01, -0.02, 3.0]
    names = ["pos_x", "pos_y", "pos_z", "vel_x", "vel_y", "vel_z", "roll", "pitch", "yaw"]
    values: dict[str, object] = dict(zip(names, floats, strict=True))
    values.update(lidar_alt=4.999, nav_state=2, nav_flags=3)
    packet = encode_packet(ingenuity.packets[101], seq=16383, time=TIME, values=values)
    body = HELI_NAV.pack(*floats, 4999, 2, 3)
    assert packet == hand_pack(101, 16383, body, coarse=COARSE, fine=FINE)


def test_heli_imu_matches_hand_packed(ingenuity: VehicleDictionary) -> None:
    """HELI_IMU: ten samples of six i16 each, interleaved sample by sample (ICD 4)."""
    raw = np.arange(-30, 30, dtype=np.int64).reshape(10, 6) * 111
    scales = np.array([0.001] * 3 + [0.0001] * 3)
    values = {axis: (raw[:, i] * scales[i]).tolist() for i, axis in enumerate(AXES)}
    packet = encode_packet(ingenuity.packets[102], seq=0, time=TIME, values=values)
    body = HELI_IMU.pack(*raw.ravel().tolist())
    assert packet == hand_pack(102, 0, body, coarse=COARSE, fine=FINE)


@pytest.mark.parametrize("vehicle_apid", [("ingenuity", 103), ("perseverance", 203)])
@pytest.mark.parametrize("message", ["", "rotor spin-up complete", "température ok ✓", "x" * 200])
def test_event_reports_match_hand_packed(vehicle_apid: tuple[str, int], message: str) -> None:
    """HELI_EVR and ROVER_EVR: variable length, UTF-8 text to the end of the body."""
    vehicle, apid = vehicle_apid
    definition = load_dictionary(vehicle).packets[apid]
    values = {"severity": "WARNING", "event_id": 0xBEEF, "message": message}
    packet = encode_packet(definition, seq=7, time=TIME, values=values)
    body = EVR_FIXED.pack(2, 0xBEEF) + message.encode()
    assert packet == hand_pack(apid, 7, body, coarse=COARSE, fine=FINE)


def test_rover_packets_match_hand_packed(perseverance: VehicleDictionary) -> None:
    """ROVER_NAV and HBS_LINK of the rover dictionary, field by field per ICD 4."""
    nav = {"pos_x": 10.5, "pos_y": -3.0, "pos_z": 0.25, "heading": 1.5, "odometry": 1234.5}
    nav_values = {**nav, "drive_state": "DRIVING", "reserved": 0}
    packet = encode_packet(perseverance.packets[200], seq=9, time=TIME, values=nav_values)
    assert packet == hand_pack(
        200, 9, ROVER_NAV.pack(*nav.values(), 1, 0), coarse=COARSE, fine=FINE
    )
    link = {
        "heli_link_up": 1,
        "hbs_rssi": -70,
        "link_quality": 93,
        "reserved": 0,
        "packets_relayed": 4_000_000_000,
        "buffer_used": 123_456,
    }
    packet = encode_packet(perseverance.packets[201], seq=10, time=TIME, values=link)
    assert packet == hand_pack(201, 10, HBS_LINK.pack(*link.values()), coarse=COARSE, fine=FINE)


def test_scaled_values_round_half_to_even(ingenuity: VehicleDictionary) -> None:
    """Calibration is inverted with round-half-even: 2.5 mV -> 2, 3.5 mV -> 4 (interfaces.md)."""
    for volts, raw in ((0.0025, 2), (0.0035, 4)):
        values = {**HK_VALUES, "battery_voltage": volts}
        packet = encode_packet(ingenuity.packets[100], seq=0, time=TIME, values=values)
        assert int.from_bytes(packet[14:16], "big") == raw


def _columns(definition: PacketDef, n: int, rng: np.random.Generator) -> dict[str, Any]:
    """Random in-range raw values per field, calibrated to engineering units."""
    columns: dict[str, Any] = {}
    shape = (n, definition.samples) if definition.samples > 1 else (n,)
    for field in definition.numeric_fields:
        kind = np.dtype(NUMERIC_TYPES[field.type])
        if kind.kind == "f":
            columns[field.name] = rng.normal(size=shape).astype(np.float32)
            continue
        info = np.iinfo(kind)
        raw = rng.integers(info.min, int(info.max) + 1, size=shape)
        columns[field.name] = raw * field.scale if field.scale else raw
    return columns


@pytest.mark.parametrize(
    ("vehicle", "apid"),
    [("ingenuity", 100), ("ingenuity", 101), ("ingenuity", 102), ("perseverance", 200),
     ("perseverance", 201)],
)  # fmt: skip
def test_vectorised_equals_scalar(vehicle: str, apid: int) -> None:
    """encode_packets gives byte for byte the concatenation of encode_packet calls."""
    definition = load_dictionary(vehicle).packets[apid]
    n = 25
    rng = np.random.default_rng(apid)
    columns = _columns(definition, n, rng)
    seq = (np.arange(n) * 700) % 16384
    times = TIME + np.arange(n) * 0.0213
    batch = encode_packets(definition, seq=seq, time=times, columns=columns)
    one_by_one = b"".join(
        encode_packet(
            definition,
            seq=int(seq[i]),
            time=float(times[i]),
            values={name: column[i] for name, column in columns.items()},
        )
        for i in range(n)
    )
    assert batch == one_by_one


def test_vectorised_broadcasts_constants(ingenuity: VehicleDictionary) -> None:
    """A scalar column or time is repeated for every packet (handy for simulators)."""
    values = {name: value for name, value in HK_VALUES.items() if name != "mode"}
    batch = encode_packets(
        ingenuity.packets[100], seq=[1, 2], time=TIME, columns={**values, "mode": ["FLIGHT", 3]}
    )
    assert batch == hand_pack(100, 1, HK_BODY, coarse=COARSE, fine=FINE) + hand_pack(
        100, 2, HK_BODY, coarse=COARSE, fine=FINE
    )


def test_vectorised_empty(ingenuity: VehicleDictionary) -> None:
    """Zero packets encode to no bytes."""
    columns = {name: np.zeros(0) for name in HK_VALUES}
    assert (
        encode_packets(ingenuity.packets[100], seq=np.zeros(0, int), time=[], columns=columns)
        == b""
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"battery_voltage": 65.536}, r"HELI_HK.battery_voltage: a value is outside 0..65.535 V"),
        ({"battery_current": -400.0}, r"battery_current: a value is outside"),
        ({"battery_soc": 256}, r"battery_soc: a value is outside 0..255"),
        ({"link_rssi": -129}, r"link_rssi: a value is outside -128..127"),
        ({"rotor_rpm_upper": 2537.5}, r"rotor_rpm_upper: values must be whole numbers"),
        ({"mode": "HOVER"}, r"mode: unknown enum name 'HOVER'"),
        ({"mode": float("nan")}, r"mode: values must be whole numbers"),
        ({"battery_temp": float("inf")}, r"battery_temp: a value is outside"),
        ({"flags": "heater_on"}, r"flags: needs numbers"),
    ],
)
def test_values_that_do_not_fit_raise(
    ingenuity: VehicleDictionary, change: dict[str, object], message: str
) -> None:
    """A value outside its field's range is a ValueError naming packet and field."""
    with pytest.raises(ValueError, match=message):
        encode_packet(ingenuity.packets[100], seq=0, time=TIME, values={**HK_VALUES, **change})


def test_field_names_and_counts_are_checked(ingenuity: VehicleDictionary) -> None:
    """Missing or unknown fields, bad sequence counts and bad shapes are ValueErrors."""
    hk = ingenuity.packets[100]
    partial = {k: v for k, v in HK_VALUES.items() if k != "mode"}
    with pytest.raises(ValueError, match=r"missing fields \['mode'\], unknown fields \[\]"):
        encode_packet(hk, seq=0, time=TIME, values=partial)
    with pytest.raises(ValueError, match=r"unknown fields \['mood'\]"):
        encode_packet(hk, seq=0, time=TIME, values={**HK_VALUES, "mood": 1})
    for seq in (-1, 16384):
        with pytest.raises(ValueError, match="sequence count"):
            encode_packet(hk, seq=seq, time=TIME, values=HK_VALUES)
    with pytest.raises(ValueError, match="sequence count True is not an integer"):
        encode_packet(hk, seq=True, time=TIME, values=HK_VALUES)
    numpy_count = encode_packet(hk, seq=np.int64(7), time=np.float64(TIME), values=HK_VALUES)
    assert numpy_count == encode_packet(hk, seq=7, time=TIME, values=HK_VALUES)
    with pytest.raises(ValueError, match=r"sequence counts must lie in 0\.\.16383"):
        encode_packets(hk, seq=[16384], time=TIME, columns=HK_VALUES)
    imu = ingenuity.packets[102]
    with pytest.raises(ValueError, match=r"HELI_IMU.ax: shape \(9,\) does not fit \(1, 10\)"):
        encode_packet(imu, seq=0, time=TIME, values={axis: [0.0] * 9 for axis in AXES})


def test_float_overflow_raises(ingenuity: VehicleDictionary) -> None:
    """A finite value too big for f32 is refused rather than sent as infinity."""
    nav = ingenuity.packets[101]
    values = {field.name: 0 for field in nav.fields}
    with pytest.raises(ValueError, match=r"HELI_NAV.pos_x: a value overflows f32"):
        encode_packet(nav, seq=0, time=TIME, values={**values, "pos_x": 1e39})


def test_text_checks(ingenuity: VehicleDictionary) -> None:
    """Event text must be a str whose UTF-8 fits the 200-byte limit; fixed APIDs only in bulk."""
    evr = ingenuity.packets[103]
    values = {"severity": 1, "event_id": 1}
    with pytest.raises(ValueError, match=r"packet would be 218 bytes, allowed 17..217"):
        encode_packet(evr, seq=0, time=TIME, values={**values, "message": "é" * 100 + "x"})
    with pytest.raises(ValueError, match="text must be a str"):
        encode_packet(evr, seq=0, time=TIME, values={**values, "message": b"bytes"})
    with pytest.raises(ValueError, match="variable length: use encode_packet"):
        encode_packets(evr, seq=[0], time=TIME, columns={**values, "message": ["a"]})


def test_sclk_conversion() -> None:
    """ICD 3: time = 946728000 + coarse + fine/65536; fine rounds to nearest and carries."""
    assert sclk_from_time(946728000.0) == (0, 0)
    assert sclk_from_time(time_of(COARSE, FINE)) == (COARSE, FINE)
    assert sclk_from_time(time_of(COARSE, 0) + 0.9999999) == (COARSE + 1, 0)
    assert packet_time(COARSE, FINE) == time_of(COARSE, FINE)
    coarse, fine = sclk_from_time(np.array([946728000.0, time_of(5, 65535), 946728000 + 0.9999999]))
    assert coarse.tolist() == [0, 5, 1]
    assert fine.tolist() == [0, 65535, 0]
    times = packet_time(np.array([0, 2**32 - 1], dtype=">u4"), np.array([1, 65535], dtype=">u2"))
    assert times.tolist() == [time_of(0, 1), time_of(2**32 - 1, 65535)]
    for bad in (946727999.0, 946728000.0 + 2**32, float("nan")):
        with pytest.raises(ValueError, match="packet time"):
            sclk_from_time(bad)
    with pytest.raises(ValueError, match="packet times"):
        sclk_from_time(np.array([946727999.0]))


@given(st.integers(0, 2**32 - 1), st.integers(0, 65535))
def test_sclk_round_trip(coarse: int, fine: int) -> None:
    """Every SCLK value survives packet_time then sclk_from_time, scalar and vectorised."""
    assert sclk_from_time(packet_time(coarse, fine)) == (coarse, fine)
    c, f = sclk_from_time(packet_time(np.array([coarse]), np.array([fine])))
    assert (int(c[0]), int(f[0])) == (coarse, fine)
