"""The packet simulator: flight physics, geometry as decoded, faults the decoder must count.

Everything here runs without a broker: directory output or the pure delivery generator,
decoded with the real `PacketDecoder`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from groundstation.simulators.cli import main
from groundstation.simulators.delivery import RELAY, topic_for
from groundstation.simulators.faults import FAULT_KINDS, parse_faults
from groundstation.simulators.output import packets_file, read_envelopes
from groundstation.simulators.physics import (
    FLIGHT,
    IDLE,
    LANDED,
    PREFLIGHT,
    ROTOR_RPM,
    SPINUP,
    Flight,
)
from groundstation.simulators.profiles import PROFILES
from groundstation.simulators.run import Simulation, SimulationOptions, simulate
from groundstation.simulators.stress import DEFAULT_MIX, parse_mix

from groundstation.core.decoder import PacketDecoder
from groundstation.core.definitions import load_dictionaries
from groundstation.core.envelope import Envelope, unpack_envelope
from groundstation.errors import ConfigError

DICTIONARIES = load_dictionaries()
ALL_FAULTS = ",".join(f"{kind}=0.04" for kind in FAULT_KINDS)
MAX_PAYLOAD = 1 << 24


@dataclass
class Decoded:
    """A directory output decoded as the daemon would: envelope by envelope."""

    report: dict[str, Any]
    envelopes: list[Envelope] = field(default_factory=list)
    invalid: Counter[str] = field(default_factory=Counter)
    counts: dict[str, dict[tuple[int, str], int]] = field(default_factory=dict)
    lost: dict[str, Mapping[int, int]] = field(default_factory=dict)
    restarts: dict[str, Mapping[int, int]] = field(default_factory=dict)
    columns: dict[str, dict[int, Any]] = field(default_factory=dict)

    def envelopes_lost(self, vehicle: str) -> int:
        """ICD section 6 accounting of envelope seq, net of late envelopes."""
        seqs = [e.seq for e in self.envelopes if e.vehicle == vehicle]
        return max(seqs) - min(seqs) + 1 - len(set(seqs)) if seqs else 0


def run_to(directory: Path, profile: str = "flight3", **options: Any) -> dict[str, Any]:
    """Run the simulator to a directory and return its report."""
    report = asyncio.run(
        simulate(SimulationOptions(profile=profile, output_dir=directory, **options))
    )
    on_disk: dict[str, Any] = json.loads((directory / "report.json").read_text())
    assert on_disk == json.loads(report.to_json())
    return on_disk


def decode_directory(directory: Path) -> Decoded:
    """Unpack every envelope and decode each vehicle's buffers with one PacketDecoder."""
    decoded = Decoded(report=json.loads((directory / "report.json").read_text()))
    buffers: dict[str, list[bytes | memoryview]] = {vehicle: [] for vehicle in DICTIONARIES}
    for record in read_envelopes(directory / "envelopes.msgpack"):
        envelope = unpack_envelope(
            record.payload, max_payload_bytes=MAX_PAYLOAD, vehicles=tuple(DICTIONARIES)
        )
        if isinstance(envelope, Envelope):
            assert record.topic == topic_for(envelope.vehicle)
            decoded.envelopes.append(envelope)
            buffers[envelope.vehicle].append(envelope.packets)
        else:
            decoded.invalid[envelope.vehicle] += 1
    for vehicle, dictionary in DICTIONARIES.items():
        if not buffers[vehicle]:  # a stress mix may leave a vehicle silent
            decoded.counts[vehicle], decoded.lost[vehicle], decoded.columns[vehicle] = {}, {}, {}
            decoded.restarts[vehicle] = {}
            continue
        result = PacketDecoder(dictionary).decode(buffers[vehicle])
        decoded.counts[vehicle] = result.counts()
        decoded.lost[vehicle] = result.lost
        decoded.restarts[vehicle] = result.restarts
        decoded.columns[vehicle] = dict(result.columns)
    return decoded


