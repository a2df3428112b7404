"""The simulator's library entry points: options, the pure delivery generator, `simulate`.

`Simulation(options).batches()` yields what the relay delivers, batch by batch, without any
I/O or clock: tests feed its payloads straight to the ground station. `simulate(options)`
sends the same deliveries to a broker or a directory, paced in live mode, and returns the
report. The byte stream is a pure function of the options (seed and start time included).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol

import numpy as np
from groundstation.simulators.delivery import Delivery, EnvelopeBuilder, schedule
from groundstation.simulators.faults import FAULT_KINDS, FaultKind
from groundstation.simulators.output import REPORT_FILE, DirectorySink
from groundstation.simulators.physics import Flight, ground_height_m
from groundstation.simulators.profiles import PROFILES
from groundstation.simulators.publish import MqttSink
from groundstation.simulators.report import ReportBuilder, SimulationReport
from groundstation.simulators.stress import DEFAULT_MIX, StressGenerator
from groundstation.simulators.telemetry import INGENUITY, PERSEVERANCE, FlightTelemetry, fly

from groundstation.config import BrokerConfig, parse_broker_url
from groundstation.core.definitions import VehicleDictionary, load_dictionaries
from groundstation.errors import ConfigError

STRESS: Final = "stress"
VEHICLES: Final = (INGENUITY, PERSEVERANCE)
# Flight 3's date (25 April 2021, 11:31 UTC): the default start of directory output, so
# that files are reproducible byte for byte.
DEFAULT_EPOCH: Final = 1619350260.0
DEFAULT_BROKER_URL: Final = "mqtt://127.0.0.1:1883"
GAP_BETWEEN_FLIGHTS_S: Final = 10.0
# Packet times of a flat-out stress run. At 50,000 packets/s even a one-APID mix keeps its
# packets more than one SCLK tick (1/65536 s) apart, so each APID's packet times increase:
# packet time says what is newer (ICD section 6), and packets sharing one time are late.
STRESS_NOMINAL_RATE_PPS: Final = 50_000.0
# Publishing faster than real time (--speed above 1, or unpaced) with the default start
# time: the run starts this long in the past, so that it can play ahead of the wall clock
# until it catches up with it (no envelope is ever received before its ert).
HEAD_START_S: Final = 3600.0
MAX_FLIGHTS_REPORTED: Final = 100


@dataclass(frozen=True, kw_only=True)
class SimulationOptions:
    """Everything a run needs; mirrors the CLI (docs/simulator.md)."""

    profile: str  # flight1 .. flight5, or `stress`
    broker: BrokerConfig | None = None  # None with output_dir None: DEFAULT_BROKER_URL
    output_dir: Path | None = None
    report_path: Path | None = None  # None: <output_dir>/report.json, or no file
    speed: float = 1.0  # live mode: simulated seconds per wall second; 0 = no pacing
    light_time_s: float = 0.0
    store_and_forward: bool = False
    faults: Mapping[FaultKind, float] = field(default_factory=lambda: MappingProxyType({}))
    seed: int = 0
    start_time: float | None = None  # None: DEFAULT_EPOCH to a directory, wall clock to MQTT
    repeat: int = 1  # flights flown back to back; 0 = until cancelled
    packets_per_envelope: int = 64
    live_max_age_s: float = 1.0  # live relay: an envelope leaves at least this often
    # Stress mode.
    rate_pps: float | None = None  # None: as fast as possible
    stress_packets: int | None = None
    stress_duration_s: float | None = None
    mix: Mapping[str, float] = field(default_factory=lambda: DEFAULT_MIX)
    # MQTT.
    publish_window: int = 16
    publish_timeout_s: float = 5.0
    reconnect_timeout_s: float | None = 60.0

    def __post_init__(self) -> None:
        if self.profile != STRESS and self.profile not in PROFILES:
            known = ", ".join([*PROFILES, STRESS])
            raise ConfigError(f"unknown profile {self.profile!r} (known: {known})")
        if self.broker is not None and self.output_dir is not None:
            raise ConfigError("choose a broker or an output directory, not both")
        _require(self.speed >= 0 and math.isfinite(self.speed), "speed must be >= 0")
        _require(
            self.light_time_s >= 0 and math.isfinite(self.light_time_s),
            "light time must be >= 0 seconds",
        )
        _require(self.repeat >= 0, "repeat must be >= 0")
        _require(
            1 <= self.packets_per_envelope <= 100_000, "packets per envelope must be 1..100000"
        )
        _require(self.live_max_age_s > 0, "live envelope age must be > 0 s")
        _require(self.publish_window >= 1, "publish window must be >= 1")
        unknown = set(self.faults) - set(FAULT_KINDS)
        _require(not unknown, f"unknown fault kinds {sorted(unknown)}")
        _require(all(0.0 <= r <= 1.0 for r in self.faults.values()), "fault rates are 0..1")
        if self.profile == STRESS:
            _require(self.rate_pps is None or self.rate_pps > 0, "rate must be > 0 packets/s")
            _require(
                self.stress_packets is not None or self.stress_duration_s is not None,
                "stress needs --packets N or --duration SECONDS",
            )
            _require(self.stress_packets is None or self.stress_packets > 0, "packets must be > 0")
            _require(
                self.stress_duration_s is None or self.stress_duration_s > 0,
                "duration must be > 0 s",
            )
            _require(not self.store_and_forward, "stress mode is live; drop --store-and-forward")

    @property
    def mode(self) -> Literal["live", "store-and-forward", "stress"]:
        if self.profile == STRESS:
            return "stress"
        return "store-and-forward" if self.store_and_forward else "live"

    @property
    def paced(self) -> bool:
        """Whether sends wait for their time (live flights, or stress at a chosen rate)."""
        if self.profile == STRESS:
            return self.rate_pps is not None
        return not self.store_and_forward and self.speed > 0

    def broker_config(self) -> BrokerConfig:
        return self.broker if self.broker is not None else parse_broker_url(DEFAULT_BROKER_URL)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


class Simulation:
    """A run's deliveries as a pure generator, plus the report of what was recorded."""

    def __init__(
        self,
        options: SimulationOptions,
        *,
        start_time: float | None = None,
        dictionaries: Mapping[str, VehicleDictionary] | None = None,
    ) -> None:
        self.options = options
        self.dictionaries = load_dictionaries() if dictionaries is None else dictionaries
        if start_time is None:
            start_time = options.start_time if options.start_time is not None else DEFAULT_EPOCH
        # Packet times are one light time before their Earth-received time.
        self.start_time = start_time
        seeds = np.random.SeedSequence(options.seed).spawn(2 + len(VEHICLES))
        self._physics_rng = np.random.default_rng(seeds[0])
        self._sensor_rng = np.random.default_rng(seeds[1])
        max_age = (
            options.live_max_age_s if options.mode == "live" else None
        )  # stress and store-and-forward fill envelopes by count only
        self.builders = {
            vehicle: EnvelopeBuilder(
                vehicle=vehicle,
                known_apids=tuple(self.dictionaries[vehicle].packets),
                packets_per_envelope=options.packets_per_envelope,
                max_age_s=max_age,
                rates=options.faults,
                rng=np.random.default_rng(seed),
            )
            for vehicle, seed in zip(VEHICLES, seeds[2:], strict=True)
        }
        self.counts: dict[int, int] = {}
        # Bounded: a `repeat=0` run (the demo) flies for ever.
        self.flights: deque[dict[str, float]] = deque(maxlen=MAX_FLIGHTS_REPORTED)
        self.flights_flown = 0
        header: dict[str, Any] = {
            "profile": options.profile,
            "mode": options.mode,
            "seed": options.seed,
            "start_time": start_time,
            "light_time_s": options.light_time_s,
            "packets_per_envelope": options.packets_per_envelope,
            "faults_requested": dict(options.faults),
        }
        self.report_builder = ReportBuilder(vehicles=VEHICLES, header=header)

    def record(self, delivery: Delivery) -> None:
        """Count a delivery that was sent (call once per delivery, after sending it)."""
        self.report_builder.record(delivery)

    def report(self, **extra: Any) -> SimulationReport:
        return self.report_builder.build(
            flights_flown=self.flights_flown, flights=list(self.flights), **extra
        )

    def deliveries(self) -> Iterator[Delivery]:
        """Every delivery in send order (flattened `batches`)."""
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[Delivery]]:
        """Deliveries in send order, one batch per flight or stress chunk."""
        if self.options.profile == STRESS:
            yield from self._stress_batches()
        else:
            yield from self._flight_batches()

    def _flight_batches(self) -> Iterator[list[Delivery]]:
        options = self.options
        profile = PROFILES[options.profile]
        start = self.start_time
        number = 0
        while options.repeat == 0 or number < options.repeat:
            number += 1
            final = number == options.repeat
            flight = Flight(profile, self._physics_rng)
            telemetry = fly(
                flight,
                dictionaries=self.dictionaries,
                rng=self._sensor_rng,
                start_time=start,
                counts=self.counts,
                store_and_forward=options.store_and_forward,
            )
            self.flights.append(_flight_summary(telemetry))
            self.flights_flown += 1
            plans = [self.builders[v].build(telemetry.streams[v], final=final) for v in VEHICLES]
            yield schedule(
                plans,
                run_start=self.start_time,
                light_time_s=options.light_time_s,
                pass_start=telemetry.end_time if options.store_and_forward else None,
            )
            start = telemetry.end_time + GAP_BETWEEN_FLIGHTS_S

    def _stress_batches(self) -> Iterator[list[Delivery]]:
        options = self.options
        generator = StressGenerator(
            dictionaries=self.dictionaries,
            mix=options.mix,
            rate_pps=options.rate_pps or STRESS_NOMINAL_RATE_PPS,
            start_time=self.start_time,
            counts=self.counts,
            max_packets=options.stress_packets,
            # Flat out, --duration is wall-clock time, enforced by the caller.
            duration_s=options.stress_duration_s if options.rate_pps is not None else None,
        )
        for streams, final in generator.chunks():
            plans = [
                self.builders[v].build(streams[v], final=final) for v in VEHICLES if v in streams
            ]
            yield schedule(
                plans,
                run_start=self.start_time,
                light_time_s=options.light_time_s,
                pass_start=None,
            )


