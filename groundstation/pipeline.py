"""Batch processing shared by live ingest and replay, so that their counts match by construction.

Live: MQTT batch -> `ArchivingSink.store` (validate each payload, append to the archive)
-> ack -> `IngestQueue` (bounded) -> `DecodeWorker` -> `Pipeline.process` in a child
process (`PipelineProcess`, the packets passed in shared memory: `PacketSlots`) ->
Telemetry -> snapshot swapped for the metrics collector.
Replay: archive reader -> `check_payload` -> the same `Pipeline.process`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from groundstation.consumers.telemetry import Telemetry, TelemetrySnapshot
from groundstation.core.decoder import DecodeResult, PacketDecoder, Split
from groundstation.core.definitions import VehicleDictionary, load_dictionaries
from groundstation.core.envelope import (
    DEFAULT_MAX_CLOCK_SKEW_S,
    ENVELOPE_VERSION,
    Envelope,
    Invalid,
    check_arrival,
    check_topic,
    unpack_envelope,
)
from groundstation.errors import ArchiveWriteError
from groundstation.ingest.archive import (
    ArchiveReader,
    ArchiveRecord,
    ArchiveWriter,
    Frame,
    frame_record,
)
from groundstation.ingest.mqtt import Delivery
from groundstation.service.child_process import start_as_child

logger = logging.getLogger(__name__)

# Rate limit of the bad-input warnings (ICD section 6: logged rate-limited; metrics count all).
WARNINGS_PER_INTERVAL: Final = 5
WARNING_INTERVAL_S: Final = 60.0
DECODE_BATCHES_IN_FLIGHT: Final = 2  # sent to the child ahead: one decoding, one waiting
# Retries of a failed archive write (a full file system): soon enough to resume within
# seconds of space returning, rare enough not to flood the log or the disk.
ARCHIVE_RETRY_MIN_S: Final = 0.25
ARCHIVE_RETRY_MAX_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class Arrival:
    """One archived payload and its verdict, on its way to the decoder."""

    topic: str
    received_at: float
    size: int  # payload bytes, for the queue's byte bound
    envelope: Envelope | Invalid
    # The first received after a session takeover: the gaps before it went to the other
    # client with our client id (sequence accounting counts them taken over, not lost).
    after_takeover: bool = False


@dataclass(frozen=True, slots=True)
class FoundSplit:
    """Step 1 of decoding a vehicle's envelopes of a batch, done beforehand, and its time
    (counted in gs_decode_seconds with the rest of the decoding)."""

    split: Split
    seconds: float
    packets: memoryview | None = None
    """The vehicle's packets, back to back where the parent put them (`PacketSlots.fill`):
    the decoder need not join them again."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """One decoder call: a vehicle's valid envelopes of a batch, in arrival order."""

    vehicle: str
    envelopes: Sequence[Envelope]
    result: DecodeResult


class RateLimitedWarnings:
    """At most `limit` warnings per key per interval; the rest are counted and summarised."""

    def __init__(
        self,
        log: logging.Logger,
        *,
        limit: int = WARNINGS_PER_INTERVAL,
        interval_s: float = WARNING_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._limit = limit
        self._interval_s = interval_s
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, message: str, *args: object, extra: Mapping[str, object]) -> None:
        now = self._clock()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self._interval_s:
            if count > self._limit:
                self._log.warning(
                    "%d more %s warnings in the last %.0f s were not logged",
                    count - self._limit,
                    key,
                    now - start,
                    extra={"reason": key},
                )
            start, count = now, 0
        count += 1
        self._windows[key] = (start, count)
        if count <= self._limit:
            self._log.warning(message, *args, extra=dict(extra))


class InvalidEnvelopeLog:
    """The rate-limited warning for each invalid envelope (ICD section 6), with its context."""

    def __init__(self, warnings: RateLimitedWarnings | None = None) -> None:
        self._warnings = warnings or RateLimitedWarnings(logger)

    def __call__(self, arrival: Arrival) -> None:
        envelope = arrival.envelope
        if isinstance(envelope, Invalid):
            self._warnings.warning(
                envelope.reason,
                "invalid envelope on %s: %s %s",
                arrival.topic,
                envelope.reason,
                envelope.detail,
                extra={
                    "topic": arrival.topic,
                    "vehicle": envelope.vehicle,
                    "reason": envelope.reason,
                },
            )


