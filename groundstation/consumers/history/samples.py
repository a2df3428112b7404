"""ICD section 7's samples from decoded batches: every value at its packet's time.

Pure and deterministic: `HistorySamples.take` is fed the `Decoded` results of the same
`Pipeline` that live ingest and replay use (so duplicates, CRC and clock errors are
already out: only `ok` packets reach `DecodeResult.columns`), in arrival order, and
returns the samples they give. The values come from the same writers as the live gauges
(`groundstation.consumers.telemetry`), one packet at a time instead of the newest only; the derived
values follow ICD section 7 (docs/history.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import NDArray

from groundstation.consumers.pipeline import Decoded
from groundstation.consumers.telemetry import (
    FLIGHT_DISTANCE,
    HEALTH_FAMILIES,
    POSITION_FAMILIES,
    RANGE_TO_ROVER,
    VIBRATION_RMS,
    FamilySpec,
    FlightTrack,
    ValueStore,
    flying_codes,
    latest_value_writers,
)
from groundstation.core.decoder import ApidColumns
from groundstation.core.definitions import PacketDef, VehicleDictionary

__all__ = [
    "HISTORY_FAMILIES",
    "TIMELINE_LABEL",
    "HistorySamples",
    "SampleBatch",
    "SeriesKey",
]

TIMELINE_LABEL: Final = ("timeline", "spacecraft")
HISTORY_FAMILIES: Final = frozenset((*HEALTH_FAMILIES, *POSITION_FAMILIES))
"""What ICD section 7 writes; nothing of Link and pipeline, none of the extra gauges."""
# Rover positions kept to find the newest at or before each helicopter position: 1 Hz,
# so about 12 days.
MAX_ROVER_POSITIONS: Final = 1 << 20
# Helicopter positions waiting for the rover's to reach their time: an hour at 30 Hz.
MAX_HELD_POSITIONS: Final = 108_000

SeriesKey = tuple[tuple[str, str], ...]
"""A series' labels, sorted by name, `__name__` included."""


@dataclass
class SampleBatch:
    """Samples by series: (ms timestamp, value) in the order they were derived."""

    series: dict[SeriesKey, list[tuple[int, float]]] = field(default_factory=dict)

    def add(
        self, family: FamilySpec, labels: Mapping[str, str], time_s: float, value: float
    ) -> None:
        self.series.setdefault(series_key(family, labels), []).append((milliseconds(time_s), value))

    def merge(self, other: SampleBatch) -> None:
        for key, samples in other.series.items():
            self.series.setdefault(key, []).extend(samples)

    def __len__(self) -> int:
        return sum(len(samples) for samples in self.series.values())


def series_key(family: FamilySpec, labels: Mapping[str, str]) -> SeriesKey:
    """A series' labels as `SampleBatch` keys them: sorted, `__name__` and timeline included."""
    return tuple(
        sorted({**labels, "__name__": family.name, TIMELINE_LABEL[0]: TIMELINE_LABEL[1]}.items())
    )


def milliseconds(time_s: float) -> int:
    """Packet time in whole milliseconds, rounded half up (remote write's timestamp unit)."""
    return math.floor(time_s * 1000.0 + 0.5)


class _Vibration:
    """RMS about the mean per whole second of IMU sample time, written once the second is over."""

    def __init__(self, packet: PacketDef) -> None:
        self._offsets = np.arange(packet.samples) * (packet.sample_interval_s or 0.0)
        self._second: int | None = None  # the open second, not written yet
        self._chunks: list[NDArray[np.float64]] = []  # rows: time, ax, ay, az

    def take(self, imu: ApidColumns, vehicle: str, out: SampleBatch) -> None:
        if not imu.time.size:
            return
        times = (imu.time[:, np.newaxis] + self._offsets).ravel()
        accel = [imu.fields[axis].reshape(-1).astype(np.float64) for axis in ("ax", "ay", "az")]
        samples = np.stack([times, *accel])
        samples = samples[:, np.argsort(times, kind="stable")]
        seconds = np.floor(samples[0]).astype(np.int64)
        if self._second is not None:
            # A second already written does not take late samples.
            keep = seconds >= self._second
            samples, seconds = samples[:, keep], seconds[keep]
        for second in np.unique(seconds).tolist():
            if self._second is not None and second != self._second:
                self._write(vehicle, out)
            self._second = second
            self._chunks.append(samples[:, seconds == second])

    def _write(self, vehicle: str, out: SampleBatch) -> None:
        assert self._second is not None
        accel = np.concatenate(self._chunks, axis=1)[1:]
        deviation = accel - accel.mean(axis=1, keepdims=True)
        rms = np.sqrt(np.mean(deviation * deviation, axis=1))
        for axis, value in zip("xyz", rms.tolist(), strict=True):
            out.add(VIBRATION_RMS, {"vehicle": vehicle, "axis": axis}, self._second + 1.0, value)
        self._chunks = []