def _flight_summary(telemetry: FlightTelemetry) -> dict[str, float]:
    """The flight's true geometry (from the physics, at 100 Hz), for comparison."""
    flight = telemetry.flight
    line = flight.timeline
    t = np.arange(line.takeoff_s, line.touchdown_s, 0.01)
    position = flight.kinematics(t).position
    path = float(np.sum(np.hypot(*np.diff(position[:, :2], axis=0).T)))
    rover = np.array(flight.rover_position)
    lidar = position[:, 2] - ground_height_m(position[:, 0], position[:, 1])
    return {
        "takeoff_time": telemetry.takeoff_time,
        "touchdown_time": telemetry.touchdown_time,
        "duration_s": line.touchdown_s - line.takeoff_s,
        "max_altitude_m": float(lidar.max()),
        "horizontal_path_m": path,
        "max_range_to_rover_m": float(np.linalg.norm(position - rover, axis=1).max()),
        "rover_x_m": float(rover[0]),
        "rover_y_m": float(rover[1]),
    }


class Sink(Protocol):
    """Where deliveries go: a broker or a directory."""

    async def send(self, delivery: Delivery) -> None: ...

    async def drain(self) -> None: ...


ProgressCallback = Callable[[Simulation, Delivery], None]


async def simulate(
    options: SimulationOptions, *, on_sent: ProgressCallback | None = None
) -> SimulationReport:
    """Run the simulation to its sink; returns (and writes, if asked) the report.

    With MQTT output and no start time, packets are timed from the wall clock so that a
    live ground station sees current data; directory output defaults to DEFAULT_EPOCH.
    """
    loop = asyncio.get_running_loop()
    start_time = options.start_time
    if start_time is None and options.output_dir is None:
        faster = not options.paced or (options.profile != STRESS and options.speed > 1)
        head_start = HEAD_START_S if faster else 0.0
        start_time = round(time.time() - options.light_time_s - head_start, 3)
    # ICD section 6: nothing is received before it was sent. A broker's subscriber receives
    # an envelope when it is published, so none is published before the wall clock reaches
    # its ert, whatever the speed (directory output has no receive time).
    epoch_minus_loop = time.time() - loop.time()
    simulation = Simulation(options, start_time=start_time)
    report_path = options.report_path
    if report_path is None and options.output_dir is not None:
        report_path = options.output_dir / REPORT_FILE
    wall_start = loop.time()
    wall_limit = (
        wall_start + options.stress_duration_s
        if options.profile == STRESS
        and options.rate_pps is None
        and options.stress_duration_s is not None
        else None
    )
    scale = options.speed if options.profile != STRESS else 1.0
    paced = options.paced and options.output_dir is None  # files are written at once
    extra: dict[str, Any] = {}
    if options.output_dir is not None:
        sink: DirectorySink | MqttSink = DirectorySink(options.output_dir, vehicles=VEHICLES)
    else:
        sink = MqttSink(
            options.broker_config(),
            window=options.publish_window,
            publish_timeout_s=options.publish_timeout_s,
            reconnect_timeout_s=options.reconnect_timeout_s,
        )
    async with sink:
        batches = simulation.batches()
        while (batch := await asyncio.to_thread(next, batches, None)) is not None:
            if wall_limit is not None and loop.time() >= wall_limit:
                break
            for delivery in batch:
                due = wall_start + delivery.send_at_s / scale if paced else -math.inf
                if options.output_dir is None:
                    due = max(due, delivery.ert - epoch_minus_loop)
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                await sink.send(delivery)
                simulation.record(delivery)
                if on_sent is not None:
                    on_sent(simulation, delivery)
        await sink.drain()
        if isinstance(sink, MqttSink):
            extra["publish"] = {
                "broker": sink.config.url,
                "reconnects": sink.reconnects,
                "resent": sink.resent,
            }
    report = simulation.report(**extra)
    if report_path is not None:
        report.write(report_path)
    return report