def check_payload(
    topic: str,
    payload: bytes,
    received_at: float,
    *,
    max_payload_bytes: int,
    vehicles: Iterable[str],
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
    after_takeover: bool = False,
) -> Arrival:
    """Validate one payload (cheap msgpack unpack) into an Arrival; never raises.

    The verdict depends only on the payload, the topic and `received_at`, which the archive
    keeps: replay gives the same one."""
    envelope: Envelope | Invalid | None = check_topic(topic)
    if envelope is None:
        envelope = unpack_envelope(
            payload, max_payload_bytes=max_payload_bytes, vehicles=frozenset(vehicles)
        )
    if isinstance(envelope, Envelope):
        envelope = check_arrival(
            envelope, topic=topic, received_at=received_at, max_clock_skew_s=max_clock_skew_s
        )
    return Arrival(
        topic=topic,
        received_at=received_at,
        size=len(payload),
        envelope=envelope,
        after_takeover=after_takeover,
    )


class Pipeline:
    """Decodes batches of arrivals into Telemetry; not thread-safe, one worker at a time."""

    def __init__(
        self,
        dictionaries: Mapping[str, VehicleDictionary],
        *,
        telemetry: Telemetry,
        decoders: Mapping[str, PacketDecoder] | None = None,
        max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.telemetry = telemetry
        self.decoders: Mapping[str, PacketDecoder] = decoders or {
            vehicle: PacketDecoder(dictionary, max_clock_skew_s=max_clock_skew_s)
            for vehicle, dictionary in dictionaries.items()
        }
        self._clock = clock

    def process(
        self, batch: Sequence[Arrival], *, splits: Mapping[str, FoundSplit] | None = None
    ) -> list[Decoded]:
        """Apply one batch in arrival order: envelopes counted, packets decoded per vehicle.

        `splits`: step 1 of decoding a vehicle's envelopes, if found beforehand (the parent
        finds it while the child decodes the batch before: `PacketSlots.fill`).
        """
        takeovers = [index for index, a in enumerate(batch) if a.after_takeover and index]
        if takeovers:
            # Rare (replay, history): a takeover inside the batch; its accounting must fall
            # between the parts. (The live path never merges across one: `IngestQueue.take`.)
            decoded: list[Decoded] = []
            for start, end in itertools.pairwise([0, *takeovers, len(batch)]):
                decoded += self.process(batch[start:end])
            return decoded
        if batch and batch[0].after_takeover:
            self.telemetry.excuse_gaps()
            for decoder in self.decoders.values():
                decoder.excuse_gaps()
        by_vehicle: dict[str, list[Envelope]] = {}
        redelivered: dict[str, list[bool]] = {}
        for arrival in batch:
            envelope = arrival.envelope
            if isinstance(envelope, Invalid):
                self.telemetry.record_invalid(vehicle=envelope.vehicle)
                continue
            verdict = self.telemetry.record_envelope(
                relay=envelope.relay,
                vehicle=envelope.vehicle,
                seq=envelope.seq,
                ert=envelope.ert,
                received_at=arrival.received_at,
            )
            by_vehicle.setdefault(envelope.vehicle, []).append(envelope)
            redelivered.setdefault(envelope.vehicle, []).append(verdict == "duplicate")
        decoded = []
        for vehicle, envelopes in by_vehicle.items():
            started = self._clock()
            found = None if splits is None else splits.get(vehicle)
            ert = np.fromiter((e.ert for e in envelopes), dtype=np.float64, count=len(envelopes))
            # ICD section 6: a redelivered envelope's packets are all duplicates.
            copies = redelivered[vehicle]
            result = self.decoders[vehicle].decode(
                [envelope.packets for envelope in envelopes],
                split=None if found is None else found.split,
                joined=None if found is None else found.packets,
                ert=ert,
                redelivered=np.array(copies, dtype=np.bool_) if any(copies) else None,
            )
            self.telemetry.record_packets(vehicle=vehicle, result=result, ert=ert)
            seconds = self._clock() - started + (0.0 if found is None else found.seconds)
            self.telemetry.record_decode_seconds(seconds, envelopes=len(envelopes))
            decoded.append(Decoded(vehicle=vehicle, envelopes=envelopes, result=result))
        return decoded


def archived_arrivals(
    records: Iterable[ArchiveRecord],
    *,
    max_payload_bytes: int,
    vehicles: Iterable[str],
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
) -> Iterator[Arrival]:
    """Archive records re-validated exactly as they were on arrival (at their receive time)."""
    names = frozenset(vehicles)
    for record in records:
        yield check_payload(
            record.topic,
            record.payload,
            record.received_at,
            max_payload_bytes=max_payload_bytes,
            vehicles=names,
            max_clock_skew_s=max_clock_skew_s,
            after_takeover=record.after_takeover,
        )


def replay_archive(
    records: Iterable[ArchiveRecord],
    pipeline: Pipeline,
    *,
    max_payload_bytes: int,
    batch_size: int,
    batch_max_bytes: int | None = None,
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
) -> Iterator[Decoded]:
    """Archive records through `pipeline` in arrival order, invalid envelopes logged: the
    one replay path (`groundstation replay`, `report`, `backfill`)."""
    arrivals = archived_arrivals(
        records,
        max_payload_bytes=max_payload_bytes,
        vehicles=pipeline.decoders,
        max_clock_skew_s=max_clock_skew_s,
    )
    log_invalid = InvalidEnvelopeLog()
    for batch in batched(arrivals, batch_size, max_bytes=batch_max_bytes):
        for arrival in batch:
            log_invalid(arrival)
        yield from pipeline.process(batch)


def batched(
    items: Iterable[Arrival], size: int, *, max_bytes: int | None = None
) -> Iterator[list[Arrival]]:
    """Batches of at most `size` arrivals and (beyond the first) `max_bytes` of payloads."""
    batch: list[Arrival] = []
    batch_bytes = 0
    for item in items:
        if batch and max_bytes is not None and batch_bytes + item.size > max_bytes:
            yield batch
            batch, batch_bytes = [], 0
        batch.append(item)
        batch_bytes += item.size
        if len(batch) >= size:
            yield batch
            batch, batch_bytes = [], 0
    if batch:
        yield batch


def resume_sequences(
    decoders: Mapping[str, PacketDecoder],
    reader: ArchiveReader,
    *,
    tail_bytes: int,
    max_payload_bytes: int,
    batch_size: int,
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
) -> int:
    """Feed the archive's tail through the decoders (no metrics): returns envelopes seen.

    The decoders' sequence windows live in memory only; after a restart, packets that the
    broker redelivers (we archived them, the ack was lost) must still count as duplicates.
    """
    envelopes = 0
    arrivals = archived_arrivals(
        reader.records(tail_bytes=tail_bytes),
        max_payload_bytes=max_payload_bytes,
        vehicles=decoders,
        max_clock_skew_s=max_clock_skew_s,
    )
    for batch in batched(arrivals, batch_size):
        by_vehicle: dict[str, list[Envelope]] = {}
        for arrival in batch:
            if isinstance(arrival.envelope, Envelope):
                by_vehicle.setdefault(arrival.envelope.vehicle, []).append(arrival.envelope)
        for vehicle, valid in by_vehicle.items():
            # With each envelope's ert, as live: a clock_error packet is not accounted.
            ert = np.fromiter((e.ert for e in valid), dtype=np.float64, count=len(valid))
            decoders[vehicle].decode([e.packets for e in valid], ert=ert)
            envelopes += len(valid)
    return envelopes


class ArchivingSink:
    """The subscriber's sink: validate and archive (before the ack), then queue for decoding.

    A failed archive write (a full file system) pauses ingest instead of ending it: `store`
    retries the same batch with capped backoff and returns only once it is archived, so
    nothing is acknowledged meanwhile, the inbox fills and reading stops (the broker keeps
    the messages). `write_failure` says why for /healthz and /metrics.
    """

    def __init__(
        self,
        writer: ArchiveWriter,
        queue: IngestQueue,
        *,
        max_payload_bytes: int,
        vehicles: Iterable[str],
        max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
        retry_min_s: float = ARCHIVE_RETRY_MIN_S,
        retry_max_s: float = ARCHIVE_RETRY_MAX_S,
    ) -> None:
        self._writer = writer
        self._ingest_queue = queue
        self._max_payload_bytes = max_payload_bytes
        self._max_clock_skew_s = max_clock_skew_s
        self._vehicles = frozenset(vehicles)
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._log_invalid = InvalidEnvelopeLog()
        self.lock = asyncio.Lock()  # one archive call at a time (store, periodic fsync)
        self.write_failure: ArchiveWriteError | None = None  # the newest, while it lasts
        self._failing_since = 0.0  # monotonic, when write_failure was first set
        self.write_errors_total = 0  # failed attempts, retries included

    async def store(self, batch: list[Delivery]) -> list[Arrival]:
        """Validate and frame on the loop's thread, then write and sync on a worker.

        Validating and framing are Python work: on a worker thread they fought the loop's
        socket reads for the GIL (measured: 21 futex calls per message, against 1.5 now).
        The write is a copy into the page cache (~20 us for 65 KiB into reused pages) and
        fdatasync waits for the disk: system calls, which release the GIL, so the loop's
        thread reads the next messages meanwhile.
        """
        async with self.lock:
            arrivals, frames = self._check_and_frame(batch)
            await self._archive(functools.partial(self._writer.append_frames, frames))
            return arrivals

    async def forward(self, stored: list[Arrival]) -> None:
        await self._ingest_queue.put(stored)

    async def sync_if_due(self) -> None:
        async with self.lock:
            await self._archive(self._writer.sync_if_due)

    async def _archive(self, write: Callable[[], None]) -> None:
        """`write` on a worker thread until it succeeds, waiting ever longer in between."""
        delay_s = self._retry_min_s
        while True:
            try:
                await asyncio.to_thread(write)
            except ArchiveWriteError as error:
                self.write_errors_total += 1
                if self.write_failure is None:
                    self._failing_since = time.monotonic()
                    logger.error(
                        "%s; ingest paused (nothing more is acknowledged), retrying",
                        error,
                        extra={"path": str(error.path), "reason": "archive_write_failed"},
                    )
                self.write_failure = error
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self._retry_max_s)
                continue
            if self.write_failure is not None:
                logger.warning(
                    "archive writes to %s succeed again after %.1f s; ingest resumed",
                    self.write_failure.path,
                    time.monotonic() - self._failing_since,
                    extra={"path": str(self.write_failure.path)},
                )
                self.write_failure = None
            return

    def _check_and_frame(self, batch: Sequence[Delivery]) -> tuple[list[Arrival], list[Frame]]:
        arrivals: list[Arrival] = []
        frames: list[Frame] = []
        for delivery in batch:
            arrival = check_payload(
                delivery.topic,
                delivery.payload,
                delivery.received_at,
                max_payload_bytes=self._max_payload_bytes,
                vehicles=self._vehicles,
                max_clock_skew_s=self._max_clock_skew_s,
                after_takeover=delivery.after_takeover,
            )
            record = ArchiveRecord(
                topic=delivery.topic,
                received_at=delivery.received_at,
                payload=delivery.payload,
                valid=isinstance(arrival.envelope, Envelope),
                after_takeover=delivery.after_takeover,
            )
            arrivals.append(arrival)
            frames.append(frame_record(record))
            self._log_invalid(arrival)
        return arrivals, frames