def expected_counts(report: Mapping[str, Any], vehicle: str) -> dict[tuple[int, str], int]:
    packets = report["vehicles"][vehicle]["expected"]["packets"]
    return {
        (int(apid), result): n
        for apid, results in packets.items()
        for result, n in results.items()
        if n
    }


def sha256_files(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
    }


@pytest.fixture(scope="module")
def flight3(tmp_path_factory: pytest.TempPathFactory) -> Decoded:
    """Flight 3, store-and-forward, no faults, decoded once for the geometry tests."""
    directory = tmp_path_factory.mktemp("flight3")
    run_to(directory, store_and_forward=True, seed=1)
    return decode_directory(directory)


# --- physics -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PROFILES))
def test_positions_are_the_integral_of_velocities(name: str) -> None:
    """Integrating the velocity at 500 Hz from the airfield reproduces every position."""
    flight = Flight(PROFILES[name], np.random.default_rng(0))
    t = np.arange(0.0, flight.duration_s, 0.002)
    kinematics = flight.kinematics(t)
    steps = 0.5 * (kinematics.velocity[1:] + kinematics.velocity[:-1]) * 0.002
    integrated = np.vstack([np.zeros(3), np.cumsum(steps, axis=0)])
    assert np.abs(integrated - kinematics.position).max() < 0.01


def test_attitude_tilts_into_the_acceleration() -> None:
    """Accelerating north with the nose north pitches nose down (positive pitch), and back."""
    flight = Flight(PROFILES["flight3"], np.random.default_rng(0))
    t = np.arange(flight.timeline.takeoff_s, flight.timeline.touchdown_s, 0.01)
    kinematics = flight.kinematics(t)
    north_accel = kinematics.acceleration[:, 1]
    strong = np.abs(north_accel) > 0.3
    assert strong.any()
    assert np.all(np.sign(kinematics.pitch[strong]) == np.sign(north_accel[strong]))


def test_phases_rotors_battery_and_heater_move_as_an_operator_expects() -> None:
    """Modes run IDLE..LANDED; rotors reach 2537 rpm before takeoff and stop after landing;
    the battery drains in flight; the heater is on while the battery is cold."""
    flight = Flight(PROFILES["flight3"], np.random.default_rng(0))
    line = flight.timeline
    t = np.arange(0.0, flight.duration_s, 0.1)
    modes = line.mode(t)
    assert list(dict.fromkeys(modes.tolist())) == [IDLE, PREFLIGHT, SPINUP, FLIGHT, LANDED]
    rpm = flight.rotor_rpm(t)
    assert rpm[t < line.spinup_s].max() == 0.0
    assert rpm[(t >= line.takeoff_s) & (t < line.touchdown_s)].min() == pytest.approx(ROTOR_RPM)
    assert rpm[-1] == 0.0
    slow = flight.slow_at(t)
    in_air = (t >= line.takeoff_s) & (t < line.touchdown_s)
    assert slow.current[in_air].min() > 10 * slow.current[modes == IDLE].max()
    assert slow.soc[-1] < slow.soc[0] - 0.1
    assert np.all(np.diff(slow.soc) <= 0)
    assert slow.voltage[in_air].mean() < slow.voltage[modes == IDLE].mean()
    assert slow.heater_on[0]
    assert not slow.heater_on[slow.battery_temp > 7.5].any()


# --- flight 3 as decoded -------------------------------------------------------------------


def test_flight3_geometry_measured_by_decoding_its_output(flight3: Decoded) -> None:
    """Decode flight 3: 5 m up, ~100 m of path, ~85 m from the rover at most, ~80 s aloft."""
    nav = flight3.columns["ingenuity"][101]
    rover = flight3.columns["perseverance"][200]
    x, y, z = (nav.fields[f"pos_{axis}"] for axis in "xyz")
    lidar = nav.fields["lidar_alt"]
    order = np.argsort(nav.time)
    path = float(np.sum(np.hypot(np.diff(x[order]), np.diff(y[order]))))
    rover_position = np.array([rover.fields[f"pos_{axis}"][0] for axis in "xyz"])
    distance = np.linalg.norm(np.stack([x, y, z], axis=1) - rover_position, axis=1)
    airborne = nav.time[lidar > 0.05]
    duration = float(airborne.max() - airborne.min())
    assert z.max() == pytest.approx(5.0, abs=0.2)
    assert lidar.max() == pytest.approx(5.0, abs=0.2)
    assert path == pytest.approx(100.0, abs=3.0)
    assert distance.max() == pytest.approx(85.0, abs=3.0)
    assert duration == pytest.approx(80.0, abs=10.0)


