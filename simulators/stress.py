"""Stress mode: the load generator for benchmarks, at a chosen packet rate or flat out.

Each APID of the mix is its own regular stream at rate x weight / total weight; packet
times are start + k / that rate, so even a flat-out run has sensible, increasing times.
Values are constant per APID (a hovering helicopter): the decoder does the same work
whatever the values are, and constant columns let the encoder broadcast them for free.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np
from groundstation.simulators.stream import ApidBlock, PacketStream, event_block, fixed_block
from numpy.typing import NDArray

from groundstation.core.definitions import PacketDef, VehicleDictionary
from groundstation.errors import ConfigError

# The flight mix of ICD section 4 while flying: IMU 50/s, NAV 30/s, 1 Hz housekeeping.
DEFAULT_MIX: Final = MappingProxyType(
    {"HELI_IMU": 50.0, "HELI_NAV": 30.0, "HELI_HK": 1.0, "ROVER_NAV": 1.0, "HBS_LINK": 1.0}
)
CHUNK_PACKETS: Final = 65536  # packets generated per step: big enough to vectorise well

_VALUES: Final[Mapping[str, object]] = MappingProxyType(
    {
        "mode": 3,
        "battery_voltage": 23.1,
        "battery_current": 15.2,
        "battery_soc": 80,
        "link_rssi": -66,
        "battery_temp": 9.5,
        "avionics_temp": 1.5,
        "rotor_rpm_upper": 2537,
        "rotor_rpm_lower": 2536,
        "pos_z": 5.0,
        "lidar_alt": 5.0,
        "nav_state": 2,
        "nav_flags": 3,
        "az": 3.721,
        "hbs_rssi": -68,
        "link_quality": 84,
        "heli_link_up": 1,
        "odometry": 180.0,
    }
)


def parse_mix(text: str) -> Mapping[str, float]:
    """`NAME=WEIGHT,...` (packet names of ICD section 4) as a mapping of positive weights."""
    mix: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        try:
            weight = float(value) if sep else math.nan
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight) or weight <= 0:
            raise ConfigError(f"packet mix {item!r}: expected NAME=WEIGHT with WEIGHT > 0")
        mix[name.strip().upper()] = weight
    if not mix:
        raise ConfigError("packet mix is empty")
    return MappingProxyType(mix)


@dataclass(frozen=True, kw_only=True)
class _Source:
    vehicle: str
    packet: PacketDef
    rate_hz: float


class StressGenerator:
    """Chunks of packets per vehicle, until `max_packets` or `duration_s` of packet time."""

    def __init__(
        self,
        *,
        dictionaries: Mapping[str, VehicleDictionary],
        mix: Mapping[str, float],
        rate_pps: float,
        start_time: float,
        counts: MutableMapping[int, int],
        max_packets: int | None,
        duration_s: float | None,
    ) -> None:
        by_name = {
            packet.name: (vehicle, packet)
            for vehicle, dictionary in dictionaries.items()
            for packet in dictionary.packets.values()
        }
        unknown = sorted(set(mix) - set(by_name))
        if unknown:
            raise ConfigError(f"packet mix: unknown packet(s) {unknown} (known: {sorted(by_name)})")
        total = sum(mix.values())
        self.sources = tuple(
            _Source(vehicle=by_name[name][0], packet=by_name[name][1], rate_hz=rate_pps * w / total)
            for name, w in mix.items()
        )
        self.vehicles = tuple(sorted({s.vehicle for s in self.sources}))
        self.rate_pps = rate_pps
        self.start_time = start_time
        self.counts = counts
        self.max_packets = max_packets
        self.duration_s = duration_s
        self.chunk_s = CHUNK_PACKETS / rate_pps

    def chunks(self) -> Iterator[tuple[dict[str, PacketStream], bool]]:
        """(streams by vehicle, final) for each chunk, in time order."""
        emitted = 0
        step = 0
        while True:
            t0, t1 = step * self.chunk_s, (step + 1) * self.chunk_s
            final = self.duration_s is not None and t1 >= self.duration_s
            if final and self.duration_s is not None:
                t1 = self.duration_s
            index_ranges = [
                (math.ceil(t0 * s.rate_hz - 1e-9), math.ceil(t1 * s.rate_hz - 1e-9))
                for s in self.sources
            ]
            if self.max_packets is not None:
                room = self.max_packets - emitted
                wanted = sum(b - a for a, b in index_ranges)
                if wanted >= room:
                    final = True
                    index_ranges = self._trim(index_ranges, room)
            blocks: dict[str, list[ApidBlock]] = {v: [] for v in self.vehicles}
            for source, (first, stop) in zip(self.sources, index_ranges, strict=True):
                if stop > first:
                    times = self.start_time + np.arange(first, stop) / source.rate_hz
                    blocks[source.vehicle].append(self._block(source, times))
            emitted += sum(b - a for a, b in index_ranges)
            yield {v: PacketStream.merge(v, b) for v, b in blocks.items()}, final
            if final:
                return
            step += 1

    def _trim(self, ranges: list[tuple[int, int]], room: int) -> list[tuple[int, int]]:
        """Keep the `room` earliest packets of a chunk across all sources."""
        times = np.concatenate(
            [np.arange(a, b) / s.rate_hz for s, (a, b) in zip(self.sources, ranges, strict=True)]
        )
        source_of = np.concatenate([np.full(b - a, i) for i, (a, b) in enumerate(ranges)]).astype(
            np.int64
        )
        keep = np.argsort(times, kind="stable")[: max(room, 0)]
        kept = np.bincount(source_of[keep], minlength=len(ranges))
        return [(a, a + int(k)) for (a, _), k in zip(ranges, kept, strict=True)]

    def _block(self, source: _Source, times: NDArray[np.float64]) -> ApidBlock:
        packet = source.packet
        n = times.shape[0]
        first = self.counts.get(packet.apid, 0)
        self.counts[packet.apid] = first + n
        if packet.text_field is not None:
            events = [(float(t), 1, 4000, f"stress event {first + i}") for i, t in enumerate(times)]
            return event_block(packet, first_count=first, events=events)
        columns: dict[str, object] = {f.name: _VALUES.get(f.name, 0) for f in packet.fields}
        if "pos_x" in columns:  # a slow drift, so that the position is not a constant
            columns["pos_x"] = (times - self.start_time) * 0.5 % 100.0
        return fixed_block(packet, first_count=first, time=times, columns=columns)