class IngestQueue:
    """Archived arrivals waiting for the decoder, bounded in envelopes and in bytes."""

    def __init__(self, *, max_envelopes: int, max_bytes: int) -> None:
        self._max_envelopes = max_envelopes
        self._max_bytes = max_bytes
        self._items: deque[Arrival] = deque()
        self._bytes = 0
        self._closed = False
        self._changed = asyncio.Condition()

    @property
    def depth(self) -> int:
        return len(self._items)

    async def put(self, arrivals: Sequence[Arrival]) -> None:
        """Wait for room (an empty queue always takes one batch), then enqueue all of them."""
        size = sum(arrival.size for arrival in arrivals)
        async with self._changed:
            await self._changed.wait_for(
                lambda: (
                    not self._items
                    or (
                        len(self._items) + len(arrivals) <= self._max_envelopes
                        and self._bytes + size <= self._max_bytes
                    )
                )
            )
            self._items.extend(arrivals)
            self._bytes += size
            self._changed.notify_all()

    async def take(self, max_envelopes: int, max_bytes: int) -> list[Arrival]:
        """Up to `max_envelopes` and `max_bytes` (at least one), waiting for one; [] when done."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._items) or self._closed)
            taken: list[Arrival] = []
            size = 0
            while self._items and len(taken) < max_envelopes:
                if taken and size + self._items[0].size > max_bytes:
                    break
                if taken and self._items[0].after_takeover:
                    break  # accounted between batches (`Pipeline.process`)
                taken.append(self._items.popleft())
                size += taken[-1].size
            self._bytes -= size
            self._changed.notify_all()
            return taken

    async def close(self) -> None:
        """No more puts: `take` returns what is left, then []."""
        async with self._changed:
            self._closed = True
            self._changed.notify_all()


ShippedEnvelope = tuple[str, float, int, str, str, int, float, int, int]
"""A valid arrival without its packets: topic, received_at, size, relay, vehicle, seq, ert,
and where its packets start and end in the lane's slot."""

