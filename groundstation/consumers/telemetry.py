"""Telemetry state: newest values, counts and derived figures behind the metrics (ICD 5, 6).

The pipeline worker feeds every envelope and decoded batch in; `snapshot()` freezes what
Prometheus exports, once per batch, so a scrape never sees half of a batch applied (STYLE
habit 7). Names and labels of the exported families are ICD section 5's; the choices the
ICD leaves open are in docs/metrics.md and docs/decisions.md ("Telemetry and metrics").
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from groundstation.core.decoder import OK, RESULTS, ApidColumns, DecodeResult
from groundstation.core.definitions import FieldDef, PacketDef, VehicleDictionary
from groundstation.core.envelope import SEQ_MODULUS, UNKNOWN_VEHICLE
from groundstation.core.sequence import SEQ_WINDOW, SequenceResult, SequenceWindow
from groundstation.errors import DefinitionError

__all__ = [
    "DECODE_BUCKETS_S",
    "HEALTH_FAMILIES",
    "LATENCY_BUCKETS_S",
    "MAX_RELAYS_PER_VEHICLE",
    "MAX_UNKNOWN_APID_LABELS",
    "NO_APID_LABEL",
    "OTHER_APID_LABEL",
    "POSITION_FAMILIES",
    "TELEMETRY_FAMILIES",
    "VIBRATION_WINDOW_S",
    "FamilySamples",
    "FamilySpec",
    "HistogramSamples",
    "HistogramSeries",
    "Telemetry",
    "TelemetrySnapshot",
]

MetricKind = Literal["gauge", "counter", "histogram"]
Labels = tuple[str, ...]

# Latency is ert - packet time: one-way light time is 3-22 min (ICD section 1) and stored
# data can wait hours for an orbiter pass, so the buckets resolve 3-22 min finely and
# reach a day.
LATENCY_BUCKETS_S: Final = (
    *(1.0, 10.0, 30.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0, 480.0, 600.0, 720.0),
    *(900.0, 1080.0, 1200.0, 1320.0, 1500.0, 1800.0, 2700.0, 3600.0, 7200.0),
    *(14400.0, 43200.0, 86400.0, math.inf),
)
DECODE_BUCKETS_S: Final = (
    *(1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3),
    *(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, math.inf),
)

# Cardinality bounds (docs/metrics.md): APIDs outside the dictionary get their own `apid`
# label for the first few per vehicle, then share `other`; an entry whose header was too
# short to hold an APID (decoder apid -1) is `none`.
MAX_UNKNOWN_APID_LABELS: Final = 16
OTHER_APID_LABEL: Final = "other"
NO_APID_LABEL: Final = "none"
# Relay names are free text in the envelope: keep sequence windows for this many relays
# per vehicle, forgetting the one heard from least recently.
MAX_RELAYS_PER_VEHICLE: Final = 16
# Vibration is the RMS over the newest second of IMU samples, whatever the batching.
VIBRATION_WINDOW_S: Final = 1.0
MAX_VIBRATION_SAMPLES: Final = 5000
# ICD section 5: a takeoff is the mode entering SPINUP or FLIGHT from a non-flying mode.
FLYING_MODES: Final = ("SPINUP", "FLIGHT")
# ICD section 4: the event reports, counted by severity.
EVENT_PACKETS: Final = frozenset({"HELI_EVR", "ROVER_EVR"})


@dataclass(frozen=True, kw_only=True, slots=True)
class FamilySpec:
    """One exported metric family: name, type and labels as ICD section 5 lists them."""

    name: str
    kind: MetricKind
    labels: Labels
    help: str
    buckets: tuple[float, ...] = ()
    """Histogram bucket upper bounds, +Inf last."""


def _gauge(name: str, *labels: str, help: str) -> FamilySpec:
    return FamilySpec(name=name, kind="gauge", labels=labels, help=help)


def _counter(name: str, *labels: str, help: str) -> FamilySpec:
    return FamilySpec(name=name, kind="counter", labels=labels, help=help)


# ICD section 5, Health.
BATTERY_VOLTAGE: Final = _gauge(
    "gs_battery_voltage_volts", "vehicle", help="Battery voltage (HELI_HK battery_voltage)."
)
BATTERY_CURRENT: Final = _gauge(
    "gs_battery_current_amperes", "vehicle", help="Battery current (HELI_HK battery_current)."
)
BATTERY_CHARGE: Final = _gauge(
    "gs_battery_charge_ratio", "vehicle", help="Battery state of charge, 0-1 (HELI_HK soc/100)."
)
TEMPERATURE: Final = _gauge(
    "gs_temperature_celsius", "vehicle", "sensor", help="Temperature by sensor (HELI_HK)."
)
ROTOR_SPEED: Final = _gauge(
    "gs_rotor_speed_rpm", "vehicle", "rotor", help="Rotor speed, upper and lower (HELI_HK)."
)
VEHICLE_MODE: Final = _gauge(
    "gs_vehicle_mode", "vehicle", "mode", help="1 for the current HELI_HK mode, 0 for the others."
)
FAULT_ACTIVE: Final = _gauge(
    "gs_fault_active", "vehicle", "fault", help="1 while the HELI_HK flag bit is set, else 0."
)
LINK_RSSI: Final = _gauge(
    "gs_link_rssi_dbm",
    "vehicle",
    "end",
    help="HBS link signal strength: end=helicopter (HELI_HK) or rover (HBS_LINK).",
)
LINK_QUALITY: Final = _gauge(
    "gs_link_quality_ratio", "vehicle", help="HBS link quality, 0-1 (HBS_LINK link_quality/100)."
)
LINK_UP: Final = _gauge(
    "gs_link_up", "vehicle", help="1 while the HBS link to the helicopter is up."
)
RELAY_BUFFER: Final = _gauge(
    "gs_relay_buffer_bytes", "vehicle", help="Helicopter data stored on the rover, not relayed yet."
)
VIBRATION_RMS: Final = _gauge(
    "gs_vibration_rms_mps2",
    "vehicle",
    "axis",
    help="RMS acceleration about the mean over the newest 1 s of HELI_IMU samples.",
)
# ICD section 5, Position.
POSITION: Final = _gauge(
    "gs_position_meters", "vehicle", "axis", help="Position in the local frame (x east, y north)."
)
VELOCITY: Final = _gauge(
    "gs_velocity_meters_per_second", "vehicle", "axis", help="Velocity (HELI_NAV)."
)
GROUND_SPEED: Final = _gauge(
    "gs_ground_speed_meters_per_second", "vehicle", help="Horizontal speed, |(vel_x, vel_y)|."
)
ATTITUDE: Final = _gauge(
    "gs_attitude_radians", "vehicle", "axis", help="Roll, pitch and yaw (HELI_NAV)."
)
HEADING: Final = _gauge(
    "gs_heading_radians", "vehicle", help="Rover heading, 0 = north, clockwise (ROVER_NAV)."
)
ALTITUDE: Final = _gauge(
    "gs_altitude_meters", "vehicle", help="Lidar altitude above ground (HELI_NAV lidar_alt)."
)
RANGE_TO_ROVER: Final = _gauge(
    "gs_range_to_rover_meters",
    "vehicle",
    help="3-D distance between the latest helicopter and rover positions.",
)
FLIGHT_DISTANCE: Final = _gauge(
    "gs_flight_distance_meters",
    "vehicle",
    help="Horizontal path length flown since the last takeoff (HELI_HK mode to SPINUP/FLIGHT).",
)
ODOMETRY: Final = _gauge(
    "gs_odometry_meters", "vehicle", help="Distance driven since landing (ROVER_NAV)."
)
# ICD section 5, Link and pipeline.
ENVELOPES: Final = _counter(
    "gs_envelopes_total", "vehicle", "result", help="Envelopes received, by result ok/invalid."
)
ENVELOPES_LOST: Final = _counter(
    "gs_envelopes_lost_total",
    "vehicle",
    help="Envelopes missing by seq accounting per (relay, vehicle); net of late arrivals.",
)
PACKETS: Final = _counter(
    "gs_packets_total", "vehicle", "apid", "result", help="Space packets decoded, by result."
)
PACKETS_LOST: Final = _counter(
    "gs_packets_lost_total",
    "vehicle",
    "apid",
    help="Packets missing by sequence accounting (ICD 6); net of late arrivals.",
)
EVENTS: Final = _counter(
    "gs_events_total", "vehicle", "severity", help="Event reports decoded, by severity."
)
SEQUENCE_RESTARTS: Final = _counter(
    "gs_sequence_restarts_total",
    "vehicle",
    "apid",
    help="Packet counter restarts recognised (a newer packet time, the count not ahead).",
)
ENVELOPE_RESTARTS: Final = _counter(
    "gs_envelope_restarts_total",
    "vehicle",
    help="Envelope seq restarts recognised (a newer ert, seq not ahead), summed over relays.",
)
# Missing across a session takeover (docs/reliability.md, "Session takeover"): received by
# another client with our client id, so not lost by this daemon.
ENVELOPES_TAKEN_OVER: Final = _counter(
    "gs_envelopes_taken_over_total",
    "vehicle",
    help="Envelopes missing by seq across a session takeover (sent to the other client).",
)
PACKETS_TAKEN_OVER: Final = _counter(
    "gs_packets_taken_over_total",
    "vehicle",
    "apid",
    help="Packets missing by sequence across a session takeover (sent to the other client).",
)
LAST_PACKET_TIME: Final = _gauge(
    "gs_last_packet_time_seconds",
    "vehicle",
    "apid",
    help="Packet time (UTC s) of the newest ok packet of the APID.",
)
LAST_RECEIVE_TIME: Final = _gauge(
    "gs_last_receive_time_seconds",
    "vehicle",
    help="Wall clock (UTC s) when the newest valid envelope was received.",
)
PACKET_LATENCY: Final = FamilySpec(
    name="gs_packet_latency_seconds",
    kind="histogram",
    labels=("vehicle",),
    help="Earth-received time minus packet time of ok packets.",
    buckets=LATENCY_BUCKETS_S,
)
DECODE_SECONDS: Final = FamilySpec(
    name="gs_decode_seconds",
    kind="histogram",
    labels=(),
    help="Decode time per envelope (a batch's time spread over its envelopes).",
    buckets=DECODE_BUCKETS_S,
)
# Extras beyond ICD section 5 (docs/metrics.md).
ENVELOPES_DUPLICATE: Final = _counter(
    "gs_envelopes_duplicate_total",
    "vehicle",
    help="Redelivered valid envelopes: (seq, ert) already seen (counted ok as well).",
)
NAV_STATE: Final = _gauge(
    "gs_nav_state", "vehicle", "state", help="1 for the current HELI_NAV nav_state, else 0."
)
NAV_VALID: Final = _gauge(
    "gs_nav_valid", "vehicle", "flag", help="1 while the HELI_NAV nav_flags bit is set, else 0."
)
DRIVE_STATE: Final = _gauge(
    "gs_drive_state", "vehicle", "state", help="1 for the current ROVER_NAV drive_state, else 0."
)
RELAYED_PACKETS: Final = _counter(
    "gs_relay_packets_relayed_total",
    "vehicle",
    help="Packets the HBS says it relayed since its boot (HBS_LINK packets_relayed).",
)

HEALTH_FAMILIES: Final = (
    BATTERY_VOLTAGE,
    BATTERY_CURRENT,
    BATTERY_CHARGE,
    TEMPERATURE,
    ROTOR_SPEED,
    VEHICLE_MODE,
    FAULT_ACTIVE,
    LINK_RSSI,
    LINK_QUALITY,
    LINK_UP,
    RELAY_BUFFER,
    VIBRATION_RMS,
)
"""ICD section 5, Health."""

POSITION_FAMILIES: Final = (
    POSITION,
    VELOCITY,
    GROUND_SPEED,
    ATTITUDE,
    HEADING,
    ALTITUDE,
    RANGE_TO_ROVER,
    FLIGHT_DISTANCE,
    ODOMETRY,
)
"""ICD section 5, Position."""

TELEMETRY_FAMILIES: Final = (
    *HEALTH_FAMILIES,
    *POSITION_FAMILIES,
    ENVELOPES,
    ENVELOPES_LOST,
    PACKETS,
    PACKETS_LOST,
    EVENTS,
    SEQUENCE_RESTARTS,
    ENVELOPE_RESTARTS,
    ENVELOPES_TAKEN_OVER,
    PACKETS_TAKEN_OVER,
    LAST_PACKET_TIME,
    LAST_RECEIVE_TIME,
    PACKET_LATENCY,
    DECODE_SECONDS,
    ENVELOPES_DUPLICATE,
    NAV_STATE,
    NAV_VALID,
    DRIVE_STATE,
    RELAYED_PACKETS,
)
"""Every family the telemetry state exports, in exposition order."""


@dataclass(frozen=True, slots=True)
class FamilySamples:
    """The samples of one gauge or counter family: (label values, value) pairs."""

    family: FamilySpec
    samples: tuple[tuple[Labels, float], ...]


@dataclass(frozen=True, slots=True)
class HistogramSeries:
    """One labelled histogram: cumulative count per bucket of its family, and the sum."""

    labels: Labels
    cumulative_counts: tuple[int, ...]
    sum: float


@dataclass(frozen=True, slots=True)
class HistogramSamples:
    """The series of one histogram family."""

    family: FamilySpec
    series: tuple[HistogramSeries, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class TelemetrySnapshot:
    """Every exported value, frozen after one batch; the collector only formats it."""

    families: tuple[FamilySamples, ...]
    histograms: tuple[HistogramSamples, ...]


Fields = Mapping[str, NDArray[np.generic]]
ValueStore = dict[FamilySpec, dict[Labels, float]]


class _Writer(Protocol):
    """Copies the values of one packet (the only row of `fields`) into gauges."""

    @property
    def inputs(self) -> tuple[str, ...]: ...

    def write(self, values: ValueStore, fields: Fields) -> None: ...


@dataclass(frozen=True, slots=True)
class _Copy:
    """One field, times a scale, into one labelled gauge."""

    family: FamilySpec
    labels: Labels
    field: str
    scale: float = 1.0

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.field,)

    def write(self, values: ValueStore, fields: Fields) -> None:
        values.setdefault(self.family, {})[self.labels] = float(fields[self.field][0]) * self.scale


@dataclass(frozen=True, slots=True)
class _HorizontalNorm:
    """|(x, y)| of two fields: ground speed from the velocity."""

    family: FamilySpec
    x_field: str
    y_field: str

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.x_field, self.y_field)

    def write(self, values: ValueStore, fields: Fields) -> None:
        speed = math.hypot(float(fields[self.x_field][0]), float(fields[self.y_field][0]))
        values.setdefault(self.family, {})[()] = speed


@dataclass(frozen=True, slots=True)
class _NamedCodes:
    """A field whose codes (or bits) the dictionary names, exported as one gauge per name."""

    family: FamilySpec
    field: str
    names: Mapping[int, str]

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.field,)


class _OneHot(_NamedCodes):
    """An enum field as one gauge per name, 1 for the current value (ICD section 5)."""

    __slots__ = ()

    def write(self, values: ValueStore, fields: Fields) -> None:
        current = int(fields[self.field][0])
        series: dict[Labels, float] = {
            (name,): float(code == current) for code, name in self.names.items()
        }
        if current not in self.names:
            # ICD section 4: a value outside the table decodes as its number.
            series[(str(current),)] = 1.0
        values[self.family] = series


class _Flags(_NamedCodes):
    """A flag byte as one 1/0 gauge per named bit (bits without a name are not exported)."""

    __slots__ = ()

    def write(self, values: ValueStore, fields: Fields) -> None:
        flags = int(fields[self.field][0])
        series: dict[Labels, float] = {
            (name,): float(flags >> bit & 1) for bit, name in self.names.items()
        }
        values[self.family] = series


def _enum_names(packet: PacketDef, name: str) -> Mapping[int, str]:
    names = _field(packet, name).enum
    if names is None:
        raise DefinitionError(f"{packet.name}.{name}: telemetry needs an enum table")
    return names


def _bit_names(packet: PacketDef, name: str) -> Mapping[int, str]:
    names = _field(packet, name).bits
    if names is None:
        raise DefinitionError(f"{packet.name}.{name}: telemetry needs a bits table")
    return names


def _field(packet: PacketDef, name: str) -> FieldDef:
    try:
        return packet.field(name)
    except KeyError:
        raise DefinitionError(f"{packet.name}: telemetry needs field {name!r}") from None


def _xyz(family: FamilySpec, prefix: str) -> tuple[_Copy, ...]:
    return tuple(_Copy(family, (axis,), f"{prefix}{axis}") for axis in "xyz")


def _latest_value_writers(packet: PacketDef) -> tuple[_Writer, ...]:
    """What the newest packet of each APID sets (ICD section 5), by ICD packet name."""
    writers: tuple[_Writer, ...]
    match packet.name:
        case "HELI_HK":
            writers = (
                _Copy(BATTERY_VOLTAGE, (), "battery_voltage"),
                _Copy(BATTERY_CURRENT, (), "battery_current"),
                _Copy(BATTERY_CHARGE, (), "battery_soc", 0.01),
                _Copy(TEMPERATURE, ("battery",), "battery_temp"),
                _Copy(TEMPERATURE, ("avionics",), "avionics_temp"),
                _Copy(ROTOR_SPEED, ("upper",), "rotor_rpm_upper"),
                _Copy(ROTOR_SPEED, ("lower",), "rotor_rpm_lower"),
                _Copy(LINK_RSSI, ("helicopter",), "link_rssi"),
                _OneHot(VEHICLE_MODE, "mode", _enum_names(packet, "mode")),
                _Flags(FAULT_ACTIVE, "flags", _bit_names(packet, "flags")),
            )
        case "HELI_NAV":
            writers = (
                *_xyz(POSITION, "pos_"),
                *_xyz(VELOCITY, "vel_"),
                *(_Copy(ATTITUDE, (axis,), axis) for axis in ("roll", "pitch", "yaw")),
                _HorizontalNorm(GROUND_SPEED, "vel_x", "vel_y"),
                _Copy(ALTITUDE, (), "lidar_alt"),
                _OneHot(NAV_STATE, "nav_state", _enum_names(packet, "nav_state")),
                _Flags(NAV_VALID, "nav_flags", _bit_names(packet, "nav_flags")),
            )
        case "ROVER_NAV":
            writers = (
                *_xyz(POSITION, "pos_"),
                _Copy(HEADING, (), "heading"),
                _Copy(ODOMETRY, (), "odometry"),
                _OneHot(DRIVE_STATE, "drive_state", _enum_names(packet, "drive_state")),
            )
        case "HBS_LINK":
            writers = (
                _Copy(LINK_RSSI, ("rover",), "hbs_rssi"),
                _Copy(LINK_QUALITY, (), "link_quality", 0.01),
                _Copy(LINK_UP, (), "heli_link_up"),
                _Copy(RELAY_BUFFER, (), "buffer_used"),
                _Copy(RELAYED_PACKETS, (), "packets_relayed"),
            )
        case _:
            writers = ()
    for writer in writers:
        for name in writer.inputs:
            _field(packet, name)
    return writers


class _Histogram:
    """Bucket counts that take a whole array of observations at once."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = np.asarray(bounds, dtype=np.float64)
        self._counts = np.zeros(len(bounds), dtype=np.int64)
        self._sum = 0.0

    def observe(self, values: NDArray[np.float64], *, times: int = 1) -> None:
        # Bucket i holds values <= bound i (Prometheus `le`); the last bound is +Inf.
        bucket = np.searchsorted(self._bounds, values, side="left")
        self._counts += np.bincount(bucket, minlength=len(self._bounds)) * times
        self._sum += float(values.sum()) * times

    def freeze(self, labels: Labels) -> HistogramSeries:
        return HistogramSeries(labels, tuple(np.cumsum(self._counts).tolist()), self._sum)