def test_flight3_rates_modes_and_vibration_as_decoded(flight3: Decoded) -> None:
    """NAV is 30 Hz aloft and 1 Hz on the ground; HK walks the modes; the IMU shakes at the
    rotor frequency only while the rotors turn; events mark the milestones."""
    heli = flight3.columns["ingenuity"]
    hk, nav, imu, evr = heli[100], heli[101], heli[102], heli[103]
    modes = hk.fields["mode"][np.argsort(hk.time)]
    assert list(dict.fromkeys(modes.tolist())) == [IDLE, PREFLIGHT, SPINUP, FLIGHT, LANDED]
    takeoff = hk.time[modes == FLIGHT].min()
    assert hk.fields["rotor_rpm_upper"][hk.time == takeoff - 1] == pytest.approx(ROTOR_RPM, abs=1)
    aloft = nav.time[nav.fields["nav_state"] == 2]
    assert np.median(np.diff(np.sort(aloft))) == pytest.approx(1 / 30, abs=1e-3)
    ground = np.sort(nav.time[nav.fields["nav_state"] == 1])
    assert np.median(np.diff(ground)) == pytest.approx(1.0)
    assert np.median(np.diff(np.sort(imu.time))) == pytest.approx(1 / 50, abs=1e-4)
    spinning = np.isin(np.floor(imu.time), hk.time[hk.fields["rotor_rpm_upper"] > 2500])
    still = np.isin(np.floor(imu.time), hk.time[hk.fields["rotor_rpm_upper"] == 0])
    ax = imu.fields["ax"]
    assert ax[spinning].std() > 10 * ax[still].std()
    # The strongest vibration line in the air is the 1/rev rotor frequency, 2537/60 Hz.
    aloft_imu = np.sort(np.flatnonzero(spinning))[:500]  # 10 s of 500 Hz samples
    samples = ax[aloft_imu].ravel()
    spectrum = np.abs(np.fft.rfft(samples - samples.mean()))
    peak_hz = np.fft.rfftfreq(samples.size, d=1 / 500)[np.argmax(spectrum)]
    assert peak_hz == pytest.approx(ROTOR_RPM / 60, abs=0.5)
    messages = " | ".join(evr.fields["message"].tolist())
    for milestone in ("armed", "spin-up", "takeoff", "touchdown"):
        assert milestone in messages
    assert flight3.report["vehicles"]["perseverance"]["packets_sent"]["201"] > 100


def test_no_faults_decodes_with_zero_errors(flight3: Decoded, tmp_path: Path) -> None:
    """Without faults, every packet and envelope is ok and nothing is lost, live or stored."""
    live = tmp_path / "live"
    run_to(live, seed=5, light_time_s=600.0)
    for decoded in (flight3, decode_directory(live)):
        assert not decoded.invalid
        for vehicle in DICTIONARIES:
            assert {result for _, result in decoded.counts[vehicle]} == {"ok"}
            assert not any(decoded.lost[vehicle].values())
            assert decoded.envelopes_lost(vehicle) == 0
            assert decoded.counts[vehicle] == expected_counts(decoded.report, vehicle)


def test_packet_files_decode_like_the_envelopes(tmp_path: Path) -> None:
    """ingenuity.bin / perseverance.bin hold the same packets the envelopes carried."""
    run_to(tmp_path, profile="flight1", store_and_forward=True)
    decoded = decode_directory(tmp_path)
    for vehicle, dictionary in DICTIONARIES.items():
        data = (tmp_path / packets_file(vehicle)).read_bytes()
        whole = PacketDecoder(dictionary).decode([data])
        assert whole.counts() == decoded.counts[vehicle]
        assert sum(len(e.packets) for e in decoded.envelopes if e.vehicle == vehicle) == len(data)