ShippedSplit = tuple[str, int, int, int, float, int, int]
"""A vehicle's step-1 entries (`Split`) stored in the lane's slot: vehicle, where the
arrays start, how many entries, how many of them are malformed tails, seconds it took,
and where the vehicle's packets (which it splits) start and end in the slot."""

# The Split arrays as stored: offsets within the vehicle's packets, lengths, envelope
# indices, tail indices (all < 2**32: a slot is smaller), then APIDs (-1 to 2047).
_SPLIT_U32: Final = np.dtype("=u4")
_SPLIT_APID: Final = np.dtype("=i2")
_SPLIT_ENTRY_BYTES: Final = 3 * _SPLIT_U32.itemsize + _SPLIT_APID.itemsize


@dataclass(frozen=True, slots=True)
class Shipment:
    """A batch on its way to the child, in arrival order: valid envelopes as plain tuples,
    invalid arrivals as they are. Dataclasses with slots pickle through `fields()`, which
    cost more than the rest of the transfer; invalid ones are rare."""

    lane: int
    items: list[ShippedEnvelope | Arrival]
    splits: tuple[ShippedSplit, ...] = ()
    after_takeover: bool = False  # of the first item (an invalid one carries its own)


class PacketSlots:
    """Shared memory holding the packets of each batch in flight to the decoding child.

    Pickled batches copied every payload several times and pushed it through a 64 KiB pipe
    in many small round trips (measured: the parent's feeder thread blocked on the pipe
    for a quarter of a burst while the child waited for input). Instead the parent copies
    each envelope's packets once into its lane's slot and sends only where they lie; the
    child decodes them in place. A lane refills its slot only after the child has answered
    for the batch in it, so nothing is overwritten while it is read.

    Each vehicle's packets lie back to back, in arrival order: the bytes its decoder joins.
    So the parent can also find the packets in them (decoding's step 1, `Split`) and store
    the result after the packets, where there is room; the decoding child, the busier of the
    two processes, then skips that step (docs/decisions.md, "Step 1 of decoding in the parent").
    """

    def __init__(self, *, lanes: int, slot_bytes: int) -> None:
        self.lanes = lanes
        self.slot_bytes = slot_bytes
        # Pages are allocated on first touch: the slots cost what the batches use.
        self._memory = SharedMemory(create=True, size=lanes * slot_bytes)
        self._bytes: NDArray[np.uint8] | None = np.frombuffer(
            shared_buffer(self._memory), dtype=np.uint8
        )

    @property
    def name(self) -> str:
        return self._memory.name

    def fill(
        self,
        lane: int,
        batch: Sequence[Arrival],
        *,
        splitters: Mapping[str, PacketDecoder] | None = None,
    ) -> Shipment:
        """Copy the batch's packets into the lane's slot; raises if they do not fit.

        With `splitters` (a decoder per vehicle, of which only `split` is used), each
        vehicle's Split goes into the slot too, if it fits there.
        """
        if not 0 <= lane < self.lanes:
            raise ValueError(f"no lane {lane}")
        if self._bytes is None:
            raise ValueError(f"shared memory {self._memory.name} is closed")
        slot = self._bytes[lane * self.slot_bytes : (lane + 1) * self.slot_bytes]
        sizes: dict[str, list[int]] = {}
        for arrival in batch:
            if isinstance(arrival.envelope, Envelope):
                sizes.setdefault(arrival.envelope.vehicle, []).append(len(arrival.envelope.packets))
        region: dict[str, int] = {}  # where each vehicle's packets start
        at = 0
        for vehicle, vehicle_sizes in sizes.items():
            region[vehicle] = at
            at += sum(vehicle_sizes)
        if at > self.slot_bytes:
            raise ValueError(f"batch exceeds the {self.slot_bytes}-byte slot")
        packets_end = at
        next_start = dict(region)
        items: list[ShippedEnvelope | Arrival] = []
        for arrival in batch:
            envelope = arrival.envelope
            if isinstance(envelope, Invalid):
                items.append(arrival)
                continue
            start = next_start[envelope.vehicle]
            end = start + len(envelope.packets)
            slot[start:end] = np.frombuffer(envelope.packets, dtype=np.uint8)
            next_start[envelope.vehicle] = end
            items.append(
                (arrival.topic, arrival.received_at, arrival.size, envelope.relay,
                 envelope.vehicle, envelope.seq, envelope.ert, start, end)
            )  # fmt: skip
        splits: list[ShippedSplit] = []
        at = packets_end
        for vehicle, start in region.items():
            if splitters is None or vehicle not in splitters:
                continue
            started = time.perf_counter()
            envelope_sizes = np.array(sizes[vehicle], dtype=np.int64)
            split = splitters[vehicle].split(slot[start : next_start[vehicle]], envelope_sizes)
            seconds = time.perf_counter() - started
            at = -(-at // 8) * 8  # aligned for the arrays' views
            stored = _store_split(slot, at, split)
            if stored is None:
                break  # no room: the child finds this vehicle's packets itself
            splits.append(
                (vehicle, at, split.offset.shape[0], split.tail.shape[0], seconds,
                 start, next_start[vehicle])
            )  # fmt: skip
            at = stored
        return Shipment(
            lane=lane,
            items=items,
            splits=tuple(splits),
            after_takeover=bool(batch) and batch[0].after_takeover,
        )

    def close(self) -> None:
        """Release and remove the memory (the child has stopped using it)."""
        self._bytes = None  # numpy's view must go before the memory can close
        self._memory.close()
        self._memory.unlink()


def _store_split(slot: NDArray[np.uint8], at: int, split: Split) -> int | None:
    """Write `split` into `slot` from `at` (a multiple of 8); where it ends, or None if no room."""
    entries, tails = split.offset.shape[0], split.tail.shape[0]
    end = at + entries * _SPLIT_ENTRY_BYTES + tails * _SPLIT_U32.itemsize
    if end > slot.shape[0]:
        return None
    columns = ((split.offset, _SPLIT_U32), (split.length, _SPLIT_U32), (split.buffer, _SPLIT_U32),
               (split.tail, _SPLIT_U32), (split.apid, _SPLIT_APID))  # fmt: skip
    for column, dtype in columns:
        size = column.shape[0] * dtype.itemsize
        slot[at : at + size].view(dtype)[:] = column
        at += size
    return at


def _load_split(slot: NDArray[np.uint8], at: int, entries: int, tails: int) -> Split:
    """The child's side of `_store_split`: the arrays copied out, in the decoder's dtypes."""

    def column(count: int, dtype: np.dtype[Any], to: type[np.generic]) -> NDArray[Any]:
        nonlocal at
        size = count * dtype.itemsize
        values = slot[at : at + size].view(dtype).astype(to)
        at += size
        return values

    offset = column(entries, _SPLIT_U32, np.int64)
    length = column(entries, _SPLIT_U32, np.int64)
    buffer = column(entries, _SPLIT_U32, np.intp)
    tail = column(tails, _SPLIT_U32, np.intp)
    apid = column(entries, _SPLIT_APID, np.int32)
    return Split(offset=offset, length=length, buffer=buffer, apid=apid, tail=tail)


def shared_buffer(memory: SharedMemory) -> memoryview:
    """The memory's buffer (typed as optional: None only after `close`)."""
    if memory.buf is None:
        raise ValueError(f"shared memory {memory.name} is closed")
    return memory.buf


def unpack_shipment(
    memory: memoryview, slot_bytes: int, shipment: Shipment
) -> tuple[list[Arrival], dict[str, FoundSplit]]:
    """The child's side of `PacketSlots.fill`: the arrivals with views of their packets,
    and the Splits the parent stored."""
    base = shipment.lane * slot_bytes
    arrivals: list[Arrival] = []
    for item in shipment.items:
        if isinstance(item, Arrival):
            arrivals.append(item)
            continue
        topic, received_at, size, relay, vehicle, seq, ert, start, end = item
        envelope = Envelope(
            version=ENVELOPE_VERSION,
            relay=relay,
            vehicle=vehicle,
            seq=seq,
            ert=ert,
            packets=memory[base + start : base + end],
        )
        first = shipment.after_takeover and not arrivals
        arrivals.append(Arrival(topic, received_at, size, envelope, after_takeover=first))
    splits: dict[str, FoundSplit] = {}
    if shipment.splits:
        slot = np.frombuffer(memory, dtype=np.uint8)[base : base + slot_bytes]
        for vehicle, at, entries, tails, seconds, start, end in shipment.splits:
            splits[vehicle] = FoundSplit(
                _load_split(slot, at, entries, tails), seconds, memory[base + start : base + end]
            )
    return arrivals, splits


class PipelineProcess:
    """The Pipeline and its Telemetry in a child process, so decoding has a core of its own.

    Receiving, archiving and acknowledging are Python work on the event loop; decoding is
    numpy work with many short Python steps between. In one process the two fight for the
    GIL, and each hand-over can wait for the 5 ms switch interval: on two cores
    that cut end-to-end throughput to about a sixth. A child process makes them parallel;
    the packets reach it through shared memory (`PacketSlots`), the rest of each batch
    (a few hundred bytes an envelope) pickled, and a snapshot comes back (a few kB).
    """

    def __init__(
        self,
        *,
        archive_dir: Path,
        resume_tail_bytes: int,
        max_payload_bytes: int,
        batch_size: int,
        batch_max_bytes: int,
        max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
        lanes: int = DECODE_BATCHES_IN_FLIGHT,
    ) -> None:
        self._settings = _ChildSettings(
            archive_dir=archive_dir,
            resume_tail_bytes=resume_tail_bytes,
            max_payload_bytes=max_payload_bytes,
            max_clock_skew_s=max_clock_skew_s,
            batch_size=batch_size,
            # A batch holds at most batch_max_bytes of payloads, or one payload of any size
            # (IngestQueue.take), and packets are never larger than their payload.
            slot_bytes=max(batch_max_bytes, max_payload_bytes),
        )
        self._lanes = lanes
        self._slots: PacketSlots | None = None
        self._pool: ProcessPoolExecutor | None = None
        # Only their `split` is used here (PacketSlots): it has no state.
        self._splitters = {
            vehicle: PacketDecoder(dictionary, calibrate="lazy")
            for vehicle, dictionary in load_dictionaries().items()
        }

    async def start(self) -> ResumeScan:
        """Spawn the child and resume its sequence accounting; returns what the scan read."""
        self._slots = PacketSlots(lanes=self._lanes, slot_bytes=self._settings.slot_bytes)
        # spawn, not fork: the parent has threads (HTTP server, executor) by now.
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_start,
            initargs=(self._settings, self._slots.name),
        )
        return await asyncio.get_running_loop().run_in_executor(self._pool, _child_resumed)

    async def process(self, batch: list[Arrival], *, lane: int) -> TelemetrySnapshot:
        """Apply one batch in the child; the snapshot taken right after it.

        One batch per lane at a time: the lane's slot holds its packets until this returns.
        """
        if self._pool is None or self._slots is None:
            raise RuntimeError("pipeline process not started")
        shipment = self._slots.fill(lane, batch, splitters=self._splitters)
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, _child_process, shipment
        )

    def close(self) -> None:
        """Wait for the batch in progress (bounded by the drain timeout's caller), then stop."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._slots is not None:
            self._slots.close()
            self._slots = None


@dataclass(frozen=True, slots=True)
class _ChildSettings:
    """What the decoding child needs to start: where to resume from, and its slots' size."""

    archive_dir: Path
    resume_tail_bytes: int
    max_payload_bytes: int
    max_clock_skew_s: float
    batch_size: int
    slot_bytes: int