class _FlightTrack:
    """Horizontal path length since the last takeoff, from NAV positions in time order.

    Only HK packets newer than the newest HK packet used can signal a takeoff, and only
    NAV packets newer than the newest NAV position used extend the path: a late packet
    cannot be fitted into a path already summed (docs/metrics.md).
    """

    def __init__(self, flying_modes: frozenset[int]) -> None:
        self._flying_modes = flying_modes
        self._mode_flying = False  # the newest HK mode used; unknown counts as not flying
        self._mode_time = -math.inf
        self._takeoff_time: float | None = None
        self._distance = 0.0
        self._last_time = -math.inf
        self._last_xy: tuple[float, float] | None = None

    @property
    def distance(self) -> float | None:
        """Metres since the last takeoff, or None before any takeoff was seen."""
        return None if self._takeoff_time is None else self._distance

    def update(self, hk: ApidColumns | None, nav: ApidColumns | None) -> None:
        if hk is not None:
            self._take_modes(hk)
        if nav is not None:
            self._take_positions(nav)

    def _take_modes(self, hk: ApidColumns) -> None:
        order = np.argsort(hk.time, kind="stable")
        times = hk.time[order]
        newer = times > self._mode_time
        if not newer.any():
            return
        times = times[newer]
        flying = np.isin(hk.fields["mode"][order][newer], list(self._flying_modes))
        flying_before = np.concatenate(([self._mode_flying], flying[:-1]))
        takeoffs = times[flying & ~flying_before]
        if takeoffs.size:
            self._takeoff_time = float(takeoffs[-1])
            self._distance = 0.0
            if self._last_time < self._takeoff_time:
                # The path starts at the first position at or after the takeoff; if NAV
                # ran ahead of HK, the newest position used stays as the start instead.
                self._last_xy = None
        self._mode_flying = bool(flying[-1])
        self._mode_time = float(times[-1])

    def _take_positions(self, nav: ApidColumns) -> None:
        order = np.argsort(nav.time, kind="stable")
        times = nav.time[order]
        x = nav.fields["pos_x"][order].astype(np.float64)
        y = nav.fields["pos_y"][order].astype(np.float64)
        start = -math.inf if self._takeoff_time is None else self._takeoff_time
        # A non-finite position (CRC-valid nonsense) would poison the sum until the next
        # takeoff: such points are skipped.
        use = (times > self._last_time) & (times >= start) & np.isfinite(x) & np.isfinite(y)
        if not use.any():
            return
        x, y = x[use], y[use]
        if self._last_xy is not None:
            x = np.concatenate(([self._last_xy[0]], x))
            y = np.concatenate(([self._last_xy[1]], y))
        self._distance += float(np.hypot(np.diff(x), np.diff(y)).sum())
        self._last_time = float(times[use][-1])
        self._last_xy = (float(x[-1]), float(y[-1]))


