"""A simulated flight's metrics, rendered as Prometheus would scrape them, pass promtool."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

import numpy as np
import pytest
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, generate_latest

from groundstation.consumers.telemetry import Telemetry
from groundstation.core.decoder import PacketDecoder
from groundstation.core.definitions import PacketDef, VehicleDictionary, load_dictionaries
from groundstation.core.encoder import encode_packet, encode_packets
from groundstation.service.metrics import PipelineStatus, TelemetryCollector
from tests.icd_packets import SCLK_EPOCH, hand_pack
from tests.services import find_binary

T0 = 1_700_000_000.0  # packet time of the first second of the pass
FLIGHT_S = 100
LIGHT_TIME_S = 700.0
ROVER_XYZ = (-35.0, 0.0, 0.0)
SECONDS_PER_BATCH = 10
UNKNOWN_APID = 153


def flight_3(t: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
    """ICD section 1's flight 3: climb to 5 m, 50 m downrange and back, land.

    Seconds since start: 0-10 preflight, 10-12 spin-up, 12-17 climb, 17-47 out (smooth,
    under 2 m/s), 47-52 hover, 52-82 back, 82-92 descend, then landed.
    """
    out = np.clip((t - 17) / 30, 0, 1)
    back = np.clip((t - 52) / 30, 0, 1)
    x = 25 * (1 - np.cos(np.pi * out)) - 25 * (1 - np.cos(np.pi * back))
    z = 5 * np.clip((t - 12) / 5, 0, 1) * np.clip((92 - t) / 10, 0, 1)
    return {"pos_x": x, "pos_z": z, "vel_x": np.gradient(x, t), "lidar_alt": z}


def mode_at(t: NDArray[np.float64]) -> NDArray[np.object_]:
    modes = np.select([t < 10, t < 12, t < 92], ["PREFLIGHT", "SPINUP", "FLIGHT"], default="LANDED")
    return modes.astype(object)


def columns(packet: PacketDef, count: int, **given: object) -> dict[str, object]:
    shape = (count, packet.samples) if packet.samples > 1 else (count,)
    values: dict[str, object] = {f.name: np.zeros(shape) for f in packet.numeric_fields}
    values.update(given)
    return values


def stream(packet: PacketDef, times: NDArray[np.float64], **given: object) -> list[bytes]:
    """One APID's packets over the pass, encoded in one call, then split one per packet."""
    data = encode_packets(
        packet,
        seq=np.arange(times.size) % 16384,
        time=T0 + times,
        columns=columns(packet, times.size, **given),
    )
    return [data[i : i + packet.max_length] for i in range(0, len(data), packet.max_length)]


