"""ICD section 7's samples from hand-packed packets, through the live path's Pipeline."""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgpack
import numpy as np
import pytest

from groundstation.consumers.history.samples import HistorySamples
from groundstation.consumers.pipeline import Pipeline, batched
from groundstation.consumers.telemetry import Telemetry
from groundstation.core.definitions import load_dictionaries
from groundstation.core.envelope import check_payload
from tests.icd_packets import HELI_HK, HELI_IMU, HELI_NAV, ROVER_NAV, hand_pack, time_of

COARSE = 800_000_000
T0 = time_of(COARSE, 0)
Samples = dict[str, list[tuple[int, float]]]


def envelope(vehicle: str, seq: int, packets: bytes) -> bytes:
    document = {
        "v": 1,
        "relay": "perseverance",
        "vehicle": vehicle,
        "seq": seq,
        "ert": T0 + 3600.0 + seq,
        "packets": packets,
    }
    payload: bytes = msgpack.packb(document, use_bin_type=True)
    return payload


def hk(seq: int, second: int, *, mode: int = 3, flags: int = 0b101) -> bytes:
    body = HELI_HK.pack(mode, flags, 7500, 100, 80, -60, 2000, 2500, 2537, 2536)
    return hand_pack(100, seq, body, coarse=COARSE + second)


def nav(seq: int, second: int, fine: int, xyz: tuple[float, float, float]) -> bytes:
    body = HELI_NAV.pack(*xyz, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 5000, 2, 3)
    return hand_pack(101, seq, body, coarse=COARSE + second, fine=fine)


def rover(seq: int, second: int, xyz: tuple[float, float, float]) -> bytes:
    body = ROVER_NAV.pack(*xyz, 0.5, 180.0, 0, 0)
    return hand_pack(200, seq, body, coarse=COARSE + second, fine=32768)


def imu(seq: int, second: int, fine: int, accel: Sequence[tuple[int, int, int]]) -> bytes:
    raw = [value for ax, ay, az in accel for value in (ax, ay, az, 0, 0, 0)]
    return hand_pack(102, seq, HELI_IMU.pack(*raw), coarse=COARSE + second, fine=fine)


def history(payloads: Sequence[tuple[str, bytes]], *, batch: int = 1024) -> Samples:
    dictionaries = load_dictionaries()
    pipeline = Pipeline(dictionaries, telemetry=Telemetry(dictionaries))
    samples = HistorySamples(dictionaries)
    arrivals = (
        check_payload(
            f"mars/tm/{vehicle}",
            payload,
            T0 + 3600.0,
            max_payload_bytes=2**24,
            vehicles=dictionaries,
        )
        for vehicle, payload in payloads
    )
    out: Samples = {}
    for arrived in batched(arrivals, batch):
        for decoded in pipeline.process(arrived):
            for key, points in samples.take(decoded).series.items():
                labels = dict(key)
                assert labels.pop("timeline") == "spacecraft"
                name = labels.pop("__name__")
                rendered = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
                out.setdefault(f"{name}{{{rendered}}}", []).extend(points)
    return out


def ms(time_s: float) -> int:
    return math.floor(time_s * 1000 + 0.5)


def test_housekeeping_every_value_and_every_one_hot_label_at_every_packet() -> None:
    out = history([("ingenuity", envelope("ingenuity", 0, hk(0, 0) + hk(1, 1, mode=4)))])
    assert out["gs_battery_voltage_volts{vehicle=ingenuity}"] == [(ms(T0), 7.5), (ms(T0 + 1), 7.5)]
    assert out["gs_battery_charge_ratio{vehicle=ingenuity}"] == [(ms(T0), 0.8), (ms(T0 + 1), 0.8)]
    assert out["gs_rotor_speed_rpm{rotor=lower,vehicle=ingenuity}"][0] == (ms(T0), 2536.0)
    modes = ("IDLE", "PREFLIGHT", "SPINUP", "FLIGHT", "LANDED", "SAFE")
    for mode in modes:
        expected = [(ms(T0), float(mode == "FLIGHT")), (ms(T0 + 1), float(mode == "LANDED"))]
        assert out[f"gs_vehicle_mode{{mode={mode},vehicle=ingenuity}}"] == expected
    faults = {"heater_on": 1.0, "battery_low": 0.0, "imu_fault": 1.0}
    faults |= {"lidar_fault": 0.0, "motor_overtemp": 0.0}
    for fault, value in faults.items():
        assert out[f"gs_fault_active{{fault={fault},vehicle=ingenuity}}"] == [
            (ms(T0), value),
            (ms(T0 + 1), value),
        ]
    # Nothing of Link and pipeline, none of the extra gauges.
    assert not [key for key in out if key.startswith(("gs_packets", "gs_last", "gs_envelopes"))]