class _VibrationWindow:
    """The newest second of IMU accelerations, kept across batches (docs/metrics.md)."""

    def __init__(self, packet: PacketDef) -> None:
        for axis in ("ax", "ay", "az"):
            _field(packet, axis)
        self._offsets = np.arange(packet.samples) * (packet.sample_interval_s or 0.0)
        self._packets_kept = MAX_VIBRATION_SAMPLES // packet.samples + 1
        self._times = np.empty(0, dtype=np.float64)
        self._accel = np.empty((3, 0), dtype=np.float64)  # a row per axis, samples along it

    def update(self, imu: ApidColumns) -> None:
        if not imu.time.size:
            return
        # Only packets that can hold a sample of the newest window matter: pick them by
        # packet time first (O(n)), so a burst of a whole flight expands a second of samples,
        # not all of them.
        horizon = float(imu.time.max()) - VIBRATION_WINDOW_S - float(self._offsets[-1])
        recent = np.flatnonzero(imu.time > horizon)
        if recent.size > self._packets_kept:
            newest = np.argpartition(imu.time[recent], -self._packets_kept)
            recent = recent[newest[-self._packets_kept :]]
        # A lazy decoder's IMU columns then calibrate these packets only.
        packets = imu.rows(recent)
        times = (packets.time[:, np.newaxis] + self._offsets).ravel()
        accel = np.stack([packets.fields[axis].reshape(-1) for axis in ("ax", "ay", "az")])
        times = np.concatenate((self._times, times))
        accel = np.concatenate((self._accel, accel.astype(np.float64, copy=False)), axis=1)
        keep = np.flatnonzero(times > times.max() - VIBRATION_WINDOW_S)
        if keep.size > MAX_VIBRATION_SAMPLES:
            keep = keep[np.argsort(times[keep], kind="stable")[-MAX_VIBRATION_SAMPLES:]]
        self._times, self._accel = times[keep], accel[:, keep]

    def rms(self) -> NDArray[np.float64] | None:
        """Per-axis RMS about the mean (gravity and any bias removed), or None if empty."""
        if not self._times.size:
            return None
        deviation = self._accel - self._accel.mean(axis=1, keepdims=True)
        result: NDArray[np.float64] = np.sqrt(np.mean(deviation * deviation, axis=1))
        return result


