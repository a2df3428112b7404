"""Batch decoding shared by the daemon's decoding consumer and by replay, so that their
counts match by construction: archive records -> `check_payload` again (the verdict
depends only on what the archive keeps) -> `Pipeline.process` -> Telemetry."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from groundstation.consumers.telemetry import Telemetry
from groundstation.core.decoder import DecodeResult, PacketDecoder
from groundstation.core.definitions import VehicleDictionary
from groundstation.core.envelope import (
    DEFAULT_MAX_CLOCK_SKEW_S,
    Arrival,
    Envelope,
    Invalid,
    check_payload,
)
from groundstation.ingest.archive import ArchiveRecord
from groundstation.log import InvalidEnvelopeLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decoded:
    """One decoder call: a vehicle's valid envelopes of a batch, in arrival order."""

    vehicle: str
    envelopes: Sequence[Envelope]
    result: DecodeResult


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
    vehicles: Collection[str],
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
) -> Iterator[Arrival]:
    """Archive records re-validated exactly as they were on arrival (at their receive time)."""
    for record in records:
        yield check_payload(
            record.topic,
            record.payload,
            record.received_at,
            max_payload_bytes=max_payload_bytes,
            vehicles=vehicles,
            max_clock_skew_s=max_clock_skew_s,
            after_takeover=record.after_takeover,
        )


def archived_batches(
    records: Iterable[ArchiveRecord],
    *,
    max_payload_bytes: int,
    vehicles: Collection[str],
    batch_size: int,
    batch_max_bytes: int | None = None,
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
) -> Iterator[list[Arrival]]:
    """Archive records re-validated (`archived_arrivals`), in batches as `batched` makes
    them: how every reader of the archive feeds a Pipeline or the decoders."""
    arrivals = archived_arrivals(
        records,
        max_payload_bytes=max_payload_bytes,
        vehicles=vehicles,
        max_clock_skew_s=max_clock_skew_s,
    )
    return batched(arrivals, batch_size, max_bytes=batch_max_bytes)


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
    log_invalid = InvalidEnvelopeLog()
    for batch in archived_batches(
        records,
        max_payload_bytes=max_payload_bytes,
        vehicles=pipeline.decoders,
        batch_size=batch_size,
        batch_max_bytes=batch_max_bytes,
        max_clock_skew_s=max_clock_skew_s,
    ):
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
    for batch in archived_batches(
        records,
        max_payload_bytes=max_payload_bytes,
        vehicles=decoders,
        batch_size=batch_size,
        max_clock_skew_s=max_clock_skew_s,
    ):
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