def test_a_redelivered_envelope_writes_nothing_twice() -> None:
    payload = envelope("ingenuity", 0, hk(0, 0) + hk(1, 1))
    once = history([("ingenuity", payload)])
    twice = history([("ingenuity", payload), ("ingenuity", payload)])
    assert twice == once


def test_ground_speed_and_flight_distance_per_nav_packet_after_takeoff() -> None:
    packets = hk(0, 0, mode=1) + nav(0, 0, 0, (0.0, 0.0, 0.0))  # before takeoff
    packets += hk(1, 1, mode=2)  # SPINUP: the takeoff
    packets += nav(1, 1, 0, (3.0, 4.0, 1.0)) + nav(2, 2, 0, (6.0, 8.0, 1.0))
    out = history([("ingenuity", envelope("ingenuity", 0, packets))])
    assert out["gs_ground_speed_meters_per_second{vehicle=ingenuity}"] == [
        (ms(T0), 2.0),
        (ms(T0 + 1), 2.0),
        (ms(T0 + 2), 2.0),
    ]
    assert out["gs_flight_distance_meters{vehicle=ingenuity}"] == [
        (ms(T0 + 1), 0.0),
        (ms(T0 + 2), 5.0),
    ]


def test_range_against_the_newest_rover_position_at_or_before_whatever_arrives_first() -> None:
    heli = [
        ("ingenuity", envelope("ingenuity", 0, nav(0, 10, 0, (0.0, 0.0, 0.0)))),
        ("ingenuity", envelope("ingenuity", 1, nav(1, 11, 0, (3.0, 4.0, 0.0)))),
        ("ingenuity", envelope("ingenuity", 2, nav(2, 13, 0, (0.0, 0.0, 12.0)))),
    ]
    rovers = [
        ("perseverance", envelope("perseverance", 0, rover(0, 10, (0.0, 0.0, 0.0)))),
        ("perseverance", envelope("perseverance", 1, rover(1, 12, (0.0, 0.0, 7.0)))),
        ("perseverance", envelope("perseverance", 2, rover(2, 13, (1.0, 1.0, 1.0)))),
    ]
    expected = [(ms(T0 + 11), 5.0), (ms(T0 + 13), 5.0)]  # none at 10: before the first rover
    for order in (heli + rovers, rovers + heli, [*heli[:1], *rovers[:2], *heli[1:], rovers[2]]):
        for batch in (1, 100):
            out = history(order, batch=batch)
            assert sorted(out["gs_range_to_rover_meters{vehicle=ingenuity}"]) == expected


def test_vibration_one_sample_per_whole_second_at_its_end() -> None:
    rng = np.random.default_rng(7)
    packets = b""
    accel: dict[int, list[tuple[int, int, int]]] = {100: [], 101: []}
    seq = 0
    for second in (100, 101):
        for start in (0, 0.5):  # two packets of ten samples each per second
            values = [tuple(int(v) for v in rng.integers(-2000, 2000, 3)) for _ in range(10)]
            accel[second].extend(values)  # type: ignore[arg-type]
            packets += imu(seq, second, int(start * 65536), values)  # type: ignore[arg-type]
            seq += 1
    packets += imu(seq, 102, 0, [(0, 0, 0)] * 10)  # opens second 102: 101 is complete
    out = history([("ingenuity", envelope("ingenuity", 0, packets))], batch=1)
    for index, axis in enumerate("xyz"):
        points = out[f"gs_vibration_rms_mps2{{axis={axis},vehicle=ingenuity}}"]
        assert [t for t, _ in points] == [ms(T0 + 101), ms(T0 + 102)]
        for (_, value), second in zip(points, (100, 101), strict=True):
            raw = np.array([sample[index] for sample in accel[second]]) * 0.001
            assert value == pytest.approx(float(np.sqrt(np.mean((raw - raw.mean()) ** 2))))


def test_the_same_archive_gives_the_same_samples_whatever_the_batching() -> None:
    payloads = []
    for k in range(6):
        packets = hk(k, k) + nav(k, k, 0, (float(k), 0.0, 1.0))
        packets += imu(k, k, 0, [(k * 10, 0, 0)] * 10)
        payloads.append(("ingenuity", envelope("ingenuity", k, packets)))
        payloads.append(("perseverance", envelope("perseverance", k, rover(k, k, (5.0, 5.0, 0.0)))))
    reference = history(payloads, batch=1000)
    for batch in (1, 2, 5):
        assert history(payloads, batch=batch) == reference
