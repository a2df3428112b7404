"""Pack a vehicle's packets into envelopes as the relay does, inject faults, and predict
what the ground station's decoder will count for every envelope.

`EnvelopeBuilder` keeps the per-vehicle state that spans flights and stress chunks
(envelope `seq`, which APIDs have started) and turns one `PacketStream` into
`PlannedEnvelope`s in delivery order. `schedule` then interleaves both vehicles, stamps
the Earth-received time and packs the ICD section 2 payloads. Every envelope carries an
`EnvelopeAccount`: what was sent and what the decoder must find in it (ICD sections 5, 6).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

import numpy as np
from groundstation.simulators.faults import (
    ENVELOPE_FAULTS,
    FAULT_KINDS,
    PACKET_FAULTS,
    UNDELIVERED_FAULTS,
    FaultKind,
)
from groundstation.simulators.stream import PacketStream, gather_bytes
from numpy.typing import NDArray

from groundstation.core.ccsds import (
    APID_BITS,
    APID_MASK,
    CRC_BYTES,
    FINE_PER_SECOND,
    HEADER_BYTES,
    HEADER_STRUCT,
    PACKET_ID_FIXED,
    PACKET_LENGTH_OFFSET,
    PRIMARY_HEADER_BYTES,
    SEQ_COUNT_MODULUS,
    SEQ_FLAGS_UNSEGMENTED,
)
from groundstation.core.crc import crc16, crc16_rows
from groundstation.core.encoder import sclk_from_time
from groundstation.core.envelope import pack_envelope

Int64s = NDArray[np.int64]

# ICD section 5; the simulator never sends a packet from the future (no `clock_error`).
RESULTS: Final = ("ok", "crc_error", "malformed", "unknown_apid", "duplicate", "clock_error")
OK, CRC_ERROR, MALFORMED, UNKNOWN_APID, DUPLICATE = range(5)
UNKNOWN_LABEL: Final = "unknown"  # ICD section 5: the vehicle label of an unreadable envelope
RELAY: Final = "perseverance"
TOPIC_PREFIX: Final = "mars/tm/"
# APID of injected unknown packets: in neither dictionary (checked by EnvelopeBuilder),
# and not 2047, which CCSDS reserves for idle packets.
INJECTED_APID: Final = 0x7F0
# Relay downlink during a store-and-forward pass, for the Earth-received times of a burst.
RELAY_DOWNLINK_BYTES_PER_S: Final = 250_000.0
# A vehicle's envelopes are received at distinct times, in seq order, at least this apart.
MIN_ERT_STEP_S: Final = 1e-6
WRONG_VERSIONS: Final = (0, 2, 3, 99)
GARBAGE_MARKER: Final = b"\xc1"  # a byte msgpack never uses: the payload cannot parse
MIN_TRUNCATED_BYTES: Final = PRIMARY_HEADER_BYTES  # the APID stays readable
NO_FAULT: Final = -1
REORDER_MAX: Final = 3  # a reordered envelope arrives 1 to 3 envelopes late
_CODE: Final[Mapping[FaultKind, int]] = {kind: code for code, kind in enumerate(FAULT_KINDS)}


def topic_for(vehicle: str) -> str:
    """ICD section 2: one topic per source vehicle."""
    return f"{TOPIC_PREFIX}{vehicle}"


@dataclass(frozen=True, kw_only=True)
class EnvelopeAccount:
    """What one envelope carries and what the ground station must count for it."""

    vehicle: str
    label: str  # vehicle label of gs_envelopes_total: the vehicle, or `unknown` for garbage
    valid: bool  # a valid envelope (ICD section 2) whose packets are decoded
    published: bool  # False: dropped on the way
    seq: int
    faults: Mapping[FaultKind, int] = field(default_factory=dict)
    packets_sent: Mapping[int, int] = field(default_factory=dict)  # apid -> packets in payload
    results: Mapping[tuple[int, str], int] = field(default_factory=dict)  # expected verdicts
    # (apid, boot) -> (packets, lowest, highest count since that boot, unwrapped) of the
    # packets decoded `ok`; boot 0 is the run's start, each `reboot` fault starts another
    intact: Mapping[tuple[int, int], tuple[int, int, int]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class PlannedEnvelope:
    """One envelope before it gets its Earth-received time."""

    vehicle: str
    seq: int
    ready_time: float  # when the relay has it: the time of its newest packet
    packets: bytes
    fault: FaultKind | None
    version: int
    garbage: bytes
    account: EnvelopeAccount

    def payload(self, *, ert: float) -> bytes | None:
        """The MQTT payload, or None when the envelope is dropped."""
        if self.fault == "drop_envelope":
            return None
        if self.fault == "garbage":
            return self.garbage
        return pack_envelope(
            relay=RELAY,
            vehicle=self.vehicle,
            seq=self.seq,
            ert=ert,
            packets=self.packets,
            version=self.version,
        )


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """One envelope as published: when, where, what, and its accounting."""

    send_at_s: float  # simulated seconds since the start of the run
    topic: str
    payload: bytes | None  # None: dropped (nothing to publish, accounted all the same)
    packets: bytes  # the packets the decoder will see; empty when it sees none
    ert: float
    account: EnvelopeAccount


def group_starts(time: NDArray[np.float64], per_envelope: int, max_age_s: float | None) -> Int64s:
    """First packet of each envelope: every `per_envelope` packets, and at least once per
    `max_age_s` of packet time when given (live relay), so that slow streams still flow."""
    n = time.shape[0]
    index = np.arange(n, dtype=np.int64)
    if max_age_s is None:
        return index[::per_envelope]
    bucket = np.floor(time / max_age_s).astype(np.int64)
    opens = np.ones(n, dtype=np.bool_)
    opens[1:] = bucket[1:] != bucket[:-1]
    bucket_start: Int64s = np.maximum.accumulate(np.where(opens, index, 0))
    starts: Int64s = index[(index - bucket_start) % per_envelope == 0]
    return starts


def injected_packet(*, apid: int, seq: int, time: float, body: bytes) -> bytes:
    """A well-formed, CRC-valid packet of an APID the dictionary does not know."""
    coarse, fine = sclk_from_time(time)
    length = HEADER_BYTES + len(body) + CRC_BYTES
    header = HEADER_STRUCT.pack(
        PACKET_ID_FIXED | apid,
        SEQ_FLAGS_UNSEGMENTED | (seq % SEQ_COUNT_MODULUS),
        length - PACKET_LENGTH_OFFSET,
        coarse,
        fine,
    )
    unprotected = header + body
    return unprotected + crc16(unprotected).to_bytes(CRC_BYTES, "big")


class EnvelopeBuilder:
    """One vehicle's envelopes: grouping, faults and expected decoder counts."""

    def __init__(
        self,
        *,
        vehicle: str,
        known_apids: Collection[int],
        packets_per_envelope: int,
        max_age_s: float | None,
        rates: Mapping[FaultKind, float],
        rng: np.random.Generator,
    ) -> None:
        if INJECTED_APID in known_apids:
            raise ValueError(f"{vehicle}: APID {INJECTED_APID} is known, cannot inject it")
        self.vehicle = vehicle
        self.packets_per_envelope = packets_per_envelope
        self.max_age_s = max_age_s
        self.rates = rates
        self.rng = rng
        self._next_seq = 0
        self._next_injected = 0
        self._started_apids: set[int] = set()  # APIDs seen since the last boot
        self._first_envelope = True
        self._boot = 0  # reboots so far
        self._boot_base: dict[int, int] = {}  # apid -> unwrapped count that is 0 in this boot

    def build(self, stream: PacketStream, *, final: bool) -> list[PlannedEnvelope]:
        """Envelopes for the next packets of the vehicle, in the order the relay sends them."""
        n = len(stream)
        if n == 0:
            return []
        rng = self.rng
        starts = group_starts(stream.time, self.packets_per_envelope, self.max_age_s)
        n_env = starts.shape[0]
        ends = np.append(starts[1:], n)
        env = np.repeat(np.arange(n_env), ends - starts)

        env_fault, packet_fault, boot, boot_count = self._draw_faults(
            stream, starts, ends, env, final=final
        )
        stream = _rewrite_counts(stream, boot_count)
        source, injected_lengths = self._fault_bytes(stream, packet_fault)
        items = self._items(stream, packet_fault, injected_lengths, env)
        lengths = np.bincount(items.env, weights=items.length, minlength=n_env).astype(np.int64)
        data = gather_bytes(source, items.start, items.length)
        byte_start = np.cumsum(lengths) - lengths
        # A truncated envelope loses 1 .. L-6 bytes of its last packet.
        tail_length = stream.length[ends - 1]
        cut = np.zeros(n_env, dtype=np.int64)
        truncated = env_fault == _CODE["truncate"]
        if truncated.any():
            cut[truncated] = rng.integers(1, tail_length[truncated] - MIN_TRUNCATED_BYTES + 1)
        lengths -= cut

        accounts = self._accounts(
            stream,
            items,
            env_fault=env_fault,
            packet_fault=packet_fault,
            env=env,
            last_item=ends - 1,
            boot=boot,
            boot_count=boot_count,
        )
        order = np.arange(n_env, dtype=np.float64)
        reordered = env_fault == _CODE["reorder"]
        if reordered.any():
            late = rng.integers(1, REORDER_MAX + 1, size=int(reordered.sum()))
            order[reordered] += late + 0.5
        delivery = np.argsort(order, kind="stable")
        # The relay has an envelope once its newest packet exists; one SCLK tick more
        # covers the encoder's rounding of packet time to the tick (ert >= packet time).
        ready = np.maximum.accumulate(stream.time[ends - 1][delivery]) + 1 / FINE_PER_SECOND

        planned: list[PlannedEnvelope] = []
        for position, index in enumerate(delivery.tolist()):
            code = int(env_fault[index])
            fault = FAULT_KINDS[code] if code != NO_FAULT else None
            version = int(rng.choice(WRONG_VERSIONS)) if fault == "wrong_version" else 1
            garbage = b""
            if fault == "garbage":
                garbage = GARBAGE_MARKER + rng.bytes(int(rng.integers(7, 64)))
            start = int(byte_start[index])
            planned.append(
                PlannedEnvelope(
                    vehicle=self.vehicle,
                    seq=accounts[index].seq,
                    ready_time=float(ready[position]),
                    packets=data[start : start + int(lengths[index])].tobytes(),
                    fault=fault,
                    version=version,
                    garbage=garbage,
                    account=accounts[index],
                )
            )
        return planned

    def _draw_faults(
        self, stream: PacketStream, starts: Int64s, ends: Int64s, env: Int64s, *, final: bool
    ) -> tuple[NDArray[np.int8], NDArray[np.int8], Int64s, Int64s]:
        """Fault code (or NO_FAULT) per envelope and per packet, at most one each; and per
        packet its boot and count since that boot (`_boots`)."""
        rng = self.rng
        n, n_env = len(stream), starts.shape[0]
        env_fault = np.full(n_env, NO_FAULT, dtype=np.int8)
        reboot_rate = self.rates.get("reboot", 0.0)
        if reboot_rate > 0.0:
            # Not on the stream's first envelope, nor on a final run's last one.
            possible = np.ones(n_env, dtype=np.bool_)
            possible[0] = not self._first_envelope
            if final:
                possible[-1] = False
            env_fault[possible & (rng.random(n_env) < reboot_rate)] = _CODE["reboot"]
        reboots = np.flatnonzero(env_fault == _CODE["reboot"])
        boot, boot_count = self._boots(stream, starts[reboots])
        anchor_packet, anchor_env = self._anchors(
            stream, env, n_env, reboot_starts=starts[reboots], final=final
        )
        # ICD section 6 reads a jump to count 0 as a restart: the packet before each wrap
        # always arrives, so that the wrap is seen as one step (16383 -> 0).
        wraps = np.flatnonzero(boot_count % SEQ_COUNT_MODULUS == SEQ_COUNT_MODULUS - 1)
        anchor_packet[wraps] = True
        anchor_env[env[wraps]] = True
        for kind in ENVELOPE_FAULTS:
            rate = self.rates.get(kind, 0.0)
            if rate > 0.0 and kind != "reboot":
                pick = (env_fault == NO_FAULT) & ~anchor_env & (rng.random(n_env) < rate)
                env_fault[pick] = _CODE[kind]
        for reboot in reboots.tolist():  # nothing from before a reboot arrives after it
            before = env_fault[max(0, reboot - REORDER_MAX) : reboot]
            before[before == _CODE["reorder"]] = NO_FAULT
        undelivered = np.isin(env_fault, [_CODE[k] for k in UNDELIVERED_FAULTS])
        truncated = env_fault == _CODE["truncate"]

        # Packet faults only where the decoder will see them, never on the truncated tail.
        packet_fault = np.full(n, NO_FAULT, dtype=np.int8)
        eligible = ~undelivered[env] & ~anchor_packet
        eligible[ends[truncated] - 1] = False
        for kind in PACKET_FAULTS:
            rate = self.rates.get(kind, 0.0)
            if rate > 0.0:
                pick = eligible & (packet_fault == NO_FAULT) & (rng.random(n) < rate)
                packet_fault[pick] = _CODE[kind]
        dropped = packet_fault == _CODE["drop_packet"]
        if dropped.any():  # an envelope keeps at least one packet (ICD: `packets` is not empty)
            kept = np.bincount(env, weights=~dropped, minlength=n_env)
            packet_fault[starts[kept == 0]] = NO_FAULT
        return env_fault, packet_fault, boot, boot_count

    def _anchors(
        self,
        stream: PacketStream,
        env: Int64s,
        n_env: int,
        *,
        reboot_starts: Int64s,
        final: bool,
    ) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        """Packets and envelopes that are never faulted: where accounting starts and ends
        (and, after a reboot, where it restarts)."""
        n = len(stream)
        anchor_packet = np.zeros(n, dtype=np.bool_)
        bounds = [0, *reboot_starts.tolist(), n]
        for segment, (low, high) in enumerate(itertools.pairwise(bounds)):
            if segment > 0:
                self._started_apids = set()  # a reboot: every APID starts again
            apids, first = np.unique(stream.apid[low:high], return_index=True)
            new = ~np.isin(apids, list(self._started_apids))
            anchor_packet[low + first[new]] = True
            self._started_apids.update(int(a) for a in apids)
        anchor_env = np.zeros(n_env, dtype=np.bool_)
        if final:
            _, last_reversed = np.unique(stream.apid[::-1], return_index=True)
            anchor_packet[n - 1 - last_reversed] = True
            anchor_env[-1] = True
        anchor_env[env[anchor_packet]] = True
        if self._first_envelope:
            anchor_env[0] = True
            self._first_envelope = False
        return anchor_packet, anchor_env

    def _boots(self, stream: PacketStream, reboot_starts: Int64s) -> tuple[Int64s, Int64s]:
        """Per packet, its boot and its count since that boot (unwrapped): from each reboot
        (starting at the given packets) every APID counts from 0 again, while packet time
        runs on. These counts are what the ground station's accounting sees."""
        n = len(stream)
        boot = np.full(n, self._boot, dtype=np.int64)
        base = np.zeros(n, dtype=np.int64)
        bounds = [0, *reboot_starts.tolist(), n]
        for segment, (low, high) in enumerate(itertools.pairwise(bounds)):
            if segment > 0:
                self._boot += 1
                self._boot_base = {}
            boot[low:high] = self._boot
            apid = stream.apid[low:high]
            for value in np.unique(apid).tolist():
                if value not in self._boot_base:
                    # Counting from 0 in this boot; before any reboot the stream's own counts.
                    first = int(stream.count[low:high][apid == value][0])
                    self._boot_base[value] = first if self._boot else 0
                base[low:high][apid == value] = self._boot_base[value]
        boot_count: Int64s = stream.count - base
        return boot, boot_count

    def _fault_bytes(
        self, stream: PacketStream, packet_fault: NDArray[np.int8]
    ) -> tuple[NDArray[np.uint8], Int64s]:
        """The stream's bytes with bit flips applied, followed by the injected packets."""
        rng = self.rng
        source = stream.data
        flipped = np.flatnonzero(packet_fault == _CODE["flip_bits"])
        if flipped.size:
            source = source.copy()
            for index in flipped.tolist():
                # An odd number of flips: CRC-16/CCITT's polynomial has the factor x + 1,
                # so every odd-weight error is detected. Header bytes stay intact.
                body_bits = 8 * (int(stream.length[index]) - HEADER_BYTES)
                for bit in rng.choice(body_bits, size=int(rng.choice([1, 3])), replace=False):
                    byte = int(stream.offset[index]) + HEADER_BYTES + int(bit) // 8
                    source[byte] ^= 1 << (int(bit) % 8)
        injected = np.flatnonzero(packet_fault == _CODE["unknown_apid"])
        packets = []
        for index in injected.tolist():
            packets.append(
                injected_packet(
                    apid=INJECTED_APID,
                    seq=self._next_injected,
                    time=float(stream.time[index]),
                    body=rng.bytes(int(rng.integers(4, 33))),
                )
            )
            self._next_injected += 1
        if packets:
            source = np.concatenate([source, np.frombuffer(b"".join(packets), dtype=np.uint8)])
        return source, np.array([len(p) for p in packets], dtype=np.int64)

    def _items(
        self,
        stream: PacketStream,
        packet_fault: NDArray[np.int8],
        injected_lengths: Int64s,
        env: Int64s,
    ) -> _Items:
        """What goes into the buffers, in order: [injected] packet [copy] for each packet."""
        n = len(stream)
        injected = packet_fault == _CODE["unknown_apid"]
        slots = np.stack(
            [
                injected,
                packet_fault != _CODE["drop_packet"],
                packet_fault == _CODE["duplicate_packet"],
            ],
            axis=1,
        ).ravel()
        packet = np.repeat(np.arange(n, dtype=np.int64), 3)[slots]
        kind = np.tile(np.arange(3, dtype=np.int64), n)[slots]
        injected_index = np.cumsum(injected) - 1  # which injected packet belongs to a packet
        injected_start = len(stream.data) + np.cumsum(injected_lengths) - injected_lengths
        is_injected = kind == 0
        which = injected_index[packet[is_injected]]
        start = stream.offset[packet].copy()
        length = stream.length[packet].copy()
        start[is_injected] = injected_start[which]
        length[is_injected] = injected_lengths[which]
        return _Items(packet=packet, kind=kind, start=start, length=length, env=env[packet])

    def _accounts(
        self,
        stream: PacketStream,
        items: _Items,
        *,
        env_fault: NDArray[np.int8],
        packet_fault: NDArray[np.int8],
        env: Int64s,
        last_item: Int64s,
        boot: Int64s,
        boot_count: Int64s,
    ) -> list[EnvelopeAccount]:
        """Per envelope: faults, packets sent and the decoder's expected verdicts."""
        undelivered = np.isin(env_fault, [_CODE[k] for k in UNDELIVERED_FAULTS])
        carries_packets = ~np.isin(env_fault, [_CODE["drop_envelope"], _CODE["garbage"]])
        truncated = env_fault == _CODE["truncate"]
        apid = np.where(items.kind == 0, INJECTED_APID, stream.apid[items.packet]).astype(np.int64)
        result = np.full(items.packet.shape[0], OK, dtype=np.int64)
        result[items.kind == 0] = UNKNOWN_APID
        result[items.kind == 2] = DUPLICATE
        original = items.kind == 1
        result[original & (packet_fault[items.packet] == _CODE["flip_bits"])] = CRC_ERROR
        tail = np.zeros(len(stream), dtype=np.bool_)
        tail[last_item[truncated]] = True
        result[original & tail[items.packet]] = MALFORMED
        decoded = ~undelivered[items.env]

        sent = _count_by(items.env[carries_packets[items.env]], apid[carries_packets[items.env]])
        verdicts = _count_by(items.env[decoded], apid[decoded] * 8 + result[decoded])
        ok = decoded & (result == OK)
        # Keyed by apid and boot: the APID in the low 11 bits.
        key = boot[items.packet[ok]] << APID_BITS | apid[ok]
        intact = _range_by(items.env[ok], key, boot_count[items.packet[ok]])
        faulted = packet_fault != NO_FAULT
        packet_faults = _count_by(env[faulted], packet_fault[faulted].astype(np.int64))

        n_env = env_fault.shape[0]
        seq0 = self._next_seq
        self._next_seq += n_env
        accounts = []
        for index in range(n_env):
            code = int(env_fault[index])
            faults: dict[FaultKind, int] = {
                FAULT_KINDS[k]: c for k, c in packet_faults.get(index, {}).items()
            }
            if code != NO_FAULT:
                faults[FAULT_KINDS[code]] = 1
            accounts.append(
                EnvelopeAccount(
                    vehicle=self.vehicle,
                    label=UNKNOWN_LABEL if code == _CODE["garbage"] else self.vehicle,
                    valid=not undelivered[index],
                    published=code != _CODE["drop_envelope"],
                    seq=seq0 + index,
                    faults=faults,
                    packets_sent=sent.get(index, {}),
                    results={
                        (key // 8, RESULTS[key % 8]): c
                        for key, c in verdicts.get(index, {}).items()
                    },
                    intact={
                        (key & APID_MASK, key >> APID_BITS): value
                        for key, value in intact.get(index, {}).items()
                    },
                )
            )
        return accounts


@dataclass(frozen=True, kw_only=True)
class _Items:
    """The buffer entries of a batch of envelopes: 0 injected, 1 original, 2 duplicate."""

    packet: Int64s
    kind: Int64s
    start: Int64s
    length: Int64s
    env: Int64s


def _rewrite_counts(stream: PacketStream, boot_count: Int64s) -> PacketStream:
    """The stream with each packet's count field set to its count since its boot (and its
    CRC recomputed), where that differs from the count it was encoded with."""
    changed = np.flatnonzero(boot_count % SEQ_COUNT_MODULUS != stream.count % SEQ_COUNT_MODULUS)
    if changed.size == 0:
        return stream
    data = stream.data.copy()
    wire = boot_count[changed] % SEQ_COUNT_MODULUS
    for length in np.unique(stream.length[changed]).tolist():
        which = stream.length[changed] == length
        at = stream.offset[changed][which][:, np.newaxis] + np.arange(length)
        rows = data[at]
        rows[:, 2] = 0xC0 | (wire[which] >> 8)  # sequence flags 0b11, then the count
        rows[:, 3] = wire[which] & 0xFF
        check = crc16_rows(rows[:, : length - 2])
        rows[:, length - 2] = check >> 8
        rows[:, length - 1] = check & 0xFF
        data[at] = rows
    return replace(stream, data=data)


def _erts_in_seq_order(merged: Sequence[PlannedEnvelope], erts: list[float]) -> list[float]:
    """Each vehicle's Earth-received times handed out in `seq` order, strictly increasing.

    The relay's Earth-received times follow its envelope counter; a `reorder` fault delays
    an envelope on the ground side (it is published after later ones, with the older `ert`
    it was received at), so the ground station sees it as late (ICD section 6), not as a
    relay restart. Every time stays at or after the leave time of the envelope delivered
    in its place, which is at least its own packets' time plus the light time.
    """
    result = list(erts)
    for vehicle in {plan.vehicle for plan in merged}:
        positions = [i for i, plan in enumerate(merged) if plan.vehicle == vehicle]
        by_seq = sorted(positions, key=lambda i: merged[i].seq)
        previous = -math.inf
        for position, ert in zip(by_seq, sorted(erts[i] for i in positions), strict=True):
            previous = max(ert, previous + MIN_ERT_STEP_S)
            result[position] = previous
    return result


def _count_by(env: Int64s, key: Int64s) -> dict[int, dict[int, int]]:
    """{env: {key: occurrences}} without a per-item loop (keys are below 2**20)."""
    if env.size == 0:
        return {}
    combined, counts = np.unique((env << 20) | key, return_counts=True)
    table: dict[int, dict[int, int]] = {}
    for value, count in zip(combined.tolist(), counts.tolist(), strict=True):
        table.setdefault(value >> 20, {})[value & 0xFFFFF] = count
    return table


def _range_by(
    env: Int64s, key: Int64s, value: Int64s
) -> dict[int, dict[int, tuple[int, int, int]]]:
    """{env: {key: (count, min value, max value)}}."""
    if env.size == 0:
        return {}
    order = np.lexsort((value, key, env))
    env, key, value = env[order], key[order], value[order]
    starts = np.flatnonzero(np.r_[True, (env[1:] != env[:-1]) | (key[1:] != key[:-1])])
    stops = np.r_[starts[1:], env.shape[0]]
    table: dict[int, dict[int, tuple[int, int, int]]] = {}
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        table.setdefault(int(env[a]), {})[int(key[a])] = (b - a, int(value[a]), int(value[b - 1]))
    return table


def schedule(
    plans: Sequence[Sequence[PlannedEnvelope]],
    *,
    run_start: float,
    light_time_s: float,
    pass_start: float | None,
) -> list[Delivery]:
    """Interleave the vehicles' envelopes and give each its Earth-received time.

    Live (`pass_start` None): each envelope leaves when its newest packet exists, and
    arrives one light time later. Store-and-forward: the whole batch is played back in
    one pass from `pass_start`, at the relay's downlink rate.
    """
    merged = sorted(
        (p for vehicle_plans in plans for p in vehicle_plans),
        key=lambda p: p.ready_time,
    )  # sorted() is stable: each vehicle keeps its own (possibly reordered) order
    leaves = []
    sent_bytes = 0
    for plan in merged:
        if pass_start is None:
            leaves.append(plan.ready_time)
        else:
            leaves.append(pass_start + sent_bytes / RELAY_DOWNLINK_BYTES_PER_S)
            sent_bytes += len(plan.packets) + 64
    erts = _erts_in_seq_order(merged, [leave + light_time_s for leave in leaves])
    deliveries = []
    for plan, leave, ert in zip(merged, leaves, erts, strict=True):
        deliveries.append(
            Delivery(
                send_at_s=leave - run_start,
                topic=topic_for(plan.vehicle),
                payload=plan.payload(ert=ert),
                packets=plan.packets if plan.account.valid else b"",
                ert=ert,
                account=plan.account,
            )
        )
    return deliveries