def envelopes_of_pass(
    dictionaries: Mapping[str, VehicleDictionary],
) -> dict[str, list[list[bytes]]]:
    """Per vehicle, per second of the pass, the packets of that second."""
    heli, rover = dictionaries["ingenuity"], dictionaries["perseverance"]
    seconds = np.arange(FLIGHT_S, dtype=np.float64)
    nav_times = np.concatenate([np.arange(0, 12.0), np.arange(12, 92, 1 / 30), np.arange(92, 100)])
    imu_times = np.arange(8, 94, 1 / 50)
    rng = np.random.default_rng(3)
    vibration = 0.02 + 0.6 * ((imu_times > 10) & (imu_times < 92))
    imu_shape = (imu_times.size, 10)
    per_second: dict[str, list[list[bytes]]] = {
        "ingenuity": [[] for _ in range(FLIGHT_S)],
        "perseverance": [[] for _ in range(FLIGHT_S)],
    }

    def add(vehicle: str, times: NDArray[np.float64], packets: list[bytes]) -> None:
        for time, packet in zip(times.tolist(), packets, strict=True):
            per_second[vehicle][int(time)].append(packet)

    hk_times = seconds + 0.5
    add(
        "ingenuity",
        hk_times,
        stream(
            heli.by_name("HELI_HK"),
            hk_times,
            mode=mode_at(hk_times),
            battery_voltage=np.linspace(8.2, 7.6, FLIGHT_S),
            battery_soc=np.linspace(98, 71, FLIGHT_S).round(),
            rotor_rpm_upper=np.where((hk_times > 10) & (hk_times < 92), 2537, 0),
            rotor_rpm_lower=np.where((hk_times > 10) & (hk_times < 92), 2537, 0),
            link_rssi=np.full(FLIGHT_S, -58),
        ),
    )
    add("ingenuity", nav_times, stream(heli.by_name("HELI_NAV"), nav_times, **flight_3(nav_times)))
    add(
        "ingenuity",
        imu_times,
        stream(
            heli.by_name("HELI_IMU"),
            imu_times,
            ax=rng.normal(0, vibration[:, None], imu_shape),
            ay=rng.normal(0, vibration[:, None], imu_shape),
            az=3.711 + rng.normal(0, vibration[:, None], imu_shape),
        ),
    )
    evr = heli.by_name("HELI_EVR")
    for seq, (time, severity, text) in enumerate(
        [(10.2, "INFO", "spin-up"), (12.1, "INFO", "takeoff"), (92.4, "WARNING", "hard landing")]
    ):
        values = {"severity": severity, "event_id": 100 + seq, "message": text}
        per_second["ingenuity"][int(time)].append(
            encode_packet(evr, seq=seq, time=T0 + time, values=values)
        )
    add(
        "perseverance",
        seconds,
        stream(
            rover.by_name("ROVER_NAV"),
            seconds,
            pos_x=np.full(FLIGHT_S, ROVER_XYZ[0]),
            odometry=np.full(FLIGHT_S, 1234.5),
        ),
    )
    add(
        "perseverance",
        seconds,
        stream(
            rover.by_name("HBS_LINK"),
            seconds,
            heli_link_up=np.ones(FLIGHT_S),
            hbs_rssi=np.full(FLIGHT_S, -64),
            link_quality=np.full(FLIGHT_S, 97),
            packets_relayed=np.arange(FLIGHT_S) * 81,
            buffer_used=np.arange(FLIGHT_S) * 1000,
        ),
    )
    # Bad input inside valid envelopes: a CRC failure and an APID outside the dictionary.
    damaged = bytearray(per_second["ingenuity"][50][0])
    damaged[-1] ^= 0xFF
    per_second["ingenuity"][50][0] = bytes(damaged)
    per_second["ingenuity"][60].append(
        hand_pack(UNKNOWN_APID, 0, bytes(4), coarse=int(T0) - SCLK_EPOCH + 60)
    )
    return per_second