# --- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "seed", "per_envelope", "store_and_forward"),
    [("flight3", 11, 64, True), ("flight2", 12, 5, False), ("flight5", 13, 1, True)],
)
def test_decoder_counts_equal_the_reports_expected_counts(
    tmp_path: Path, profile: str, seed: int, per_envelope: int, store_and_forward: bool
) -> None:
    """Inject every fault kind at 4 %, decode envelope by envelope: every (APID, result)
    count, every APID's loss and counter restarts (reboots), the invalid envelopes and the
    envelope loss are as reported."""
    report = run_to(
        tmp_path,
        profile=profile,
        seed=seed,
        packets_per_envelope=per_envelope,
        store_and_forward=store_and_forward,
        faults=parse_faults(ALL_FAULTS),
    )
    decoded = decode_directory(tmp_path)
    for vehicle in DICTIONARIES:
        section = report["vehicles"][vehicle]
        assert decoded.counts[vehicle] == expected_counts(report, vehicle)
        lost = {apid: n for apid, n in decoded.lost[vehicle].items() if n}
        assert lost == {int(a): n for a, n in section["expected"]["packets_lost"].items() if n}
        restarts = {apid: n for apid, n in decoded.restarts[vehicle].items() if n}
        expected = section["expected"]["sequence_restarts"]
        assert restarts == {int(a): n for a, n in expected.items() if n}
        assert decoded.invalid[vehicle] == section["expected"]["envelopes"]["invalid"]
        assert decoded.envelopes_lost(vehicle) == section["expected"]["envelopes_lost"]
        ok_envelopes = sum(e.vehicle == vehicle for e in decoded.envelopes)
        assert ok_envelopes == section["expected"]["envelopes"]["ok"]
    assert decoded.invalid["unknown"] == report["expected_invalid_envelopes"]["unknown"]
    heli = report["vehicles"]["ingenuity"]["faults"]
    # A one-packet envelope never loses its only packet (`packets` may not be empty).
    possible = [k for k in FAULT_KINDS if per_envelope > 1 or k != "drop_packet"]
    assert all(heli[kind] > 0 for kind in possible), heli


def test_each_fault_kind_maps_to_its_result_class(tmp_path: Path) -> None:
    """One kind at a time: each shows up in exactly the class the design promises."""
    classes = {
        "flip_bits": ("crc_error", True),
        "duplicate_packet": ("duplicate", False),
        "truncate": ("malformed", True),
        "unknown_apid": ("unknown_apid", False),
        "drop_packet": (None, True),
        "reorder": (None, False),
    }
    for kind, (result, loses) in classes.items():
        directory = tmp_path / kind
        report = run_to(directory, seed=3, faults={kind: 0.05}, store_and_forward=True)
        decoded = decode_directory(directory)
        injected = report["vehicles"]["ingenuity"]["faults"][kind]
        assert injected > 0, kind
        seen = Counter(r for (_, r), n in decoded.counts["ingenuity"].items() for _ in range(n))
        if result is not None:
            assert seen[result] == injected, kind
        assert set(seen) - {"ok"} <= ({result} if result else set()), kind
        assert (sum(decoded.lost["ingenuity"].values()) > 0) == loses, kind


def test_envelope_faults_make_invalid_envelopes(tmp_path: Path) -> None:
    """Garbage is invalid for an unknown vehicle; a wrong version for the vehicle it names."""
    report = run_to(tmp_path, seed=4, faults={"garbage": 0.1, "wrong_version": 0.1})
    decoded = decode_directory(tmp_path)
    garbage = sum(report["vehicles"][v]["faults"]["garbage"] for v in DICTIONARIES)
    assert garbage > 0
    assert decoded.invalid["unknown"] == garbage
    for vehicle in DICTIONARIES:
        assert decoded.invalid[vehicle] == report["vehicles"][vehicle]["faults"]["wrong_version"]


