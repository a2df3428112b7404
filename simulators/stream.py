"""A vehicle's packets in time order as one byte buffer plus per-packet columns.

Everything downstream (envelopes, faults, accounting) works on index arrays over this
buffer, so millions of packets cost a few numpy gathers, not a Python loop per packet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from groundstation.core.ccsds import SEQ_COUNT_MODULUS
from groundstation.core.definitions import PacketDef
from groundstation.core.encoder import encode_packet, encode_packets

Int64s = NDArray[np.int64]
_WORD_TYPES: Final = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def gather_bytes(source: NDArray[np.uint8], starts: Int64s, lengths: Int64s) -> NDArray[np.uint8]:
    """Concatenate source[starts[i] : starts[i] + lengths[i]] for every i, without a loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.uint8)
    out_starts = np.cumsum(lengths) - lengths
    if np.array_equal(starts, out_starts):  # already in place: nothing moves
        return source[:total]
    # Move whole words when every piece is word-aligned (packets of even length are), and
    # use 32-bit indices when they fit: the gather's cost is its index array.
    unit = int(np.gcd.reduce(np.concatenate([starts, lengths, [source.shape[0], 8]])))
    words = source.view(_WORD_TYPES[unit]) if unit in _WORD_TYPES else source
    step = unit if unit in _WORD_TYPES else 1
    kind = np.int32 if words.shape[0] < 2**31 else np.int64
    index = np.repeat(((starts - out_starts) // step).astype(kind), lengths // step)
    index += np.arange(total // step, dtype=kind)
    gathered: NDArray[np.uint8] = words[index].view(np.uint8)
    return gathered


@dataclass(frozen=True, kw_only=True)
class ApidBlock:
    """Packets of one APID, already encoded back to back, with their times and counts."""

    apid: int
    data: bytes
    length: Int64s
    count: Int64s  # unwrapped sequence counts (the wire carries count % 16384)
    time: NDArray[np.float64]


@dataclass(frozen=True, kw_only=True)
class PacketStream:
    """One vehicle's packets in send order: bytes plus one row per packet."""

    vehicle: str
    data: NDArray[np.uint8]
    offset: Int64s
    length: Int64s
    apid: NDArray[np.int32]
    count: Int64s
    time: NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.offset.shape[0])

    @classmethod
    def merge(cls, vehicle: str, blocks: Sequence[ApidBlock]) -> PacketStream:
        """Interleave APID blocks by packet time (ties: lower APID first), as a vehicle sends."""
        blocks = [b for b in blocks if b.length.shape[0]]
        if not blocks:
            empty = np.zeros(0, dtype=np.int64)
            return cls(
                vehicle=vehicle,
                data=np.zeros(0, dtype=np.uint8),
                offset=empty,
                length=empty,
                apid=np.zeros(0, dtype=np.int32),
                count=empty,
                time=np.zeros(0),
            )
        source = np.frombuffer(b"".join(b.data for b in blocks), dtype=np.uint8)
        length = np.concatenate([b.length for b in blocks])
        start = np.cumsum(length) - length
        apid = np.concatenate([np.full(b.length.shape[0], b.apid, dtype=np.int32) for b in blocks])
        time = np.concatenate([b.time for b in blocks])
        count = np.concatenate([b.count for b in blocks])
        order = np.lexsort((apid, time))
        length = length[order]
        data = gather_bytes(source, start[order], length)
        return cls(
            vehicle=vehicle,
            data=data,
            offset=np.cumsum(length) - length,
            length=length,
            apid=apid[order],
            count=count[order],
            time=time[order],
        )


def fixed_block(
    packet: PacketDef,
    *,
    first_count: int,
    time: NDArray[np.float64],
    columns: dict[str, object],
) -> ApidBlock:
    """Encode n packets of a fixed-length APID with the vectorised encoder."""
    n = time.shape[0]
    count = first_count + np.arange(n, dtype=np.int64)
    data = encode_packets(packet, seq=count % SEQ_COUNT_MODULUS, time=time, columns=columns)
    return ApidBlock(
        apid=packet.apid,
        data=data,
        length=np.full(n, packet.max_length, dtype=np.int64),
        count=count,
        time=time,
    )


def event_block(
    packet: PacketDef,
    *,
    first_count: int,
    events: Sequence[tuple[float, int, int, str]],
) -> ApidBlock:
    """Encode event reports (time, severity, event id, message) one by one: they are few."""
    encoded = [
        encode_packet(
            packet,
            seq=(first_count + i) % SEQ_COUNT_MODULUS,
            time=time,
            values={"severity": severity, "event_id": event_id, "message": message},
        )
        for i, (time, severity, event_id, message) in enumerate(events)
    ]
    return ApidBlock(
        apid=packet.apid,
        data=b"".join(encoded),
        length=np.array([len(p) for p in encoded], dtype=np.int64),
        count=first_count + np.arange(len(encoded), dtype=np.int64),
        time=np.array([e[0] for e in events], dtype=np.float64),
    )