@pytest.mark.integration
def test_simulated_flight_metrics_pass_promtool_check() -> None:
    """1. Flight 3 is played back: 100 one-second envelopes per vehicle, decoded ten at a
       time, with one envelope lost, an invalid one per batch, one CRC failure and one
       unknown APID.
    2. After landing the helicopter reboots (HK count back to 0, its clock running on) and
       the relay restarts (envelope seq back to 0, ert running on).
    3. The registry is rendered as a scrape would render it.
    4. `promtool check metrics` finds nothing to complain about, and the figures are those
       of the flight (100 m flown, 85 m from the rover at the far point, landed), with one
       restart of each kind and no duplicates."""
    promtool = find_binary("promtool")
    dictionaries = load_dictionaries()
    telemetry = Telemetry(dictionaries)
    decoders = {vehicle: PacketDecoder(d) for vehicle, d in dictionaries.items()}
    per_second = envelopes_of_pass(dictionaries)
    lost_envelope = 33
    max_range = 0.0
    for first in range(0, FLIGHT_S, SECONDS_PER_BATCH):
        for vehicle, envelopes in per_second.items():
            batch = [
                second
                for second in range(first, first + SECONDS_PER_BATCH)
                if not (vehicle == "ingenuity" and second == lost_envelope)
            ]
            ert = T0 + LIGHT_TIME_S + np.asarray(batch, dtype=np.float64) + 1
            for second, envelope_ert in zip(batch, ert.tolist(), strict=True):
                telemetry.record_envelope(
                    relay="perseverance",
                    vehicle=vehicle,
                    seq=second,
                    ert=envelope_ert,
                    received_at=envelope_ert + 0.5,
                )
            result = decoders[vehicle].decode([b"".join(envelopes[s]) for s in batch], ert=ert)
            telemetry.record_packets(vehicle=vehicle, result=result, ert=ert)
            telemetry.record_decode_seconds(0.004, envelopes=len(batch))
        telemetry.record_invalid(vehicle="unknown")
        snapshot = telemetry.snapshot()
        for family in snapshot.families:
            if family.family.name == "gs_range_to_rover_meters":
                max_range = max([max_range, *(value for _, value in family.samples)])

    reboot_time = T0 + FLIGHT_S + 30
    reboot_ert = reboot_time + LIGHT_TIME_S
    hk = dictionaries["ingenuity"].by_name("HELI_HK")
    after_reboot = encode_packet(
        hk, seq=0, time=reboot_time, values={f.name: 0 for f in hk.fields} | {"mode": "IDLE"}
    )
    telemetry.record_envelope(
        relay="perseverance", vehicle="ingenuity", seq=0, ert=reboot_ert, received_at=reboot_ert
    )
    result = decoders["ingenuity"].decode([after_reboot], ert=np.array([reboot_ert]))
    telemetry.record_packets(vehicle="ingenuity", result=result, ert=np.array([reboot_ert]))

    final = telemetry.snapshot()
    registry = CollectorRegistry()
    status = PipelineStatus(mqtt_connected=True, reconnects_total=1, queue_depth=0)
    registry.register(TelemetryCollector(snapshot=lambda: final, pipeline=lambda: status))
    exposition = generate_latest(registry)

    check = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    assert check.stdout.decode().strip() == ""
    assert check.stderr.decode().strip() == ""

    value = registry.get_sample_value
    heli = {"vehicle": "ingenuity"}
    # The envelope of second 33 was lost, and with it that second's NAV packets.
    nav_lost = sum(len(packet) == 54 for packet in per_second["ingenuity"][lost_envelope])
    assert nav_lost >= 29
    assert value("gs_packets_lost_total", {**heli, "apid": "101"}) == nav_lost
    assert value("gs_envelopes_lost_total", heli) == 1.0
    assert value("gs_envelopes_total", {"vehicle": "unknown", "result": "invalid"}) == 10.0
    assert value("gs_packets_total", {**heli, "apid": "100", "result": "crc_error"}) == 1.0
    unknown = {**heli, "apid": str(UNKNOWN_APID), "result": "unknown_apid"}
    assert value("gs_packets_total", unknown) == 1.0
    assert value("gs_flight_distance_meters", heli) == pytest.approx(100.0, abs=0.5)
    assert max_range == pytest.approx(85.0, abs=1.0)
    assert value("gs_vehicle_mode", {**heli, "mode": "IDLE"}) == 1.0  # after the reboot
    assert value("gs_sequence_restarts_total", {**heli, "apid": "100"}) == 1.0
    assert value("gs_sequence_restarts_total", {**heli, "apid": "101"}) == 0.0
    assert value("gs_envelope_restarts_total", heli) == 1.0
    assert value("gs_envelope_restarts_total", {"vehicle": "perseverance"}) == 0.0
    assert value("gs_packets_total", {**heli, "apid": "100", "result": "duplicate"}) == 0.0
    assert value("gs_packets_total", {**heli, "apid": "100", "result": "clock_error"}) == 0.0
    assert value("gs_events_total", {**heli, "severity": "WARNING"}) == 1.0
    assert value("gs_vibration_rms_mps2", {**heli, "axis": "z"}) == pytest.approx(0.02, abs=0.005)
    latency = value("gs_packet_latency_seconds_sum", heli) or 0.0
    count = value("gs_packet_latency_seconds_count", heli) or 1.0
    assert 700.0 < latency / count < 702.0