class _VehicleHistory:
    def __init__(self, vehicle: str, dictionary: VehicleDictionary) -> None:
        self.vehicle = vehicle
        self._writers = {
            apid: latest_value_writers(packet) for apid, packet in dictionary.packets.items()
        }
        self._inputs = {
            apid: tuple(sorted({name for writer in writers for name in writer.inputs}))
            for apid, writers in self._writers.items()
        }
        by_name = {packet.name: packet for packet in dictionary.packets.values()}
        self.hk_apid = by_name["HELI_HK"].apid if "HELI_HK" in by_name else None
        self.nav_apid = by_name["HELI_NAV"].apid if "HELI_NAV" in by_name else None
        self.rover_apid = by_name["ROVER_NAV"].apid if "ROVER_NAV" in by_name else None
        self.imu_apid = by_name["HELI_IMU"].apid if "HELI_IMU" in by_name else None
        self._flight: FlightTrack | None = None
        if self.hk_apid is not None and self.nav_apid is not None:
            self._flight = FlightTrack(flying_codes(by_name["HELI_HK"]))
        self._newest_nav = -math.inf
        self._vibration = _Vibration(by_name["HELI_IMU"]) if "HELI_IMU" in by_name else None

    def take_values(self, columns: Mapping[int, ApidColumns], out: SampleBatch) -> None:
        """Every writer's value at every ok packet."""
        for apid, packets in columns.items():
            writers = self._writers.get(apid, ())
            if not writers or not packets.time.size:
                continue
            # Each input column fetched once (the decoder's columns are lazy), each series'
            # key built once per call: per packet only the writers run.
            columns_ = {name: packets.fields[name] for name in self._inputs[apid]}
            keys: dict[tuple[FamilySpec, tuple[str, ...]], list[tuple[int, float]]] = {}
            for row, time_s in enumerate(packets.time.tolist()):
                values: ValueStore = {}
                row_fields = {name: column[row : row + 1] for name, column in columns_.items()}
                for writer in writers:
                    writer.write(values, row_fields)
                time_ms = milliseconds(time_s)
                for family, series in values.items():
                    if family not in HISTORY_FAMILIES:
                        continue
                    for labels, value in series.items():
                        points = keys.get((family, labels))
                        if points is None:
                            key = series_key(family, _labels(self.vehicle, family, labels))
                            points = keys[family, labels] = out.series.setdefault(key, [])
                        points.append((time_ms, value))

    def take_flight(self, columns: Mapping[int, ApidColumns], out: SampleBatch) -> None:
        """Flight distance at each HELI_NAV packet newer than any before (HK, NAV by time)."""
        if self._flight is None:
            return
        hk = columns.get(self.hk_apid) if self.hk_apid is not None else None
        nav = columns.get(self.nav_apid) if self.nav_apid is not None else None
        if nav is None:
            if hk is not None:
                self._flight.update(hk, None)
            return
        events: list[tuple[float, int, int]] = []  # time, 0 HK before 1 NAV at a tie, row
        if hk is not None:
            events.extend((t, 0, row) for row, t in enumerate(hk.time.tolist()))
        events.extend((t, 1, row) for row, t in enumerate(nav.time.tolist()))
        events.sort()
        for time_s, kind, row in events:
            index = np.array([row], dtype=np.intp)
            if kind == 0:
                assert hk is not None
                self._flight.update(hk.rows(index), None)
                continue
            self._flight.update(None, nav.rows(index))
            if time_s <= self._newest_nav:
                continue  # a late position is not fitted into a path already summed
            self._newest_nav = time_s
            distance = self._flight.distance
            if distance is not None:
                out.add(FLIGHT_DISTANCE, {"vehicle": self.vehicle}, time_s, distance)

    def take_vibration(self, columns: Mapping[int, ApidColumns], out: SampleBatch) -> None:
        if self._vibration is not None and self.imu_apid is not None and self.imu_apid in columns:
            self._vibration.take(columns[self.imu_apid], self.vehicle, out)