def test_parse_faults_accepts_the_kinds_and_rejects_the_rest() -> None:
    """`KIND=RATE,...` with the documented kinds; typos and bad rates are errors."""
    assert parse_faults("flip_bits=0.01, drop-packet=0.5,") == {
        "flip_bits": 0.01,
        "drop_packet": 0.5,
    }
    for bad in ("flip=0.1", "flip_bits", "flip_bits=x", "flip_bits=1.5", "reorder=0.1,reorder=0.2"):
        with pytest.raises(ConfigError):
            parse_faults(bad)


# --- delivery ------------------------------------------------------------------------------


def deliveries(**options: Any) -> Iterator[tuple[float, str, bytes]]:
    """The pure generator: (send time, topic, payload) without any I/O."""
    simulation = Simulation(SimulationOptions(profile="flight1", **options))
    for delivery in simulation.deliveries():
        assert delivery.payload is not None
        yield delivery.send_at_s, delivery.topic, delivery.payload


def test_live_delivery_is_timely_and_light_time_shifts_ert() -> None:
    """Live: envelopes leave in time order, at least once a second, and arrive one light
    time after their newest packet; seq counts up per vehicle from 0."""
    items = list(deliveries(light_time_s=720.0, packets_per_envelope=500))
    times = [t for t, _, _ in items]
    assert times == sorted(times)
    seqs: dict[str, list[int]] = {}
    for _, topic, payload in items:
        envelope = unpack_envelope(
            payload, max_payload_bytes=MAX_PAYLOAD, vehicles=("ingenuity", "perseverance")
        )
        assert isinstance(envelope, Envelope)
        assert envelope.relay == RELAY
        assert topic == topic_for(envelope.vehicle)
        seqs.setdefault(envelope.vehicle, []).append(envelope.seq)
        decoded = PacketDecoder(DICTIONARIES[envelope.vehicle]).decode([envelope.packets])
        assert envelope.ert - decoded.time.max() == pytest.approx(720.0, abs=1e-3)
        assert decoded.time.max() - decoded.time.min() < 1.0
    for vehicle_seqs in seqs.values():
        assert vehicle_seqs == list(range(len(vehicle_seqs)))


def test_store_and_forward_is_one_burst_after_landing() -> None:
    """Store-and-forward: full envelopes, all received after the flight ended plus light time."""
    simulation = Simulation(
        SimulationOptions(profile="flight1", store_and_forward=True, light_time_s=300.0)
    )
    items = list(simulation.deliveries())
    touchdown = max(f["touchdown_time"] for f in simulation.flights)
    assert min(d.ert for d in items) > touchdown + 300.0
    assert max(d.ert for d in items) - min(d.ert for d in items) < 30.0
    sizes = Counter(
        len(PacketDecoder(DICTIONARIES[d.account.vehicle]).decode([d.packets]).result)
        for d in items
    )
    assert sizes.most_common(1)[0][0] == 64


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    """Two runs with one seed write identical files; another seed changes the noise."""
    faults = parse_faults(ALL_FAULTS)
    for name, seed in (("a", 8), ("b", 8), ("c", 9)):
        run_to(tmp_path / name, profile="flight1", seed=seed, faults=faults)
    assert sha256_files(tmp_path / "a") == sha256_files(tmp_path / "b")
    assert sha256_files(tmp_path / "a") != sha256_files(tmp_path / "c")


def test_repeat_continues_counters_across_flights(tmp_path: Path) -> None:
    """Two flights back to back decode as one stream: nothing lost, nothing duplicated."""
    report = run_to(tmp_path, profile="flight1", repeat=2)
    decoded = decode_directory(tmp_path)
    assert len(report["flights"]) == 2
    for vehicle in DICTIONARIES:
        assert {result for _, result in decoded.counts[vehicle]} == {"ok"}
        assert not any(decoded.lost[vehicle].values())


# --- stress --------------------------------------------------------------------------------


