"""Batch processing shared by live ingest and replay, so that their counts match by construction.

Live: MQTT batch -> `ArchivingSink.store` (validate each payload, append to the archive)
-> ack. The decoding consumer (groundstation.decoding) reads the archive -> `check_payload`
again -> `Pipeline.process` -> Telemetry -> a snapshot for the metrics collector.
Replay: archive reader -> `check_payload` -> the same `Pipeline.process`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from groundstation.consumers.telemetry import Telemetry
from groundstation.core.decoder import DecodeResult, PacketDecoder
from groundstation.core.definitions import VehicleDictionary
from groundstation.core.envelope import (
    DEFAULT_MAX_CLOCK_SKEW_S,
    Envelope,
    Invalid,
    check_arrival,
    check_topic,
    unpack_envelope,
)
from groundstation.errors import ArchiveWriteError
from groundstation.ingest.archive import (
    ArchiveRecord,
    ArchiveWriter,
    Frame,
    LogPosition,
    frame_record,
)
from groundstation.ingest.mqtt import Delivery

logger = logging.getLogger(__name__)

# Rate limit of the bad-input warnings (ICD section 6: logged rate-limited; metrics count all).
WARNINGS_PER_INTERVAL: Final = 5
WARNING_INTERVAL_S: Final = 60.0
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

    def process(self, batch: Sequence[Arrival]) -> list[Decoded]:
        """Apply one batch in arrival order: envelopes counted, packets decoded per vehicle."""
        takeovers = [index for index, a in enumerate(batch) if a.after_takeover and index]
        if takeovers:
            # Rare: a takeover inside the batch; its accounting must fall between the parts.
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
            ert = np.fromiter((e.ert for e in envelopes), dtype=np.float64, count=len(envelopes))
            # ICD section 6: a redelivered envelope's packets are all duplicates.
            copies = redelivered[vehicle]
            result = self.decoders[vehicle].decode(
                [envelope.packets for envelope in envelopes],
                ert=ert,
                redelivered=np.array(copies, dtype=np.bool_) if any(copies) else None,
            )
            self.telemetry.record_packets(vehicle=vehicle, result=result, ert=ert)
            seconds = self._clock() - started
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
    records: Iterable[ArchiveRecord],
    *,
    max_payload_bytes: int,
    batch_size: int,
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
) -> int:
    """Feed archived records (the tail before the decoding consumer's position) through the
    decoders, with no metrics: returns the envelopes seen.

    The decoders' sequence windows live in memory only; after a restart, packets that the
    broker redelivers (we archived them, the ack was lost) must still count as duplicates.
    """
    envelopes = 0
    arrivals = archived_arrivals(
        records,
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
    """The subscriber's sink: validate and archive, before the ack; then say how far the
    archive reaches (`on_archived`, which only moves the decoding consumer's target).

    A failed archive write (a full file system) pauses ingest instead of ending it: `store`
    retries the same batch with capped backoff and returns only once it is archived, so
    nothing is acknowledged meanwhile, the inbox fills and reading stops (the broker keeps
    the messages). `write_failure` says why for /healthz and /metrics.
    """

    def __init__(
        self,
        writer: ArchiveWriter,
        on_archived: Callable[[LogPosition | None, int], None],
        *,
        max_payload_bytes: int,
        vehicles: Iterable[str],
        max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
        retry_min_s: float = ARCHIVE_RETRY_MIN_S,
        retry_max_s: float = ARCHIVE_RETRY_MAX_S,
    ) -> None:
        self._writer = writer
        self._on_archived = on_archived
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

    async def store(self, batch: list[Delivery]) -> None:
        """Validate and frame on the loop's thread, then write and sync on a worker.

        Validating and framing are Python work: on a worker thread they fought the loop's
        socket reads for the GIL (measured: 21 futex calls per message, against 1.5 now).
        The write is a copy into the page cache (~20 us for 65 KiB into reused pages) and
        fdatasync waits for the disk: system calls, which release the GIL, so the loop's
        thread reads the next messages meanwhile.
        """
        async with self.lock:
            frames = self._check_and_frame(batch)
            await self._archive(functools.partial(self._writer.append_frames, frames))
            self._on_archived(self._writer.end, len(frames))

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

    def _check_and_frame(self, batch: Sequence[Delivery]) -> list[Frame]:
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
            frames.append(frame_record(record))
            self._log_invalid(arrival)
        return frames
