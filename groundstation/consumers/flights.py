"""Flights found in decoded telemetry, and their figures (ICD section 8); no plotting here.

`FlightLog` takes what the replay path (`pipeline.replay_archive`) decodes, batch by
batch, and keeps the ok packets' values as time series; `find_flights` cuts them into
flights and `flight_summary` gives each one's figures with the metrics' rules: lidar
altitude, ground speed |(vel_x, vel_y)|, horizontal path as `gs_flight_distance_meters`,
range to the newest rover position at or before each NAV packet, vibration as the RMS
about the mean per second of IMU sample time (ICD sections 5 and 7). The choices the ICD
leaves open are in docs/report.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from groundstation.core.ccsds import SEQ_COUNT_MODULUS
from groundstation.core.decoder import RESULTS, DecodeResult
from groundstation.core.definitions import PacketDef, VehicleDictionary
from groundstation.core.sequence import SEQ_WINDOW
from groundstation.errors import ConfigError

__all__ = [
    "FLYING_MODES",
    "PLOT_MARGIN_S",
    "Event",
    "Flight",
    "FlightLog",
    "FlightView",
    "Series",
    "find_flights",
    "flight_summary",
    "flight_view",
    "summary_document",
]

# ICD section 8: a takeoff is the HK mode entering SPINUP or FLIGHT; a landing, LANDED.
FLYING_MODES: Final = ("SPINUP", "FLIGHT")
LIFTOFF_MODE: Final = "FLIGHT"
LANDED_MODE: Final = "LANDED"
# Results whose packet time cannot be trusted: a failed CRC may have hit the time, a
# malformed tail has none, a clock error's time is impossible (ICD section 6).
UNTIMED_RESULTS: Final = frozenset({"crc_error", "malformed", "clock_error"})
_UNTIMED_CODES: Final = np.array(
    [code for code, name in enumerate(RESULTS) if name in UNTIMED_RESULTS], dtype=np.uint8
)
# The figure shows this much before the flight's start (spin-up included) and after landing.
PLOT_MARGIN_S: Final = 10.0

# The fields kept per packet name: what the summary and the figure use.
HELICOPTER_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "HELI_HK": (
        "mode",
        "battery_voltage",
        "battery_soc",
        "link_rssi",
        "battery_temp",
        "avionics_temp",
        "rotor_rpm_upper",
        "rotor_rpm_lower",
    ),
    "HELI_NAV": ("pos_x", "pos_y", "pos_z", "vel_x", "vel_y", "lidar_alt"),
    "HELI_IMU": ("ax", "ay", "az"),
    "HELI_EVR": ("severity", "event_id", "message"),
}
ROVER_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "ROVER_NAV": ("pos_x", "pos_y", "pos_z"),
    "HBS_LINK": ("hbs_rssi", "link_quality"),
}


@dataclass(frozen=True, slots=True)
class Series:
    """One packet type's ok packets in packet-time order: times and field values."""

    time: NDArray[np.float64]
    fields: Mapping[str, NDArray[Any]]

    def between(self, start: float, end: float) -> Series:
        """The packets with start <= time <= end."""
        low = int(np.searchsorted(self.time, start, side="left"))
        high = int(np.searchsorted(self.time, end, side="right"))
        keep = slice(low, high)
        return Series(self.time[keep], {k: v[keep] for k, v in self.fields.items()})

    def __len__(self) -> int:
        return int(self.time.shape[0])


def _empty_series(names: Sequence[str]) -> Series:
    return Series(np.empty(0, dtype=np.float64), {n: np.empty(0) for n in names})


@dataclass(frozen=True, slots=True)
class Event:
    """A mark on the figure's time axis: an event report or a mode change."""

    time: float
    kind: str  # "mode" or the event report's severity name
    text: str


@dataclass(frozen=True, slots=True)
class Flight:
    """One flight: from its start (the first entry into SPINUP or FLIGHT after the last
    landing) to its landing (the first LANDED after it); `takeoff_time` is lift-off."""

    number: int  # 1-based, in takeoff order over the whole archive
    start_time: float
    takeoff_time: float
    landing_time: float | None  # None: the archive ends before the landing
    end_time: float  # landing_time, or the newest HK packet of an unfinished flight

    @property
    def spinup_time(self) -> float | None:
        return self.start_time if self.start_time < self.takeoff_time else None