def test_stress_sends_exactly_n_packets_in_the_mix(tmp_path: Path) -> None:
    """Stress: N packets in the chosen mix and envelope size, decodable without errors."""
    report = run_to(
        tmp_path,
        profile="stress",
        stress_packets=100_000,
        packets_per_envelope=1000,
        mix=parse_mix("HELI_NAV=3,HELI_IMU=1"),
    )
    decoded = decode_directory(tmp_path)
    sent = report["vehicles"]["ingenuity"]["packets_sent"]
    assert sent == {"101": 75_000, "102": 25_000}
    assert report["packets"] == 100_000
    assert decoded.counts["ingenuity"] == {(101, "ok"): 75_000, (102, "ok"): 25_000}
    # Envelopes do not span generation chunks of 65,536 packets: one short one per chunk.
    assert 100 <= report["vehicles"]["ingenuity"]["envelopes_published"] <= 102


def test_stress_at_a_rate_for_a_duration_with_faults(tmp_path: Path) -> None:
    """A rate and a duration fix the packet count (packet time), faults still add up."""
    report = run_to(
        tmp_path,
        profile="stress",
        rate_pps=20_000.0,
        stress_duration_s=5.0,
        packets_per_envelope=200,
        faults=parse_faults("flip_bits=0.01,drop_envelope=0.02"),
    )
    decoded = decode_directory(tmp_path)
    assert report["vehicles"]["ingenuity"]["faults"]["flip_bits"] > 0
    total = 0
    for vehicle in DICTIONARIES:
        assert decoded.counts[vehicle] == expected_counts(report, vehicle)
        # Every packet generated either decodes ok or is counted lost (ICD section 6).
        total += sum(n for (_, result), n in decoded.counts[vehicle].items() if result == "ok")
        total += sum(decoded.lost[vehicle].values())
    # Each APID of the default mix runs at 20,000 x weight / 83 packets/s for 5 s.
    assert total == sum(math.ceil(5.0 * 20_000.0 * w / 83.0) for w in DEFAULT_MIX.values())


# --- options and CLI -----------------------------------------------------------------------


def test_options_reject_nonsense() -> None:
    """Bad options are ConfigErrors naming the problem, not crashes later on."""
    for bad in (
        {"profile": "flight9"},
        {"profile": "flight3", "speed": -1.0},
        {"profile": "flight3", "packets_per_envelope": 0},
        {"profile": "stress"},
        {"profile": "stress", "stress_packets": 10, "store_and_forward": True},
    ):
        with pytest.raises(ConfigError):
            SimulationOptions(**bad)


def test_cli_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    """--help lists every option with its explanation, the profiles and the fault kinds."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--broker",
        "--output",
        "--speed",
        "--light-time",
        "--store-and-forward",
        "--faults",
        "--seed",
        "--report",
        "--rate",
        "--packets",
        "--duration",
        "--mix",
        "--packets-per-envelope",
        "--username",
        "--password",
        "--ca-file",
        "--cert-file",
        "--key-file",
        "--repeat",
        "--start-time",
    ):
        assert option in text
    for name in (*PROFILES, *FAULT_KINDS):
        assert name in text


def test_cli_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad fault spec or a stress option on a flight: one stderr line, exit status 2."""
    assert main(["flight3", "--faults", "nonsense=1", "--output", "x"]) == 2
    assert main(["flight3", "--rate", "5", "--output", "x"]) == 2
    assert main(["flight3", "--ca-file", "ca.pem", "--broker", "mqtt://127.0.0.1:1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    assert all(line.startswith("groundstation-sim: ") for line in lines)


def test_cli_writes_a_directory_and_its_report(tmp_path: Path) -> None:
    """The CLI with --output writes the packet files, envelopes and report.json."""
    report = tmp_path / "custom.json"
    code = main(
        [
            "flight1",
            "--output",
            str(tmp_path / "out"),
            "--seed",
            "2",
            "--report",
            str(report),
            "--store-and-forward",
            "--quiet",
        ]
    )
    assert code == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "ingenuity.bin",
        "perseverance.bin",
        "envelopes.msgpack",
    }
    document = json.loads(report.read_text())
    assert document["profile"] == "flight1"
    assert document["mode"] == "store-and-forward"