def _labels(vehicle: str, family: FamilySpec, labels: tuple[str, ...]) -> dict[str, str]:
    return dict(zip(family.labels, (vehicle, *labels), strict=True))


class HistorySamples:
    """The history of every vehicle, fed `Decoded` batches in arrival order."""

    def __init__(self, dictionaries: Mapping[str, VehicleDictionary]) -> None:
        self._vehicles = {
            vehicle: _VehicleHistory(vehicle, d) for vehicle, d in dictionaries.items()
        }
        self._rover_times = np.empty(0, dtype=np.float64)
        self._rover_xyz = np.empty((0, 3), dtype=np.float64)
        self._range_vehicle: str | None = None
        self._held_times = np.empty(0, dtype=np.float64)
        self._held_xyz = np.empty((0, 3), dtype=np.float64)

    def take(self, decoded: Decoded) -> SampleBatch:
        """The samples one decoder call gives, in `Pipeline.process` order."""
        out = SampleBatch()
        history = self._vehicles[decoded.vehicle]
        columns = decoded.result.columns
        history.take_values(columns, out)
        history.take_flight(columns, out)
        history.take_vibration(columns, out)
        if history.rover_apid is not None and history.rover_apid in columns:
            self._take_rover(columns[history.rover_apid])
        if history.nav_apid is not None and history.nav_apid in columns:
            self._range_vehicle = history.vehicle
            self._hold_positions(columns[history.nav_apid])
        self._take_range(out)
        return out

    def _take_rover(self, rover: ApidColumns) -> None:
        xyz = np.stack([rover.fields[f"pos_{a}"].astype(np.float64) for a in "xyz"], axis=1)
        times = np.concatenate((self._rover_times, rover.time))
        xyz = np.concatenate((self._rover_xyz, xyz))
        order = np.argsort(times, kind="stable")[-MAX_ROVER_POSITIONS:]
        self._rover_times, self._rover_xyz = times[order], xyz[order]

    def _hold_positions(self, nav: ApidColumns) -> None:
        xyz = np.stack([nav.fields[f"pos_{a}"].astype(np.float64) for a in "xyz"], axis=1)
        self._held_times = np.concatenate((self._held_times, nav.time))
        self._held_xyz = np.concatenate((self._held_xyz, xyz))

    def _take_range(self, out: SampleBatch) -> None:
        """Range for each held helicopter position the rover's positions have reached.

        A position waits until a rover position at or after its time has arrived, so the
        newest rover position at or before it is known whatever order the two vehicles'
        envelopes arrive in; beyond MAX_HELD_POSITIONS the oldest go with what is known.
        """
        if not self._held_times.size or self._range_vehicle is None:
            return
        newest_rover = float(self._rover_times[-1]) if self._rover_times.size else -math.inf
        ready = self._held_times <= newest_rover
        overflow = self._held_times.size - MAX_HELD_POSITIONS
        if overflow > 0:
            ready[np.argsort(self._held_times, kind="stable")[:overflow]] = True
        if not ready.any():
            return
        times, heli = self._held_times[ready], self._held_xyz[ready]
        self._held_times, self._held_xyz = self._held_times[~ready], self._held_xyz[~ready]
        at = np.searchsorted(self._rover_times, times, side="right") - 1
        have = at >= 0  # none before the first rover position
        distance = np.linalg.norm(heli[have] - self._rover_xyz[at[have]], axis=1)
        labels = {"vehicle": self._range_vehicle}
        for time_s, value in zip(times[have].tolist(), distance.tolist(), strict=True):
            out.add(RANGE_TO_ROVER, labels, time_s, value)