class _VehicleState:
    """Counts, newest values and derived figures of one vehicle."""

    def __init__(self, dictionary: VehicleDictionary, values: ValueStore) -> None:
        self.values = values
        self.latency = _Histogram(LATENCY_BUCKETS_S)
        self._relays: OrderedDict[str, SequenceWindow] = OrderedDict()
        self._newest: dict[int, float] = {}
        self._apid_labels: dict[int, str] = {apid: str(apid) for apid in dictionary.packets}
        self._unknown_apid_labels = 0
        self._writers = {
            apid: _latest_value_writers(packet) for apid, packet in dictionary.packets.items()
        }
        self._event_severities: dict[int, Mapping[int, str]] = {
            apid: _enum_names(packet, "severity")
            for apid, packet in dictionary.packets.items()
            if packet.name in EVENT_PACKETS
        }
        by_name = {packet.name: packet for packet in dictionary.packets.values()}
        self._hk_apid = by_name["HELI_HK"].apid if "HELI_HK" in by_name else None
        self._nav_apid = by_name["HELI_NAV"].apid if "HELI_NAV" in by_name else None
        self.flight: _FlightTrack | None = None
        if "HELI_HK" in by_name and "HELI_NAV" in by_name:
            self.flight = _FlightTrack(_flying_codes(by_name["HELI_HK"]))
        self._imu_apid = by_name["HELI_IMU"].apid if "HELI_IMU" in by_name else None
        self.vibration = _VibrationWindow(by_name["HELI_IMU"]) if "HELI_IMU" in by_name else None
        self._start_counters(dictionary)

    def _start_counters(self, dictionary: VehicleDictionary) -> None:
        """Known counter series start at 0, so that rate() sees their first rise."""
        # Counted once per envelope: kept at hand rather than looked up each time.
        self._envelopes = self.values[ENVELOPES] = {("ok",): 0.0, ("invalid",): 0.0}
        self._envelopes_lost = self.values[ENVELOPES_LOST] = {(): 0.0}
        self._envelopes_duplicate = self.values[ENVELOPES_DUPLICATE] = {(): 0.0}
        self._envelope_restarts = self.values[ENVELOPE_RESTARTS] = {(): 0.0}
        self._envelopes_taken_over = self.values[ENVELOPES_TAKEN_OVER] = {(): 0.0}
        self.values[PACKETS] = {}
        for apid in dictionary.packets:
            self._add_apid_row(str(apid))
        self.values[PACKETS_LOST] = {(str(apid),): 0.0 for apid in dictionary.packets}
        self.values[SEQUENCE_RESTARTS] = {(str(apid),): 0.0 for apid in dictionary.packets}
        self.values[PACKETS_TAKEN_OVER] = {(str(apid),): 0.0 for apid in dictionary.packets}
        severities = {
            name: 0.0 for names in self._event_severities.values() for name in names.values()
        }
        if severities:
            self.values[EVENTS] = {(name,): count for name, count in severities.items()}

    def _add_apid_row(self, label: str) -> None:
        packets = self.values[PACKETS]
        for result in RESULTS:
            packets.setdefault((label, result), 0.0)

    def apid_label(self, apid: int) -> str:
        """The `apid` label of an APID, folding the unknown beyond the cap into `other`."""
        label = self._apid_labels.get(apid)
        if label is None:
            if apid < 0:
                label = NO_APID_LABEL
            elif self._unknown_apid_labels < MAX_UNKNOWN_APID_LABELS:
                label = str(apid)
                self._unknown_apid_labels += 1
            else:
                label = OTHER_APID_LABEL
            self._apid_labels[apid] = label  # at most 2049 keys: APIDs are 11 bits, or -1
            self._add_apid_row(label)
        return label

    def add(self, family: FamilySpec, labels: Labels, amount: float) -> None:
        series = self.values[family]
        series[labels] = series.get(labels, 0.0) + amount

    def excuse_gaps(self) -> None:
        for window in self._relays.values():
            window.excuse_next_gap()

    def record_envelope(
        self, *, relay: str, seq: int, ert: float, received_at: float
    ) -> SequenceResult:
        window = self._relays.get(relay)
        if window is None:
            # ICD section 6: envelope seq is accounted like packet counts, modulo 2^32.
            window = SequenceWindow(modulus=SEQ_MODULUS, window=SEQ_WINDOW)
            if len(self._relays) >= MAX_RELAYS_PER_VEHICLE:
                self._relays.popitem(last=False)
            self._relays[relay] = window
        else:
            self._relays.move_to_end(relay)  # most recently heard last
        lost_before, restarts_before = window.lost, window.restarts
        taken_before = window.taken_over
        verdict = window.account(seq, ert)
        if verdict == "duplicate":
            self._envelopes_duplicate[()] += 1.0
        self._envelopes[("ok",)] += 1.0
        if window.lost != lost_before:
            self._envelopes_lost[()] += float(window.lost - lost_before)
        if window.restarts != restarts_before:
            self._envelope_restarts[()] += float(window.restarts - restarts_before)
        if window.taken_over != taken_before:
            self._envelopes_taken_over[()] += float(window.taken_over - taken_before)
        receive = self.values.setdefault(LAST_RECEIVE_TIME, {})
        receive[()] = max(received_at, receive.get((), -math.inf))
        return verdict

    def record_packets(self, result: DecodeResult, ert: NDArray[np.float64]) -> None:
        for (apid, verdict), count in result.counts().items():
            self.add(PACKETS, (self.apid_label(apid), verdict), float(count))
        for apid, lost in result.lost.items():
            self.add(PACKETS_LOST, (self.apid_label(apid),), float(lost))
        for apid, restarts in result.restarts.items():
            if restarts:
                self.add(SEQUENCE_RESTARTS, (self.apid_label(apid),), float(restarts))
        for apid, taken in result.taken_over.items():
            self.add(PACKETS_TAKEN_OVER, (self.apid_label(apid),), float(taken))
        ok = result.result == OK
        if ok.all():  # the usual case: no need to select
            self.latency.observe(ert[result.buffer] - result.time)
        else:
            self.latency.observe(ert[result.buffer[ok]] - result.time[ok])

        columns = result.columns
        if self.flight is not None:
            self.flight.update(_columns(columns, self._hk_apid), _columns(columns, self._nav_apid))
            if self.flight.distance is not None:
                self.values[FLIGHT_DISTANCE] = {(): self.flight.distance}
        imu = _columns(columns, self._imu_apid)
        if self.vibration is not None and imu is not None:
            self.vibration.update(imu)
            rms = self.vibration.rms()
            if rms is not None:
                self.values[VIBRATION_RMS] = {
                    (axis,): float(value) for axis, value in zip("xyz", rms, strict=True)
                }
        for apid, packets in columns.items():
            if apid in self._event_severities:
                self._count_events(packets, self._event_severities[apid])
            self._take_newest(apid, packets)

    def _count_events(self, events: ApidColumns, names: Mapping[int, str]) -> None:
        codes, counts = np.unique(events.fields["severity"], return_counts=True)
        for code, count in zip(codes.tolist(), counts.tolist(), strict=True):
            self.add(EVENTS, (names.get(code, str(code)),), float(count))

    def _take_newest(self, apid: int, packets: ApidColumns) -> None:
        """Values only from a packet newer than any before it (ICD section 6)."""
        if not packets.time.size:
            return
        row = int(np.argmax(packets.time))
        time = float(packets.time[row])
        if time <= self._newest.get(apid, -math.inf):
            return
        self._newest[apid] = time
        self.values.setdefault(LAST_PACKET_TIME, {})[(self.apid_label(apid),)] = time
        # One row: a lazy decoder's columns then calibrate this packet only.
        fields = packets.rows(np.array([row], dtype=np.intp)).fields
        for writer in self._writers[apid]:
            writer.write(self.values, fields)

    def position(self) -> tuple[float, float, float] | None:
        series = self.values.get(POSITION)
        if series is None:
            return None
        return series[("x",)], series[("y",)], series[("z",)]