@dataclass(frozen=True, slots=True)
class ResumeScan:
    """What the start-up resume scan read: envelopes fed to the decoders, damage skipped."""

    envelopes: int
    damaged_records: int
    damaged_bytes: int


@dataclass(frozen=True, slots=True)
class _Child:
    """The child's state between calls: one per decoding process."""

    pipeline: Pipeline
    resumed: ResumeScan
    slots: SharedMemory
    slot_bytes: int


_child: _Child | None = None


def _child_start(settings: _ChildSettings, slots_name: str) -> None:
    global _child  # noqa: PLW0603 - one pipeline per child process
    start_as_child()  # the parent stops it once it has drained
    # The parent owns (and unlinks) the memory; the child shares its resource tracker,
    # which keeps one entry per name, so attaching registers nothing new.
    slots = SharedMemory(name=slots_name)
    reader = ArchiveReader(settings.archive_dir)  # its stats: what the resume scan skipped
    dictionaries = load_dictionaries()
    # Lazy: telemetry reads a few fields of a few rows (the newest second of IMU samples,
    # the newest packet of each APID), not every calibrated sample.
    decoders = {
        vehicle: PacketDecoder(d, calibrate="lazy", max_clock_skew_s=settings.max_clock_skew_s)
        for vehicle, d in dictionaries.items()
    }
    resumed = resume_sequences(
        decoders,
        reader,
        tail_bytes=settings.resume_tail_bytes,
        max_payload_bytes=settings.max_payload_bytes,
        batch_size=settings.batch_size,
        max_clock_skew_s=settings.max_clock_skew_s,
    )
    _child = _Child(
        pipeline=Pipeline(dictionaries, telemetry=Telemetry(dictionaries), decoders=decoders),
        resumed=ResumeScan(
            envelopes=resumed,
            damaged_records=reader.stats.damaged_records,
            damaged_bytes=reader.stats.damaged_bytes,
        ),
        slots=slots,
        slot_bytes=settings.slot_bytes,
    )