@dataclass
class _Columns:
    """Chunks of one packet type's columns, joined and time-sorted once at the end."""

    names: tuple[str, ...]
    times: list[NDArray[np.float64]] = field(default_factory=list)
    counts: list[NDArray[np.uint16]] = field(default_factory=list)
    values: dict[str, list[NDArray[Any]]] = field(default_factory=dict)

    def series(self) -> tuple[Series, NDArray[np.uint16]]:
        if not self.times:
            return _empty_series(self.names), np.empty(0, dtype=np.uint16)
        time = np.concatenate(self.times)
        order = np.argsort(time, kind="stable")
        fields = {name: np.concatenate(self.values[name])[order] for name in self.names}
        return Series(time[order], fields), np.concatenate(self.counts)[order]


class FlightLog:
    """The values of a helicopter's (and its rover's) ok packets, as decoded batch by batch."""

    def __init__(self, dictionaries: Mapping[str, VehicleDictionary], *, vehicle: str) -> None:
        if vehicle not in dictionaries:
            raise ConfigError(f"no packet dictionary for vehicle {vehicle!r}")
        self.vehicle = vehicle
        helicopter = _by_name(dictionaries[vehicle])
        if "HELI_HK" not in helicopter or "HELI_NAV" not in helicopter:
            raise ConfigError(f"vehicle {vehicle!r} has no HELI_HK and HELI_NAV: it does not fly")
        self.rover = next(
            (
                name
                for name, dictionary in dictionaries.items()
                if name != vehicle and "ROVER_NAV" in _by_name(dictionary)
            ),
            None,
        )
        self._apids: dict[str, dict[int, str]] = {vehicle: {}}
        self._columns: dict[str, _Columns] = {}
        self._wanted(helicopter, vehicle, HELICOPTER_FIELDS)
        if self.rover is not None:
            self._apids[self.rover] = {}
            self._wanted(_by_name(dictionaries[self.rover]), self.rover, ROVER_FIELDS)
        hk = helicopter["HELI_HK"]
        self.mode_names: Mapping[int, str] = hk.field("mode").enum or {}
        self.severity_names: Mapping[int, str] = (
            helicopter["HELI_EVR"].field("severity").enum or {} if "HELI_EVR" in helicopter else {}
        )
        self.imu_offsets: NDArray[np.float64] = np.zeros(1)
        if "HELI_IMU" in helicopter:
            imu = helicopter["HELI_IMU"]
            interval = imu.sample_interval_s or 0.0
            self.imu_offsets = np.arange(imu.samples, dtype=np.float64) * interval
        # Every entry of the helicopter's packets: a time to place it by, and its result.
        self._entry_times: list[NDArray[np.float64]] = []
        self._entry_results: list[NDArray[np.uint8]] = []

    def _wanted(
        self, packets: Mapping[str, PacketDef], vehicle: str, wanted: Mapping[str, tuple[str, ...]]
    ) -> None:
        for name, names in wanted.items():
            if name in packets:
                self._apids[vehicle][packets[name].apid] = name
                self._columns[name] = _Columns(names, values={n: [] for n in names})

    def add(self, vehicle: str, result: DecodeResult) -> None:
        """Take one decoder call's result (a vehicle's envelopes of a batch)."""
        apids = self._apids.get(vehicle)
        if apids is None:
            return
        for apid, name in apids.items():
            packets = result.columns.get(apid)
            if packets is None:
                continue
            columns = self._columns[name]
            columns.times.append(np.array(packets.time, dtype=np.float64))
            columns.counts.append(np.array(packets.seq, dtype=np.uint16))
            for field_name in columns.names:
                columns.values[field_name].append(np.array(packets.fields[field_name]))
        if vehicle == self.vehicle:
            self._entry_times.append(_placing_times(result))
            self._entry_results.append(np.array(result.result, dtype=np.uint8))

    def finish(self) -> Telemetry:
        """The time-sorted series of everything taken so far."""
        series: dict[str, Series] = {}
        counts: dict[str, NDArray[np.uint16]] = {}
        for name, columns in self._columns.items():
            series[name], counts[name] = columns.series()
        for wanted in (HELICOPTER_FIELDS, ROVER_FIELDS):
            for name, names in wanted.items():
                series.setdefault(name, _empty_series(names))
                counts.setdefault(name, np.empty(0, dtype=np.uint16))
        if self._entry_times:
            entry_time = np.concatenate(self._entry_times)
            entry_result = np.concatenate(self._entry_results)
        else:
            entry_time, entry_result = np.empty(0), np.empty(0, dtype=np.uint8)
        return Telemetry(
            vehicle=self.vehicle,
            rover=self.rover,
            series=series,
            counts=counts,
            entry_time=entry_time,
            entry_result=entry_result,
            mode_names=self.mode_names,
            severity_names=self.severity_names,
            imu_offsets=self.imu_offsets,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Telemetry:
    """A whole archive's helicopter and rover series, ready to cut into flights."""

    vehicle: str
    rover: str | None
    series: Mapping[str, Series]
    counts: Mapping[str, NDArray[np.uint16]]
    """Sequence counts of each series' packets, in the same (time) order."""
    entry_time: NDArray[np.float64]
    entry_result: NDArray[np.uint8]
    mode_names: Mapping[int, str]
    severity_names: Mapping[int, str]
    imu_offsets: NDArray[np.float64]


def _by_name(dictionary: VehicleDictionary) -> dict[str, PacketDef]:
    return {packet.name: packet for packet in dictionary.packets.values()}


def _placing_times(result: DecodeResult) -> NDArray[np.float64]:
    """Each entry's packet time, except that one whose time cannot be trusted
    (UNTIMED_RESULTS) takes the time of the nearest trusted packet before it in arrival
    order (after it, for those at the start)."""
    time = np.array(result.time, dtype=np.float64)
    trusted = ~np.isin(result.result, _UNTIMED_CODES) & np.isfinite(time)
    if trusted.all() or not trusted.any():
        return time if trusted.all() else np.full_like(time, np.nan)
    index = np.arange(time.shape[0])
    before = np.maximum.accumulate(np.where(trusted, index, -1))
    after = np.minimum.accumulate(np.where(trusted, index, time.shape[0])[::-1])[::-1]
    source = np.where(before >= 0, before, after)
    placed: NDArray[np.float64] = time[source]
    return placed


def find_flights(telemetry: Telemetry) -> list[Flight]:
    """Every flight in the HK modes, in packet-time order (ICD section 8)."""
    hk = telemetry.series["HELI_HK"]
    if not len(hk):
        return []
    codes = {name: code for code, name in telemetry.mode_names.items()}
    flying = np.isin(hk.fields["mode"], [codes[m] for m in FLYING_MODES if m in codes])
    liftoff = hk.fields["mode"] == codes.get(LIFTOFF_MODE, -1)
    landed = hk.fields["mode"] == codes.get(LANDED_MODE, -1)
    # Unknown before the first packet counts as not flying, as in the metrics.
    flying_before = np.concatenate(([False], flying[:-1]))
    liftoff_before = np.concatenate(([False], liftoff[:-1]))
    starts = np.flatnonzero(flying & ~flying_before)
    liftoffs = np.flatnonzero(liftoff & ~liftoff_before)
    landings = np.flatnonzero(landed)
    flights: list[Flight] = []
    at = 0  # HK index the next flight may start from
    for start in starts.tolist():
        if start < at:
            continue  # a re-entry before the landing belongs to the flight in progress
        next_landing = np.searchsorted(landings, start, side="right")
        landing = int(landings[next_landing]) if next_landing < landings.shape[0] else None
        end = landing if landing is not None else len(hk) - 1
        first_liftoff = np.searchsorted(liftoffs, start, side="left")
        takeoff = start
        if first_liftoff < liftoffs.shape[0] and int(liftoffs[first_liftoff]) <= end:
            takeoff = int(liftoffs[first_liftoff])
        flights.append(
            Flight(
                number=len(flights) + 1,
                start_time=float(hk.time[start]),
                takeoff_time=float(hk.time[takeoff]),
                landing_time=None if landing is None else float(hk.time[landing]),
                end_time=float(hk.time[end]),
            )
        )
        if landing is None:
            break
        at = landing + 1
    return flights


def horizontal_path(x: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    """Metres along consecutive finite positions, as gs_flight_distance_meters sums them."""
    finite = np.isfinite(x) & np.isfinite(y)
    return float(np.hypot(np.diff(x[finite]), np.diff(y[finite])).sum())


def ranges_to_rover(nav: Series, rover: Series) -> NDArray[np.float64]:
    """3-D distance of each NAV packet to the newest rover position at or before it (NaN
    before the first), as ICD section 7 writes gs_range_to_rover_meters."""
    if not len(rover):
        return np.full(len(nav), np.nan)
    newest = np.searchsorted(rover.time, nav.time, side="right") - 1
    known = newest >= 0
    at = np.maximum(newest, 0)
    dx, dy, dz = (
        nav.fields[f"pos_{a}"].astype(np.float64) - rover.fields[f"pos_{a}"][at] for a in "xyz"
    )
    distance: NDArray[np.float64] = np.sqrt(dx * dx + dy * dy + dz * dz)
    return np.where(known, distance, np.nan)


def ground_speed(nav: Series) -> NDArray[np.float64]:
    speed: NDArray[np.float64] = np.hypot(
        nav.fields["vel_x"].astype(np.float64), nav.fields["vel_y"].astype(np.float64)
    )
    return speed


def vibration_rms(imu: Series, offsets: NDArray[np.float64]) -> Series:
    """Per whole second of IMU sample time, the RMS about that second's mean per axis,
    stamped at the end of the second (ICD section 7)."""
    if not len(imu):
        return _empty_series(("x", "y", "z"))
    times = (imu.time[:, np.newaxis] + offsets).ravel()
    second, bucket = np.unique(np.floor(times), return_inverse=True)
    samples = np.bincount(bucket).astype(np.float64)
    rms: dict[str, NDArray[np.float64]] = {}
    for axis, name in zip("xyz", ("ax", "ay", "az"), strict=True):
        values = imu.fields[name].astype(np.float64).reshape(-1)
        mean = np.bincount(bucket, values) / samples
        deviation = values - mean[bucket]
        rms[axis] = np.sqrt(np.bincount(bucket, deviation * deviation) / samples)
    return Series(second + 1.0, rms)


def lost_in(counts: NDArray[np.uint16]) -> int:
    """Counts skipped between consecutive packets in time order (ICD section 6 rule 2; a
    restart, rule 3, loses nothing)."""
    if counts.shape[0] < 2:
        return 0
    values = counts.astype(np.int64)
    ahead = (values[1:] - values[:-1]) % SEQ_COUNT_MODULUS
    restart = (ahead > SEQ_WINDOW) | ((values[1:] == 0) & (ahead > 1)) | (ahead == 0)
    return int(np.where(restart, 0, ahead - 1).sum())


def _value_at(series: Series, name: str, time: float) -> float | None:
    """The field of the first packet at or after `time` (the packet that made the change)."""
    index = int(np.searchsorted(series.time, time, side="left"))
    if index >= len(series):
        return None
    return float(series.fields[name][index])


def _finite_max(values: NDArray[np.float64]) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.shape[0] else None


def flight_summary(telemetry: Telemetry, flight: Flight) -> dict[str, Any]:
    """One flight's entry of summary.json (ICD section 8); times in UTC seconds."""
    nav = telemetry.series["HELI_NAV"].between(flight.takeoff_time, flight.end_time)
    # The path counts from the flight's start, where gs_flight_distance_meters restarts.
    path_nav = telemetry.series["HELI_NAV"].between(flight.start_time, flight.end_time)
    hk = telemetry.series["HELI_HK"]
    rover = telemetry.series["ROVER_NAV"]
    placed = (telemetry.entry_time >= flight.takeoff_time) & (
        telemetry.entry_time <= flight.end_time
    )
    by_result = np.bincount(telemetry.entry_result[placed], minlength=len(RESULTS))
    lost = 0
    for name in HELICOPTER_FIELDS:
        series, counts = telemetry.series[name], telemetry.counts[name]
        low = int(np.searchsorted(series.time, flight.takeoff_time, side="left"))
        high = int(np.searchsorted(series.time, flight.end_time, side="right"))
        lost += lost_in(counts[low:high])
    return {
        "number": flight.number,
        "spinup_time": flight.spinup_time,
        "takeoff_time": flight.takeoff_time,
        "landing_time": flight.landing_time,
        "duration_s": flight.end_time - flight.takeoff_time,
        "max_altitude_m": _finite_max(nav.fields["lidar_alt"].astype(np.float64)),
        "path_m": horizontal_path(
            path_nav.fields["pos_x"].astype(np.float64), path_nav.fields["pos_y"].astype(np.float64)
        ),
        "max_range_to_rover_m": _finite_max(ranges_to_rover(nav, rover)),
        "max_ground_speed_mps": _finite_max(ground_speed(nav)),
        "battery_soc_start": _value_at(hk, "battery_soc", flight.takeoff_time),
        "battery_soc_end": _value_at(hk, "battery_soc", flight.end_time),
        "packets": {name: int(by_result[code]) for code, name in enumerate(RESULTS)},
        "lost": lost,
    }


def summary_document(vehicle: str, flights: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """summary.json: ICD section 8's shape."""
    return {"vehicle": vehicle, "flights": list(flights)}


@dataclass(frozen=True, kw_only=True, slots=True)
class FlightView:
    """What the figure of one flight shows: its series from PLOT_MARGIN_S before its start
    to PLOT_MARGIN_S after its end, and the marks on the time axis."""

    flight: Flight
    summary: Mapping[str, Any]
    hk: Series
    nav: Series
    ground_speed: NDArray[np.float64]
    range_to_rover: NDArray[np.float64]
    track: Series
    """NAV positions from the flight's start to its end: the ground track."""
    farthest: tuple[float, float, float] | None
    """x, y and range of the NAV packet farthest from the rover, in the flight."""
    rover_position: tuple[float, float] | None
    """The newest rover position at the flight's end."""
    link: Series
    vibration: Series
    events: tuple[Event, ...]


def flight_view(telemetry: Telemetry, flight: Flight) -> FlightView:
    """The series of one flight for its figure."""
    start = flight.start_time - PLOT_MARGIN_S
    end = flight.end_time + PLOT_MARGIN_S
    rover = telemetry.series["ROVER_NAV"]
    nav = telemetry.series["HELI_NAV"].between(start, end)
    ranges = ranges_to_rover(nav, rover)
    track = telemetry.series["HELI_NAV"].between(flight.start_time, flight.end_time)
    track_ranges = ranges_to_rover(track, rover)
    farthest = None
    if np.isfinite(track_ranges).any():
        index = int(np.nanargmax(track_ranges))
        farthest = (
            float(track.fields["pos_x"][index]),
            float(track.fields["pos_y"][index]),
            float(track_ranges[index]),
        )
    rover_position = None
    newest = int(np.searchsorted(rover.time, flight.end_time, side="right")) - 1
    if newest >= 0:
        rover_position = (
            float(rover.fields["pos_x"][newest]),
            float(rover.fields["pos_y"][newest]),
        )
    imu = telemetry.series["HELI_IMU"].between(start - 1.0, end)
    return FlightView(
        flight=flight,
        summary=flight_summary(telemetry, flight),
        hk=telemetry.series["HELI_HK"].between(start, end),
        nav=nav,
        ground_speed=ground_speed(nav),
        range_to_rover=ranges,
        track=track,
        farthest=farthest,
        rover_position=rover_position,
        link=telemetry.series["HBS_LINK"].between(start, end),
        vibration=vibration_rms(imu, telemetry.imu_offsets).between(start, end),
        events=_events(telemetry, start, end),
    )


def _events(telemetry: Telemetry, start: float, end: float) -> tuple[Event, ...]:
    """Mode changes and the helicopter's event reports between `start` and `end`."""
    marks: list[Event] = []
    hk = telemetry.series["HELI_HK"]
    modes = hk.fields["mode"]
    changed = np.flatnonzero(np.concatenate(([True], modes[1:] != modes[:-1])))
    for index in changed.tolist():
        time = float(hk.time[index])
        if start <= time <= end:
            code = int(modes[index])
            marks.append(Event(time, "mode", telemetry.mode_names.get(code, str(code))))
    evr = telemetry.series["HELI_EVR"].between(start, end)
    for time, severity, event_id, message in zip(
        evr.time.tolist(),
        evr.fields["severity"].tolist(),
        evr.fields["event_id"].tolist(),
        evr.fields["message"].tolist(),
        strict=True,
    ):
        name = telemetry.severity_names.get(int(severity), str(severity))
        marks.append(Event(float(time), name, f"{event_id}: {message}"))
    marks.sort(key=lambda mark: mark.time)
    return tuple(marks)