def _columns(columns: Mapping[int, ApidColumns], apid: int | None) -> ApidColumns | None:
    return None if apid is None else columns.get(apid)


def _flying_codes(hk: PacketDef) -> frozenset[int]:
    names = _enum_names(hk, "mode")
    codes = frozenset(code for code, name in names.items() if name in FLYING_MODES)
    if len(codes) != len(FLYING_MODES):
        raise DefinitionError(f"{hk.name}.mode: telemetry needs the modes {FLYING_MODES}")
    return codes


class Telemetry:
    """Everything the metrics show, updated by one thread at a time (the pipeline worker)."""

    def __init__(self, dictionaries: Mapping[str, VehicleDictionary]) -> None:
        self._values: dict[str, ValueStore] = {}
        self._vehicles: dict[str, _VehicleState] = {}
        for vehicle, dictionary in dictionaries.items():
            self._values[vehicle] = {}
            self._vehicles[vehicle] = _VehicleState(dictionary, self._values[vehicle])
        # ICD section 5: an invalid envelope whose vehicle cannot be told counts as `unknown`.
        self._values.setdefault(UNKNOWN_VEHICLE, {})[ENVELOPES] = {("invalid",): 0.0}
        self._decode = _Histogram(DECODE_BUCKETS_S)
        self._helicopter = _vehicle_with(dictionaries, "HELI_NAV")
        self._rover = _vehicle_with(dictionaries, "ROVER_NAV")

    def _vehicle(self, vehicle: str) -> _VehicleState:
        try:
            return self._vehicles[vehicle]
        except KeyError:
            raise ValueError(f"no packet dictionary for vehicle {vehicle!r}") from None

    def record_invalid(self, *, vehicle: str) -> None:
        """Count an invalid envelope; a vehicle without a dictionary counts as `unknown`."""
        label = vehicle if vehicle in self._vehicles else UNKNOWN_VEHICLE
        series = self._values[label][ENVELOPES]
        series[("invalid",)] += 1.0

    def record_envelope(
        self, *, relay: str, vehicle: str, seq: int, ert: float, received_at: float
    ) -> SequenceResult:
        """Count a valid envelope and account its seq per (relay, vehicle), with `ert` as its
        time (ICD section 6); `duplicate` for a redelivered envelope."""
        return self._vehicle(vehicle).record_envelope(
            relay=relay, seq=seq, ert=ert, received_at=received_at
        )

    def excuse_gaps(self) -> None:
        """A session takeover happened before the next envelope: the seq each relay's next
        envelope skips went to another client with our client id, counted taken over."""
        for state in self._vehicles.values():
            state.excuse_gaps()

    def record_packets(
        self, *, vehicle: str, result: DecodeResult, ert: NDArray[np.float64]
    ) -> None:
        """Take one decoded batch of a vehicle; ert[i] is the ert of input buffer i."""
        self._vehicle(vehicle).record_packets(result, ert)
        self._update_range()

    def record_decode_seconds(self, seconds: float, *, envelopes: int) -> None:
        """Spread one batch's decode time over its envelopes (gs_decode_seconds is per envelope)."""
        if envelopes < 1:
            raise ValueError(f"a decoded batch has at least one envelope, not {envelopes}")
        self._decode.observe(np.array([seconds / envelopes]), times=envelopes)

    def _update_range(self) -> None:
        if self._helicopter is None or self._rover is None:
            return
        helicopter = self._vehicles[self._helicopter].position()
        rover = self._vehicles[self._rover].position()
        if helicopter is not None and rover is not None:
            self._values[self._helicopter][RANGE_TO_ROVER] = {(): math.dist(helicopter, rover)}

    def snapshot(self) -> TelemetrySnapshot:
        """Freeze every exported value; O(series), called once per batch."""
        families: list[FamilySamples] = []
        for family in TELEMETRY_FAMILIES:
            if family.kind == "histogram":
                continue
            samples = tuple(
                ((vehicle, *labels), value)
                for vehicle, store in self._values.items()
                for labels, value in store.get(family, {}).items()
            )
            families.append(FamilySamples(family, samples))
        latency = tuple(
            state.latency.freeze((vehicle,)) for vehicle, state in self._vehicles.items()
        )
        return TelemetrySnapshot(
            families=tuple(families),
            histograms=(
                HistogramSamples(PACKET_LATENCY, latency),
                HistogramSamples(DECODE_SECONDS, (self._decode.freeze(()),)),
            ),
        )


def _vehicle_with(dictionaries: Mapping[str, VehicleDictionary], packet_name: str) -> str | None:
    """The first vehicle whose dictionary has the named packet (ICD: one helicopter, one rover)."""
    for vehicle, dictionary in dictionaries.items():
        if any(packet.name == packet_name for packet in dictionary.packets.values()):
            return vehicle
    return None


# The history writer (groundstation.consumers.history) derives ICD section 7's samples with the same
# definitions, one packet at a time.
FlightTrack = _FlightTrack
flying_codes = _flying_codes
latest_value_writers = _latest_value_writers