def _child_resumed() -> ResumeScan:
    return _started_child().resumed


def _child_process(shipment: Shipment) -> TelemetrySnapshot:
    child = _started_child()
    arrivals, splits = unpack_shipment(shared_buffer(child.slots), child.slot_bytes, shipment)
    # The decoded results read the lane's slot (FoundSplit.packets): they are dropped here,
    # before the parent can refill it; the telemetry keeps copies of what it needs.
    child.pipeline.process(arrivals, splits=splits)
    return child.pipeline.telemetry.snapshot()


def _started_child() -> _Child:
    if _child is None:
        raise RuntimeError("pipeline child not initialised")
    return _child


class DecodeWorker:
    """Takes batches off the queue and has the PipelineProcess apply them, two in flight.

    With one batch at a time the child idled while the parent pickled the next one to it
    and while the snapshot came back; a second batch queued in the pool keeps it busy. The
    child applies them in the order they were sent (one worker), so arrival order holds.
    """

    def __init__(
        self,
        pipeline: PipelineProcess,
        queue: IngestQueue,
        *,
        initial: TelemetrySnapshot,
        batch_max_envelopes: int,
        batch_max_bytes: int,
    ) -> None:
        self._pipeline = pipeline
        self._ingest_queue = queue
        self._batch_max_envelopes = batch_max_envelopes
        self._batch_max_bytes = batch_max_bytes
        self.latest_snapshot = initial  # swapped whole; the collector reads it (STYLE 7)
        self._batches_sent = 0
        self._newest_applied = -1
        self.envelopes_processed = 0
        self.progress = asyncio.Condition()  # notified after each batch; tests wait on it

    async def run(self) -> None:
        """Until the queue is closed and drained."""
        async with asyncio.TaskGroup() as lanes:
            for lane in range(DECODE_BATCHES_IN_FLIGHT):
                lanes.create_task(self._lane(lane))

    async def _lane(self, lane: int) -> None:
        while batch := await self._ingest_queue.take(
            self._batch_max_envelopes, self._batch_max_bytes
        ):
            # No await between taking and sending: batches reach the child in queue order.
            number = self._batches_sent
            self._batches_sent += 1
            snapshot = await self._pipeline.process(batch, lane=lane)
            if number > self._newest_applied:
                self._newest_applied = number
                self.latest_snapshot = snapshot
            async with self.progress:
                self.envelopes_processed += len(batch)
                self.progress.notify_all()
